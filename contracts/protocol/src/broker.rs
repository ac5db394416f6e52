//! What the gateway, the operator and the broker's `fleetward_broker`
//! plugin (C, `workloads/mosquitto/plugin`) agree on: the control topic,
//! the receipt-time property, the plugin's option and the device data
//! topic's shape. The plugin gets them as a C header generated from here
//! ([`c_header`], written by the `fleetward-c-header` binary); a test
//! fails when the committed header differs.

use crate::topics::{DATA_TOPIC_SUFFIX, DEVICE_TOPIC_PREFIX};

/// The broker's control topic for revoked certificate serials (the plugin
/// reads it; only the gateway identity may write it).
pub const REVOKE_TOPIC: &str = "$CONTROL/fleetward/v1/revoke";

/// The broker's control topic for the holders of newly revoked
/// certificates: lines `<serial> <client id>`. A session that has done
/// nothing since it connected is unknown to the plugin (Mosquitto 2.0 calls
/// a plugin first at a session's first publish or subscription), so the
/// plugin closes the session of each named client id unless the session it
/// knows under that id holds a certificate that is not revoked.
pub const CLOSE_TOPIC: &str = "$CONTROL/fleetward/v1/close";

/// The key of a Gateway's CRL ConfigMap listing who held the certificates
/// revoked in the last day (lines `<serial> <device id>`): what the gateway
/// sends on [`CLOSE_TOPIC`]. The CRL itself names no holder.
pub const CRL_HOLDERS_KEY: &str = "holders";

/// The plugin's option naming the CRL file Mosquitto reads
/// (`plugin_opt_crl_file`): when the file changes (the gateway rewrote it),
/// the plugin has the broker reload it (SIGHUP to its own process), so a
/// revoked certificate's handshake is refused within a second, with no
/// process of another container involved.
pub const CRL_FILE_OPTION: &str = "crl_file";

/// The MQTT 5 user property the plugin appends to every message: Unix
/// milliseconds at the broker's receipt.
pub const RECEIVED_PROPERTY: &str = "fleetward-received-ms";

/// The MQTT 5 user property the plugin appends right after
/// [`RECEIVED_PROPERTY`] on device data topics: the broker's receipt
/// token, a random secret the plugin and the gateway of one pod share
/// (through the file [`RECEIPT_TOKEN_OPTION`] names) and no device ever
/// sees. A stamp not followed by it was not made by the broker — a will,
/// which the broker sends without its message hook, carries only what the
/// device put in it — and the gateway ignores it.
pub const RECEIPT_TOKEN_PROPERTY: &str = "fleetward-receipt-token";

/// The plugin's option naming the file of the receipt token
/// (`plugin_opt_receipt_token_file`): read when it holds one, else made
/// with a new random token (so a broker restart in the same pod keeps it).
pub const RECEIPT_TOKEN_OPTION: &str = "receipt_token_file";

/// The receipt token's length: 32 random bytes, hex.
pub const RECEIPT_TOKEN_LEN: usize = 64;

/// The plugin's option naming the one identity allowed to publish on
/// [`REVOKE_TOPIC`] (`plugin_opt_controller` in mosquitto.conf).
pub const CONTROLLER_OPTION: &str = "controller";

/// Where the plugin's header lives, from the workspace root.
pub const C_HEADER_PATH: &str = "workloads/mosquitto/plugin/fleetward_protocol.h";

/// The plugin's `fleetward_protocol.h`: each constant as a C string macro.
pub fn c_header() -> String {
    let defines = [
        (
            "FLEETWARD_REVOKE_TOPIC",
            REVOKE_TOPIC,
            "The control topic for revoked certificate serials.",
        ),
        (
            "FLEETWARD_CLOSE_TOPIC",
            CLOSE_TOPIC,
            "The control topic for the holders of newly revoked certificates (lines: serial, client id).",
        ),
        (
            "FLEETWARD_CRL_FILE_OPTION",
            CRL_FILE_OPTION,
            "The plugin option naming the CRL file: when it changes, the broker reloads it.",
        ),
        (
            "FLEETWARD_RECEIVED_PROPERTY",
            RECEIVED_PROPERTY,
            "The user property stamped with the receipt time (Unix milliseconds).",
        ),
        (
            "FLEETWARD_RECEIPT_TOKEN_PROPERTY",
            RECEIPT_TOKEN_PROPERTY,
            "The user property after the stamp on device data topics: the pod's receipt token.",
        ),
        (
            "FLEETWARD_RECEIPT_TOKEN_OPTION",
            RECEIPT_TOKEN_OPTION,
            "The plugin option naming the receipt token's file.",
        ),
        (
            "FLEETWARD_CONTROLLER_OPTION",
            CONTROLLER_OPTION,
            "The plugin option naming the identity that may revoke.",
        ),
        (
            "FLEETWARD_DEVICE_TOPIC_PREFIX",
            DEVICE_TOPIC_PREFIX,
            "Every device topic starts so: <prefix><device id>/...",
        ),
        (
            "FLEETWARD_DATA_TOPIC_SUFFIX",
            DATA_TOPIC_SUFFIX,
            "A device data topic is <prefix><device id><suffix>.",
        ),
    ];
    let mut h = String::from(
        "/* Generated from the fleetward-protocol crate (contracts/protocol/src/broker.rs)\n\
         \x20* by `cargo run -p fleetward-protocol --bin fleetward-c-header`: do not edit.\n\
         \x20* A test of that crate fails when this file differs from what it generates. */\n\
         #ifndef FLEETWARD_PROTOCOL_H\n\
         #define FLEETWARD_PROTOCOL_H\n",
    );
    for (name, value, doc) in defines {
        assert!(!doc.contains("*/"), "{doc:?} would end the C comment");
        h.push_str(&format!("\n/* {doc} */\n#define {name} {}\n", c_string(value)));
    }
    h.push_str(&format!(
        "\n/* The receipt token's length: 32 random bytes, hex. */\n#define FLEETWARD_RECEIPT_TOKEN_LEN {RECEIPT_TOKEN_LEN}\n"
    ));
    h.push_str("\n#endif\n");
    h
}

/// A C string literal of printable ASCII text.
fn c_string(text: &str) -> String {
    let mut s = String::from("\"");
    for c in text.chars() {
        assert!(c.is_ascii_graphic() || c == ' ', "{text:?} is not printable ASCII");
        if matches!(c, '"' | '\\' | '?') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_strings_are_escaped() {
        assert_eq!(c_string(r#"a"b\c?d"#), r#""a\"b\\c\?d""#);
        assert_eq!(c_string("$CONTROL/x"), r#""$CONTROL/x""#);
    }

    #[test]
    fn the_header_defines_every_name() {
        let h = c_header();
        assert!(
            h.contains("#define FLEETWARD_REVOKE_TOPIC \"$CONTROL/fleetward/v1/revoke\"\n"),
            "{h}"
        );
        assert!(
            h.contains("#define FLEETWARD_RECEIVED_PROPERTY \"fleetward-received-ms\"\n"),
            "{h}"
        );
        assert!(
            h.contains("#define FLEETWARD_CLOSE_TOPIC \"$CONTROL/fleetward/v1/close\"\n"),
            "{h}"
        );
        assert!(h.contains("#define FLEETWARD_CRL_FILE_OPTION \"crl_file\"\n"), "{h}");
        assert!(h.contains("#define FLEETWARD_DEVICE_TOPIC_PREFIX \"device/\"\n"), "{h}");
        assert!(h.contains("#define FLEETWARD_DATA_TOPIC_SUFFIX \"/data\"\n"), "{h}");
        assert!(
            h.contains("#define FLEETWARD_CONTROLLER_OPTION \"controller\"\n"),
            "{h}"
        );
    }
}
