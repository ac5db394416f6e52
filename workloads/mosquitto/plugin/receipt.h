/*
 * Receipt-time stamping: every message gets the time the broker received
 * it, as the MQTT 5 user property FLEETWARD_RECEIVED_PROPERTY (Unix
 * milliseconds), appended after whatever properties the publisher sent.
 * The gateway judges a message's freshness by that time, so messages
 * queued for it during an outage are not refused as stale. Brokers keep
 * user properties in order, so the gateway reads the last one (a device
 * can add its own, but only before the broker's).
 *
 * Wills bypass the message hook, so they cannot be stamped: the plugin
 * refuses a will on a device data topic (receipt_is_device_data_topic).
 * No broker calls here, so the C test exercises it as it is.
 */
#ifndef FLEETWARD_RECEIPT_H
#define FLEETWARD_RECEIPT_H

#include <stdbool.h>

#include <mosquitto.h>

/* The wall clock, in Unix milliseconds. */
long long receipt_now_ms(void);

/* Appends the receipt property with `received_ms` to `properties` (or makes
 * it the first one). A mosquitto error code, MOSQ_ERR_SUCCESS if it was
 * added. */
int receipt_stamp(mosquitto_property **properties, long long received_ms);

/* device/<id>/data, the topics the gateway reads (and judges by receipt
 * time). */
bool receipt_is_device_data_topic(const char *topic);

#endif
