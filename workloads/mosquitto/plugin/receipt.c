/* Receipt-time stamping: see receipt.h. */
#include "receipt.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <mqtt_protocol.h>

#include "fleetward_protocol.h"

long long receipt_now_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

int receipt_stamp(mosquitto_property **properties, long long received_ms)
{
	char ms[24];
	snprintf(ms, sizeof(ms), "%lld", received_ms);
	/* Appended at the end of the list (or as its first element). */
	return mosquitto_property_add_string_pair(properties, MQTT_PROP_USER_PROPERTY, FLEETWARD_RECEIVED_PROPERTY, ms);
}

bool receipt_is_device_data_topic(const char *topic)
{
	const size_t prefix = strlen(FLEETWARD_DEVICE_TOPIC_PREFIX);
	if(!topic || strncmp(topic, FLEETWARD_DEVICE_TOPIC_PREFIX, prefix)) return false;
	const char *id = topic + prefix, *slash = strchr(id, '/');
	return slash && slash > id && !strcmp(slash, FLEETWARD_DATA_TOPIC_SUFFIX);
}
