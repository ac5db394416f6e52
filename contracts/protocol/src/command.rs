//! A command for a device (`device/{id}/command`): signed by the gateway
//! with the device's own key, always version 2, so it can never pass as
//! data nor data as a command; what a device checks before obeying one.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::{VERSION, malformed, validate_message_id};
use crate::json::refuse_duplicate_keys;
use crate::signature::{Domain, check_timestamp, sign_hex, verify_hex};
use crate::{Rejection, ReplayWindow};

/// A command for a device, signed by the gateway with the device's secret.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Always [`VERSION`]: commands have no version 1.
    pub v: u8,
    pub timestamp: i64,
    pub message_id: String,
    pub payload: Box<RawValue>,
    pub signature: String,
}

impl Command {
    pub fn sign(secret: &[u8], device_id: &str, timestamp: i64, message_id: &str, payload: Box<RawValue>) -> Command {
        Command {
            v: VERSION,
            signature: sign_hex(secret, Domain::Command, device_id, timestamp, message_id, payload.get()),
            timestamp,
            message_id: message_id.to_string(),
            payload,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Command, Rejection> {
        let c: Command = serde_json::from_slice(bytes).map_err(malformed)?;
        refuse_duplicate_keys(c.payload.get())?;
        if c.v != VERSION {
            return Err(Rejection::Malformed("unsupported command version".into()));
        }
        validate_message_id(&c.message_id)?;
        Ok(c)
    }

    /// What a device does with a command: signature, freshness, replay.
    pub fn verify(
        &self,
        secret: &[u8],
        device_id: &str,
        now: i64,
        window_secs: i64,
        seen: &mut ReplayWindow,
    ) -> Result<(), Rejection> {
        if !verify_hex(
            secret,
            Domain::Command,
            device_id,
            self.timestamp,
            &self.message_id,
            self.payload.get(),
            &self.signature,
        ) {
            return Err(Rejection::BadSignature);
        }
        check_timestamp(self.timestamp, now, window_secs)?;
        seen.expire(now);
        if !seen.insert(&self.message_id, self.timestamp + window_secs) {
            return Err(Rejection::Replay);
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a command always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, raw};
    const KEY: &[u8] = b"supersecretkey123";

    #[test]
    fn a_command_never_passes_as_data_nor_data_as_a_command() {
        let payload = raw(&serde_json::json!({"locked": true}));
        let cmd = Command::sign(KEY, "d1", 100, "m1", payload.clone());
        // The command's fields and signature, as data of either version.
        for v in ["", r#""v":2,"#] {
            let data = format!(
                r#"{{{v}"device_id":"d1","timestamp":100,"message_id":"m1","payload":{},"signature":"{}"}}"#,
                cmd.payload.get(),
                cmd.signature
            );
            assert!(!Envelope::parse(data.as_bytes()).unwrap().verify(KEY), "{data}");
        }
        // Data of either version, as a command.
        let mut seen = ReplayWindow::new();
        for env in [
            Envelope::sign(KEY, "d1", 100, "m2", payload.clone()),
            Envelope::sign_v1(KEY, "d1", 100, "m3", payload.clone()),
        ] {
            let as_cmd = format!(
                r#"{{"v":2,"timestamp":100,"message_id":"{}","payload":{},"signature":"{}"}}"#,
                env.message_id,
                env.payload.get(),
                env.signature
            );
            let parsed = Command::parse(as_cmd.as_bytes()).unwrap();
            assert_eq!(
                parsed.verify(KEY, "d1", 110, 300, &mut seen),
                Err(Rejection::BadSignature)
            );
        }
        // A command without the version (seed 003's form) is not one.
        let old = cmd.to_json().replacen(r#""v":2,"#, "", 1);
        assert!(matches!(Command::parse(old.as_bytes()), Err(Rejection::Malformed(_))));
    }

    #[test]
    fn commands_verify_and_refuse_replay_and_other_devices() {
        let cmd = Command::sign(KEY, "d1", 1000, "c1", raw(&serde_json::json!({"action": "reboot"})));
        let parsed = Command::parse(cmd.to_json().as_bytes()).unwrap();
        let mut seen = ReplayWindow::new();
        assert_eq!(parsed.verify(KEY, "d1", 1010, 300, &mut seen), Ok(()));
        assert_eq!(parsed.verify(KEY, "d1", 1010, 300, &mut seen), Err(Rejection::Replay));
        let mut fresh = ReplayWindow::new();
        assert_eq!(
            parsed.verify(KEY, "d2", 1010, 300, &mut fresh),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            parsed.verify(KEY, "d1", 2000, 300, &mut fresh),
            Err(Rejection::StaleTimestamp)
        );
    }
}
