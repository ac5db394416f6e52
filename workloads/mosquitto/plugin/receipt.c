/* Receipt-time stamping: see receipt.h. */
#include "receipt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <mqtt_protocol.h>

long long receipt_now_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

int receipt_stamp(mosquitto_property **properties, long long received_ms, const char *token)
{
	char ms[24];
	snprintf(ms, sizeof(ms), "%lld", received_ms);
	/* Appended at the end of the list (or as its first element). */
	int rc = mosquitto_property_add_string_pair(properties, MQTT_PROP_USER_PROPERTY, FLEETWARD_RECEIVED_PROPERTY, ms);
	if(rc || !token) return rc;
	return mosquitto_property_add_string_pair(properties, MQTT_PROP_USER_PROPERTY, FLEETWARD_RECEIPT_TOKEN_PROPERTY, token);
}

static bool is_token(const char *text, size_t len)
{
	if(len != FLEETWARD_RECEIPT_TOKEN_LEN) return false;
	for(size_t i = 0; i < len; i++){
		char c = text[i];
		if(!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
	}
	return true;
}

/* The token in an existing file (a trailing newline allowed). */
static int read_token(int fd, char token[FLEETWARD_RECEIPT_TOKEN_LEN + 1])
{
	char buf[FLEETWARD_RECEIPT_TOKEN_LEN + 2];
	ssize_t n = read(fd, buf, sizeof(buf));
	close(fd);
	if(n < 0) return MOSQ_ERR_UNKNOWN;
	size_t len = (size_t)n;
	if(len > 0 && buf[len - 1] == '\n') len--;
	if(!is_token(buf, len)) return MOSQ_ERR_INVAL;
	memcpy(token, buf, len);
	token[len] = '\0';
	return MOSQ_ERR_SUCCESS;
}

int receipt_token_load(const char *path, char token[FLEETWARD_RECEIPT_TOKEN_LEN + 1])
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if(fd >= 0) return read_token(fd, token);
	if(errno != ENOENT) return MOSQ_ERR_UNKNOWN;
	unsigned char bytes[FLEETWARD_RECEIPT_TOKEN_LEN / 2];
	if(getrandom(bytes, sizeof(bytes), 0) != (ssize_t)sizeof(bytes)) return MOSQ_ERR_UNKNOWN;
	for(size_t i = 0; i < sizeof(bytes); i++){
		snprintf(token + 2 * i, 3, "%02x", bytes[i]);
	}
	/* O_EXCL: of two brokers starting at once, one writes, the other reads.
	 * Readable by the group: the gateway, another user, reads it through
	 * the pod's fsGroup (the emptyDir's group); no device ever can. */
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if(fd < 0){
		if(errno != EEXIST) return MOSQ_ERR_UNKNOWN;
		fd = open(path, O_RDONLY | O_CLOEXEC);
		return fd < 0 ? MOSQ_ERR_UNKNOWN : read_token(fd, token);
	}
	ssize_t written = write(fd, token, FLEETWARD_RECEIPT_TOKEN_LEN);
	int closed = close(fd);
	return (written == FLEETWARD_RECEIPT_TOKEN_LEN && closed == 0) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_UNKNOWN;
}

bool receipt_is_device_data_topic(const char *topic)
{
	const size_t prefix = strlen(FLEETWARD_DEVICE_TOPIC_PREFIX);
	if(!topic || strncmp(topic, FLEETWARD_DEVICE_TOPIC_PREFIX, prefix)) return false;
	const char *id = topic + prefix, *slash = strchr(id, '/');
	return slash && slash > id && !strcmp(slash, FLEETWARD_DATA_TOPIC_SUFFIX);
}
