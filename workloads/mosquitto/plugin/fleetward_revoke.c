/*
 * fleetward_revoke: a Mosquitto 2 plugin that ends the sessions of revoked
 * certificates at once.
 *
 * Mosquitto checks a client certificate against its CRL only when the
 * client connects, and reloads the CRL file only on SIGHUP (after the
 * kubelet has updated the mounted ConfigMap, which can take a minute). So a
 * revoked device stayed connected, and could reconnect until then. This
 * plugin closes that gap:
 *
 *  - The gateway (the one identity named by `plugin_opt_controller`)
 *    publishes revoked certificate serials, hex, separated by whitespace, to
 *    `$CONTROL/fleetward/v1/revoke` as soon as the operator revokes them.
 *    The plugin remembers them (a CRL never takes a serial back) and
 *    disconnects every session whose certificate carries one.
 *  - A session whose certificate is revoked is refused every publish,
 *    subscription and delivery (ACL check), and disconnected at the next
 *    tick: a reconnect before the CRL reload achieves nothing.
 *
 * Sessions are tracked from their first ACL check (a device subscribes or
 * publishes as soon as it connects) until they disconnect, keyed by the
 * client pointer, with their certificate serial read once. A client without
 * a certificate is not tracked: every device connection has one, and the
 * only checks without one are those of a will, made after the connection
 * closed (tracking it then would leave an entry no disconnect removes).
 *
 * It also stamps every message with the time the broker received it, as
 * the MQTT 5 user property `fleetward-received-ms` (Unix milliseconds),
 * appended after whatever properties the publisher sent: the gateway judges
 * a message's freshness by that time, so messages queued for it during an
 * outage are not refused as stale. Brokers keep user properties in order,
 * so the gateway reads the last one (a device can add its own, but only
 * before the broker's). Wills bypass the message hook, so a will on a
 * device data topic is refused: it would carry only the publisher's
 * properties.
 */
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#define CONTROL_TOPIC "$CONTROL/fleetward/v1/revoke"
#define RECEIVED_PROPERTY "fleetward-received-ms"
#define BUCKETS 65536
#define MAX_SERIAL 80

struct session {
	const struct mosquitto *client;
	char *id;
	char serial[MAX_SERIAL];
	bool revoked;
	bool kick_pending;
	struct session *next;
};

static mosquitto_plugin_id_t *plugin_id;
static char *controller;
static struct session *sessions[BUCKETS];
/* Revoked serials, normalised (upper case, no leading zeros), sorted. */
static char **revoked;
static size_t revoked_len, revoked_cap;
/* Client ids to disconnect at the next tick (never inside an ACL check of
 * that very client). */
static char **kicks;
static size_t kicks_len, kicks_cap;

static size_t bucket_of(const struct mosquitto *client)
{
	uintptr_t p = (uintptr_t)client;
	return (size_t)((p >> 4) ^ (p >> 20)) % BUCKETS;
}

/* Upper case, leading zeros dropped, only hex digits; false if it is not a
 * serial at all. */
static bool normalise(const char *in, size_t len, char out[MAX_SERIAL])
{
	size_t i = 0, o = 0;
	while(i < len && in[i] == '0') i++;
	for(; i < len; i++){
		if(!isxdigit((unsigned char)in[i]) || o + 1 >= MAX_SERIAL) return false;
		out[o++] = (char)toupper((unsigned char)in[i]);
	}
	out[o] = '\0';
	return o > 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* In the first `n` (sorted) entries of the revoked list. */
static bool listed(const char *serial, size_t n)
{
	const char *key = serial;
	return serial[0] && n && bsearch(&key, revoked, n, sizeof(char *), cmp_str) != NULL;
}

static bool is_revoked(const char *serial)
{
	return listed(serial, revoked_len);
}

static bool push(char ***list, size_t *len, size_t *cap, const char *s)
{
	if(*len == *cap){
		size_t n = *cap ? *cap * 2 : 64;
		char **grown = realloc(*list, n * sizeof(char *));
		if(!grown) return false;
		*list = grown;
		*cap = n;
	}
	(*list)[*len] = strdup(s);
	if(!(*list)[*len]) return false;
	(*len)++;
	return true;
}

static void certificate_serial(const struct mosquitto *client, char out[MAX_SERIAL])
{
	out[0] = '\0';
	X509 *cert = mosquitto_client_certificate(client);
	if(!cert) return;
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), NULL);
	if(bn){
		char *hex = BN_bn2hex(bn);
		if(hex){
			if(!normalise(hex, strlen(hex), out)) out[0] = '\0';
			OPENSSL_free(hex);
		}
		BN_free(bn);
	}
	X509_free(cert);
}

static struct session *session_of(const struct mosquitto *client)
{
	size_t b = bucket_of(client);
	for(struct session *s = sessions[b]; s; s = s->next){
		if(s->client == client) return s;
	}
	char serial[MAX_SERIAL];
	certificate_serial(client, serial);
	if(!serial[0]) return NULL;
	const char *id = mosquitto_client_id(client);
	struct session *s = calloc(1, sizeof(*s));
	if(!s) return NULL;
	s->client = client;
	s->id = strdup(id ? id : "");
	if(!s->id){
		free(s);
		return NULL;
	}
	memcpy(s->serial, serial, sizeof(serial));
	s->revoked = is_revoked(s->serial);
	s->next = sessions[b];
	sessions[b] = s;
	return s;
}

static void schedule_kick(struct session *s)
{
	if(s->kick_pending || !s->id[0]) return;
	if(push(&kicks, &kicks_len, &kicks_cap, s->id)) s->kick_pending = true;
}

/* device/<id>/data, the topics the gateway reads. */
static bool is_data_topic(const char *topic)
{
	if(!topic || strncmp(topic, "device/", 7)) return false;
	const char *id = topic + 7, *slash = strchr(id, '/');
	return slash && slash > id && !strcmp(slash, "/data");
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_acl_check *ev = event_data;
	struct session *s = session_of(ev->client);
	if(s && s->revoked){
		schedule_kick(s);
		return MOSQ_ERR_ACL_DENIED;
	}
	if(!s && ev->access == MOSQ_ACL_WRITE && is_data_topic(ev->topic)){
		/* A will (the connection is gone): it cannot be stamped. */
		return MOSQ_ERR_ACL_DENIED;
	}
	/* Not ours to allow: the ACL file decides. */
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int on_message(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_message *ev = event_data;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	char ms[24];
	snprintf(ms, sizeof(ms), "%lld", (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000);
	/* Appended at the end of the list (or as its first element). */
	return mosquitto_property_add_string_pair(&ev->properties, MQTT_PROP_USER_PROPERTY, RECEIVED_PROPERTY, ms);
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_disconnect *ev = event_data;
	struct session **p = &sessions[bucket_of(ev->client)];
	while(*p){
		if((*p)->client == ev->client){
			struct session *gone = *p;
			*p = gone->next;
			free(gone->id);
			free(gone);
			return MOSQ_ERR_SUCCESS;
		}
		p = &(*p)->next;
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	/* Kicking may run on_disconnect, which edits the sessions: take the
	 * list first. */
	char **now = kicks;
	size_t n = kicks_len;
	kicks = NULL;
	kicks_len = kicks_cap = 0;
	for(size_t i = 0; i < n; i++){
		mosquitto_kick_client_by_clientid(now[i], false);
		free(now[i]);
	}
	free(now);
	return MOSQ_ERR_SUCCESS;
}

static int on_control(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_control *ev = event_data;
	const char *who = mosquitto_client_username(ev->client);
	if(!who || strcmp(who, controller) != 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "fleetward_revoke: ignored revocations from a client that is not the gateway");
		return MOSQ_ERR_ACL_DENIED;
	}
	/* New serials are appended (checked against the sorted list only), then
	 * the list is sorted and de-duplicated once: a message carries up to
	 * thousands of serials, and the gateway sends the whole list again on
	 * every change and reconnect. */
	const char *p = ev->payload, *end = p + ev->payloadlen;
	size_t sorted = revoked_len;
	bool out_of_memory = false;
	while(p < end && !out_of_memory){
		while(p < end && isspace((unsigned char)*p)) p++;
		const char *start = p;
		while(p < end && !isspace((unsigned char)*p)) p++;
		char serial[MAX_SERIAL];
		if(p > start && normalise(start, (size_t)(p - start), serial) && !listed(serial, sorted)){
			out_of_memory = !push(&revoked, &revoked_len, &revoked_cap, serial);
		}
	}
	if(revoked_len == sorted) return out_of_memory ? MOSQ_ERR_NOMEM : MOSQ_ERR_SUCCESS;
	qsort(revoked, revoked_len, sizeof(char *), cmp_str);
	size_t kept = 1;
	for(size_t i = 1; i < revoked_len; i++){
		if(strcmp(revoked[i], revoked[kept - 1])) revoked[kept++] = revoked[i];
		else free(revoked[i]);
	}
	size_t added = kept - sorted;
	revoked_len = kept;
	size_t closed = 0;
	for(size_t b = 0; b < BUCKETS; b++){
		for(struct session *s = sessions[b]; s; s = s->next){
			if(!s->revoked && is_revoked(s->serial)){
				s->revoked = true;
				schedule_kick(s);
				closed++;
			}
		}
	}
	/* Now rather than at the next tick: the sessions to close are others'. */
	on_tick(MOSQ_EVT_TICK, NULL, NULL);
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "fleetward_revoke: %zu serials revoked, %zu sessions closed", added, closed);
	/* What did fit is in force (the list stays sorted either way). */
	return out_of_memory ? MOSQ_ERR_NOMEM : MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < opt_count; i++){
		if(!strcmp(opts[i].key, "controller")) controller = strdup(opts[i].value);
	}
	if(!controller){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetward_revoke: plugin_opt_controller (the gateway's identity) is required");
		return MOSQ_ERR_INVAL;
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata;
	(void)opts;
	(void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	return MOSQ_ERR_SUCCESS;
}
