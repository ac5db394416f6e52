/*
 * The plugin's own logic, without a broker: the revoked-serial set and
 * the holders message (serials.c) and receipt stamping (receipt.c), built with AddressSanitizer
 * and UndefinedBehaviorSanitizer by `make test`. The broker glue
 * (sessions.c, plugin.c) is exercised against a real Mosquitto by the
 * gateway's tests.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mqtt_protocol.h>

#include "../fleetward_protocol.h"
#include "../receipt.h"
#include "../serials.h"

static int failures;

#define CHECK(cond) \
	do{ \
		if(!(cond)){ \
			fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
			failures++; \
		} \
	}while(0)

static void normalising_serials(void)
{
	char out[SERIAL_MAX];
	CHECK(serial_normalise("00ab12", 6, out) && !strcmp(out, "AB12"));
	CHECK(serial_normalise("7F", 2, out) && !strcmp(out, "7F"));
	/* Only the first `len` bytes count. */
	CHECK(serial_normalise("0a zz", 2, out) && !strcmp(out, "A"));
	CHECK(!serial_normalise("", 0, out));
	CHECK(!serial_normalise("0000", 4, out));
	CHECK(!serial_normalise("12g4", 4, out));
	CHECK(!serial_normalise("-1", 2, out));
	char longest[SERIAL_MAX], too_long[SERIAL_MAX + 1];
	memset(longest, 'f', SERIAL_MAX - 1);
	memset(too_long, 'f', SERIAL_MAX);
	CHECK(serial_normalise(longest, SERIAL_MAX - 1, out) && strlen(out) == SERIAL_MAX - 1);
	CHECK(!serial_normalise(too_long, SERIAL_MAX, out));
	/* Leading zeros do not count towards the length. */
	char padded[SERIAL_MAX + 10];
	memset(padded, '0', 11);
	memset(padded + 11, 'a', SERIAL_MAX - 2);
	CHECK(serial_normalise(padded, SERIAL_MAX + 9, out) && strlen(out) == SERIAL_MAX - 2);
}

static bool add(struct serial_set *set, const char *payload, size_t *added)
{
	return serial_set_add_all(set, payload, strlen(payload), added);
}

static void growing_the_revoked_set(void)
{
	struct serial_set set = {0};
	size_t added = 99;
	CHECK(!serial_set_contains(&set, "AB"));
	CHECK(add(&set, "", &added) && added == 0 && set.len == 0);
	/* Whitespace of any kind separates; case and leading zeros do not
	 * matter; what is not a serial is skipped; repeats count once. */
	CHECK(add(&set, " 0ab\n\tcd  not-hex 0000 AB ab\r\n", &added) && added == 2 && set.len == 2);
	CHECK(serial_set_contains(&set, "AB") && serial_set_contains(&set, "CD"));
	CHECK(!serial_set_contains(&set, "ab"));
	CHECK(!serial_set_contains(&set, ""));
	/* The whole list again, plus one: only the new one is added. */
	CHECK(add(&set, "ab cd 01", &added) && added == 1 && set.len == 3);
	CHECK(add(&set, "ab cd 01", &added) && added == 0 && set.len == 3);
	/* Sorted and distinct, past the first growth of the array. */
	char payload[64 * 300];
	size_t at = 0;
	for(int i = 299; i >= 0; i--) at += (size_t)sprintf(payload + at, "%x ", 0x1000 + i);
	CHECK(serial_set_add_all(&set, payload, at, &added) && added == 300 && set.len == 303);
	for(size_t i = 1; i < set.len; i++) CHECK(strcmp(set.items[i - 1], set.items[i]) < 0);
	CHECK(serial_set_contains(&set, "1000") && serial_set_contains(&set, "112B"));
	CHECK(!serial_set_contains(&set, "112C"));
	/* The payload need not end in a NUL: the length bounds it. */
	const char unterminated[] = {'e', 'e', ' ', 'f', 'f'};
	CHECK(serial_set_add_all(&set, unterminated, 3, &added) && added == 1);
	CHECK(serial_set_contains(&set, "EE"));
	CHECK(!serial_set_contains(&set, "F") && !serial_set_contains(&set, "FF"));
	serial_set_free(&set);
	CHECK(set.len == 0 && set.items == NULL && !serial_set_contains(&set, "AB"));
}

/* The value of the last user property named `name`, or NULL. */
static char *last_user_property(const mosquitto_property *props, const char *name)
{
	char *found = NULL;
	bool skip_first = false;
	for(;;){
		char *key = NULL, *value = NULL;
		const mosquitto_property *p =
			mosquitto_property_read_string_pair(props, MQTT_PROP_USER_PROPERTY, &key, &value, skip_first);
		if(!p) break;
		if(!strcmp(key, name)){
			free(found);
			found = value;
		}else{
			free(value);
		}
		free(key);
		props = p;
		skip_first = true;
	}
	return found;
}

/* Every user property in order, up to `max`; how many there are. */
static size_t user_properties(const mosquitto_property *props, char **keys, char **values, size_t max)
{
	size_t n = 0;
	bool skip_first = false;
	for(;;){
		char *key = NULL, *value = NULL;
		const mosquitto_property *p =
			mosquitto_property_read_string_pair(props, MQTT_PROP_USER_PROPERTY, &key, &value, skip_first);
		if(!p) break;
		if(n < max){
			keys[n] = key;
			values[n] = value;
		}else{
			free(key);
			free(value);
		}
		n++;
		props = p;
		skip_first = true;
	}
	return n;
}

static void stamping_the_receipt_time(void)
{
	long long before = receipt_now_ms();
	CHECK(before > 1700000000000LL); /* milliseconds, not seconds */
	/* Without properties: the stamp is the first one. */
	mosquitto_property *props = NULL;
	CHECK(receipt_stamp(&props, 1770418469123LL, NULL) == MOSQ_ERR_SUCCESS);
	char *v = last_user_property(props, FLEETWARD_RECEIVED_PROPERTY);
	CHECK(v && !strcmp(v, "1770418469123"));
	free(v);
	mosquitto_property_free_all(&props);
	/* After the publisher's own, including a forged stamp: the broker's
	 * comes last, so it is the one the gateway reads. */
	CHECK(mosquitto_property_add_string(&props, MQTT_PROP_CONTENT_TYPE, "application/json") == MOSQ_ERR_SUCCESS);
	CHECK(mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, FLEETWARD_RECEIVED_PROPERTY, "1") ==
		MOSQ_ERR_SUCCESS);
	long long now = receipt_now_ms();
	CHECK(receipt_stamp(&props, now, NULL) == MOSQ_ERR_SUCCESS);
	v = last_user_property(props, FLEETWARD_RECEIVED_PROPERTY);
	char expected[24];
	snprintf(expected, sizeof(expected), "%lld", now);
	CHECK(v && !strcmp(v, expected));
	free(v);
	CHECK(now >= before && now - before < 60000);
	mosquitto_property_free_all(&props);
	/* On a data topic the token follows the stamp, after a forged token. */
	const char *token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	CHECK(mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, FLEETWARD_RECEIPT_TOKEN_PROPERTY, "guess") ==
		MOSQ_ERR_SUCCESS);
	CHECK(receipt_stamp(&props, now, token) == MOSQ_ERR_SUCCESS);
	v = last_user_property(props, FLEETWARD_RECEIPT_TOKEN_PROPERTY);
	CHECK(v && !strcmp(v, token));
	free(v);
	/* The stamp comes right before it. */
	char *keys[8] = {0}, *values[8] = {0};
	size_t n = user_properties(props, keys, values, 8);
	CHECK(n == 3);
	CHECK(n >= 2 && !strcmp(keys[n - 2], FLEETWARD_RECEIVED_PROPERTY) && !strcmp(values[n - 2], expected));
	for(size_t i = 0; i < n; i++){
		free(keys[i]);
		free(values[i]);
	}
	mosquitto_property_free_all(&props);
}

static void making_and_keeping_the_receipt_token(void)
{
	char dir[] = "/tmp/fleetward-receipt-XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	char path[64];
	snprintf(path, sizeof(path), "%s/token", dir);
	char first[FLEETWARD_RECEIPT_TOKEN_LEN + 1] = {0}, again[FLEETWARD_RECEIPT_TOKEN_LEN + 1] = {0};
	/* Made when absent, 64 hex digits, and the same when read again. */
	CHECK(receipt_token_load(path, first) == MOSQ_ERR_SUCCESS);
	CHECK(strlen(first) == FLEETWARD_RECEIPT_TOKEN_LEN && strspn(first, "0123456789abcdef") == strlen(first));
	CHECK(receipt_token_load(path, again) == MOSQ_ERR_SUCCESS && !strcmp(first, again));
	/* Another file, another token. */
	char other[64];
	snprintf(other, sizeof(other), "%s/other", dir);
	CHECK(receipt_token_load(other, again) == MOSQ_ERR_SUCCESS && strcmp(first, again));
	/* A file that holds no token is refused, not replaced. */
	FILE *f = fopen(path, "w");
	CHECK(f && fputs("short", f) >= 0 && fclose(f) == 0);
	CHECK(receipt_token_load(path, again) == MOSQ_ERR_INVAL);
	remove(path);
	remove(other);
	rmdir(dir);
}

static void recognising_device_data_topics(void)
{
	CHECK(receipt_is_device_data_topic("device/d1/data"));
	CHECK(receipt_is_device_data_topic(FLEETWARD_DEVICE_TOPIC_PREFIX "sensor-7" FLEETWARD_DATA_TOPIC_SUFFIX));
	CHECK(!receipt_is_device_data_topic("device//data"));
	CHECK(!receipt_is_device_data_topic("device/d1/command"));
	CHECK(!receipt_is_device_data_topic("device/a/b/data"));
	CHECK(!receipt_is_device_data_topic("device/d1/data/x"));
	CHECK(!receipt_is_device_data_topic("devices/d1/data"));
	CHECK(!receipt_is_device_data_topic(FLEETWARD_REVOKE_TOPIC));
	CHECK(!receipt_is_device_data_topic(NULL));
}

static void reading_holders(void)
{
	const char *msg = "00ab12 dev-1\n"
		"zz dev-2\n"              /* not a serial */
		"CD dev-3 extra\n"        /* a third word */
		"\n"
		"  ef\tdev-4\r\n"
		"ab13\n"                  /* no client id */
		"1F dev-5";
	const char *p = msg, *end = msg + strlen(msg);
	char serial[SERIAL_MAX], id[HOLDER_ID_MAX];
	CHECK(holder_next(&p, end, serial, id) && !strcmp(serial, "AB12") && !strcmp(id, "dev-1"));
	CHECK(holder_next(&p, end, serial, id) && !strcmp(serial, "EF") && !strcmp(id, "dev-4"));
	CHECK(holder_next(&p, end, serial, id) && !strcmp(serial, "1F") && !strcmp(id, "dev-5"));
	CHECK(!holder_next(&p, end, serial, id));
	CHECK(p == end);
	/* A client id too long to be a device id is skipped, not cut. */
	char long_line[HOLDER_ID_MAX + 16];
	memcpy(long_line, "AA ", 3);
	memset(long_line + 3, 'x', HOLDER_ID_MAX);
	p = long_line;
	end = long_line + 3 + HOLDER_ID_MAX;
	CHECK(!holder_next(&p, end, serial, id));
	/* Only `len` bytes count: no NUL needed. */
	const char unterminated[] = {'0', '1', ' ', 'd'};
	p = unterminated;
	CHECK(holder_next(&p, unterminated + sizeof(unterminated), serial, id) && !strcmp(serial, "1") && !strcmp(id, "d"));
}

int main(void)
{
	normalising_serials();
	growing_the_revoked_set();
	stamping_the_receipt_time();
	making_and_keeping_the_receipt_token();
	recognising_device_data_topics();
	reading_holders();
	if(failures){
		fprintf(stderr, "%d checks failed\n", failures);
		return 1;
	}
	printf("fleetward_broker: all checks passed\n");
	return 0;
}
