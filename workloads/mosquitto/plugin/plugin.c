/*
 * fleetward_broker: the Mosquitto 2 plugin in every Gateway's broker. It
 * does two things, each in its own file:
 *
 *  - Revocation (serials.c, sessions.c). Mosquitto checks a client
 *    certificate against its CRL only when the client connects, and reloads
 *    the CRL file only on SIGHUP (after the kubelet has updated the mounted
 *    ConfigMap, which can take a minute). So a revoked device stayed
 *    connected, and could reconnect until then. The gateway (the one
 *    identity named by `plugin_opt_controller`) publishes revoked
 *    certificate serials, hex, separated by whitespace, to the control
 *    topic FLEETWARD_REVOKE_TOPIC as soon as the operator revokes them. The
 *    plugin remembers them and disconnects every session whose certificate
 *    carries one. A session whose certificate is revoked is refused every
 *    publish, subscription and delivery (ACL check), and disconnected at
 *    the next tick: a reconnect before the CRL reload achieves nothing.
 *    Mosquitto 2.0 calls a plugin first at a session's first publish or
 *    subscription, so a session that has done nothing since it connected
 *    is not known by its certificate: for those the gateway also publishes
 *    the holders of newly revoked certificates (`<serial> <client id>`
 *    lines, FLEETWARD_CLOSE_TOPIC), and the plugin closes each named
 *    client's session unless it knows that session to hold a certificate
 *    that is not revoked.
 *  - CRL reload (here). The gateway writes the CRL file (`plugin_opt_crl_file`)
 *    as soon as the operator changes it; the plugin checks the file every
 *    second and when revocations arrive, and on a change has the broker
 *    reload it (SIGHUP to its own process: Mosquitto re-reads its TLS
 *    settings, CRL included), so a revoked certificate's handshake is
 *    refused from then on. No other container needs to see or signal the
 *    broker's process.
 *  - Receipt time (receipt.c). Every message is stamped with the time the
 *    broker received it, followed on device data topics by the pod's
 *    receipt token (from the file `plugin_opt_receipt_token_file` names),
 *    so the gateway can tell the broker's stamp from one a device wrote
 *    into a will; a will on a device data topic is refused when the plugin
 *    can tell it is one (its session already gone).
 *
 * This file holds the broker's entry points and callbacks only. Topic,
 * property and option names come from fleetward_protocol.h, generated from
 * the protocol crate.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "fleetward_protocol.h"
#include "receipt.h"
#include "serials.h"
#include "sessions.h"

static mosquitto_plugin_id_t *plugin_id;
static char *controller;
static char receipt_token[FLEETWARD_RECEIPT_TOKEN_LEN + 1];
static struct serial_set revoked;
static char *crl_file;
/* The CRL file as last seen, and when it was last looked at. */
static struct stat crl_seen;
static bool crl_seen_valid;
static time_t crl_checked;

static bool same_file(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec
		&& a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Has the broker reload the CRL when its file changed since last seen. */
static void check_crl_file(void)
{
	if(!crl_file) return;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	crl_checked = now.tv_sec;
	struct stat st;
	if(stat(crl_file, &st)) return;
	if(crl_seen_valid && same_file(&st, &crl_seen)) return;
	bool first = !crl_seen_valid;
	crl_seen = st;
	crl_seen_valid = true;
	if(first) return;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "fleetward_broker: the CRL file changed; reloading");
	/* Mosquitto's handler only sets a flag; its main loop reloads. */
	raise(SIGHUP);
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_acl_check *ev = event_data;
	struct session *s = session_of(ev->client, &revoked);
	if(s && s->revoked){
		session_kick_later(s);
		return MOSQ_ERR_ACL_DENIED;
	}
	if(!s && ev->access == MOSQ_ACL_WRITE && receipt_is_device_data_topic(ev->topic)){
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
	const char *token = receipt_is_device_data_topic(ev->topic) ? receipt_token : NULL;
	return receipt_stamp(&ev->properties, receipt_now_ms(), token);
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_disconnect *ev = event_data;
	session_forget(ev->client);
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	sessions_kick_queued();
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if(now.tv_sec != crl_checked) check_crl_file();
	return MOSQ_ERR_SUCCESS;
}

static bool from_controller(const struct mosquitto *client)
{
	const char *who = mosquitto_client_username(client);
	if(who && !strcmp(who, controller)) return true;
	mosquitto_log_printf(MOSQ_LOG_WARNING, "fleetward_broker: ignored a control message from a client that is not the gateway");
	return false;
}

static int on_close(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_control *ev = event_data;
	if(!from_controller(ev->client)) return MOSQ_ERR_ACL_DENIED;
	size_t queued = sessions_close_holders(ev->payload, (size_t)ev->payloadlen, &revoked);
	sessions_kick_queued();
	if(queued) mosquitto_log_printf(MOSQ_LOG_NOTICE, "fleetward_broker: closing any session of %zu revoked holders", queued);
	return MOSQ_ERR_SUCCESS;
}

static int on_control(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_control *ev = event_data;
	if(!from_controller(ev->client)) return MOSQ_ERR_ACL_DENIED;
	/* The gateway wrote the CRL file before it sent these. */
	check_crl_file();
	size_t added;
	bool fitted = serial_set_add_all(&revoked, ev->payload, (size_t)ev->payloadlen, &added);
	if(added == 0) return fitted ? MOSQ_ERR_SUCCESS : MOSQ_ERR_NOMEM;
	size_t closed = sessions_revoke(&revoked);
	/* Now rather than at the next tick: the sessions to close are others'. */
	sessions_kick_queued();
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "fleetward_broker: %zu serials revoked, %zu sessions closed", added, closed);
	/* What did fit is in force. */
	return fitted ? MOSQ_ERR_SUCCESS : MOSQ_ERR_NOMEM;
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
		if(!strcmp(opts[i].key, FLEETWARD_CONTROLLER_OPTION)) controller = strdup(opts[i].value);
	}
	const char *token_file = NULL;
	for(int i = 0; i < opt_count; i++){
		if(!strcmp(opts[i].key, FLEETWARD_RECEIPT_TOKEN_OPTION)) token_file = opts[i].value;
		/* Optional: without it the CRL is reloaded only by whoever signals the broker. */
		if(!strcmp(opts[i].key, FLEETWARD_CRL_FILE_OPTION)) crl_file = strdup(opts[i].value);
	}
	if(!controller || !token_file){
		mosquitto_log_printf(MOSQ_LOG_ERR,
			"fleetward_broker: plugin_opt_" FLEETWARD_CONTROLLER_OPTION " (the gateway's identity) and plugin_opt_"
			FLEETWARD_RECEIPT_TOKEN_OPTION " (the receipt token's file) are required");
		return MOSQ_ERR_INVAL;
	}
	int loaded = receipt_token_load(token_file, receipt_token);
	if(loaded){
		/* The path only: never the token. */
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleetward_broker: cannot read or make the receipt token file %s%s",
			token_file, loaded == MOSQ_ERR_INVAL ? " (it does not hold a token)" : "");
		return loaded;
	}
	check_crl_file();
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_CONTROL, on_control, FLEETWARD_REVOKE_TOPIC, NULL);
	if(!rc) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_CONTROL, on_close, FLEETWARD_CLOSE_TOPIC, NULL);
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
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_CONTROL, on_control, FLEETWARD_REVOKE_TOPIC);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_CONTROL, on_close, FLEETWARD_CLOSE_TOPIC);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	sessions_free();
	serial_set_free(&revoked);
	free(controller);
	controller = NULL;
	free(crl_file);
	crl_file = NULL;
	crl_seen_valid = false;
	return MOSQ_ERR_SUCCESS;
}
