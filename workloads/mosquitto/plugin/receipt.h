/*
 * Receipt-time stamping: every message gets the time the broker received
 * it, as the MQTT 5 user property FLEETWARD_RECEIVED_PROPERTY (Unix
 * milliseconds), appended after whatever properties the publisher sent.
 * The gateway judges a message's freshness by that time, so messages
 * queued for it during an outage are not refused as stale. Brokers keep
 * user properties in order, so the gateway reads the last ones.
 *
 * A device can put a stamp of its own into a message, and into a will,
 * which the broker publishes without its message hook (so unstamped, with
 * the device's properties only). So on device data topics the stamp is
 * followed by FLEETWARD_RECEIPT_TOKEN_PROPERTY, the pod's receipt token: a
 * random secret in a file the plugin and the gateway share and no device
 * ever sees (only the gateway reads data topics). The gateway takes a
 * stamp only when the token follows it. The plugin also refuses a will on
 * a device data topic when it can tell (receipt_is_device_data_topic).
 * No broker calls here, so the C test exercises it as it is.
 */
#ifndef FLEETWARD_RECEIPT_H
#define FLEETWARD_RECEIPT_H

#include <stdbool.h>

#include <mosquitto.h>

#include "fleetward_protocol.h"

/* The wall clock, in Unix milliseconds. */
long long receipt_now_ms(void);

/* Appends the receipt property with `received_ms` to `properties` (or makes
 * it the first one), then, when `token` is not NULL, the token property. A
 * mosquitto error code, MOSQ_ERR_SUCCESS if both were added. */
int receipt_stamp(mosquitto_property **properties, long long received_ms, const char *token);

/* Reads the receipt token from `path` into `token`, or, when the file does
 * not exist, makes a new random one and writes it there (readable by its
 * owner only). A file that exists but does not hold a token is an error:
 * MOSQ_ERR_INVAL; MOSQ_ERR_UNKNOWN when it cannot be read or written. */
int receipt_token_load(const char *path, char token[FLEETWARD_RECEIPT_TOKEN_LEN + 1]);

/* device/<id>/data, the topics the gateway reads (and judges by receipt
 * time). */
bool receipt_is_device_data_topic(const char *topic);

#endif
