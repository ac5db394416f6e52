/* Generated from the fleetward-protocol crate (contracts/protocol/src/broker.rs)
 * by `cargo run -p fleetward-protocol --bin fleetward-c-header`: do not edit.
 * A test of that crate fails when this file differs from what it generates. */
#ifndef FLEETWARD_PROTOCOL_H
#define FLEETWARD_PROTOCOL_H

/* The control topic for revoked certificate serials. */
#define FLEETWARD_REVOKE_TOPIC "$CONTROL/fleetward/v1/revoke"

/* The control topic for the holders of newly revoked certificates (lines: serial, client id). */
#define FLEETWARD_CLOSE_TOPIC "$CONTROL/fleetward/v1/close"

/* The plugin option naming the CRL file: when it changes, the broker reloads it. */
#define FLEETWARD_CRL_FILE_OPTION "crl_file"

/* The user property stamped with the receipt time (Unix milliseconds). */
#define FLEETWARD_RECEIVED_PROPERTY "fleetward-received-ms"

/* The user property after the stamp on device data topics: the pod's receipt token. */
#define FLEETWARD_RECEIPT_TOKEN_PROPERTY "fleetward-receipt-token"

/* The plugin option naming the receipt token's file. */
#define FLEETWARD_RECEIPT_TOKEN_OPTION "receipt_token_file"

/* The plugin option naming the identity that may revoke. */
#define FLEETWARD_CONTROLLER_OPTION "controller"

/* Every device topic starts so: <prefix><device id>/... */
#define FLEETWARD_DEVICE_TOPIC_PREFIX "device/"

/* A device data topic is <prefix><device id><suffix>. */
#define FLEETWARD_DATA_TOPIC_SUFFIX "/data"

/* The receipt token's length: 32 random bytes, hex. */
#define FLEETWARD_RECEIPT_TOKEN_LEN 64

#endif
