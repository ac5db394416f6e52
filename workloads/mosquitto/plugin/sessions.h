/*
 * The broker's sessions, as far as revocation needs them: tracked from a
 * session's first ACL check (its first publish or subscription: Mosquitto
 * 2.0 tells a plugin nothing at a certificate client's connect, so a
 * session that has done nothing yet is reached by client id, through the
 * holders the gateway names) until it disconnects, keyed by the client pointer, with the
 * certificate serial read once. A client without a certificate is not
 * tracked: every device connection has one, and the only checks without
 * one are those of a will, made after the connection closed (tracking it
 * then would leave an entry no disconnect removes).
 *
 * Sessions to close are queued and kicked later (never inside an ACL check
 * of that very client). This file calls the broker (certificates, kicks).
 */
#ifndef FLEETWARD_SESSIONS_H
#define FLEETWARD_SESSIONS_H

#include <stdbool.h>
#include <stddef.h>

#include <mosquitto.h>

#include "serials.h"

struct session {
	const struct mosquitto *client;
	char *id;
	char serial[SERIAL_MAX];
	bool revoked;
	bool kick_pending;
	struct session *next;
};

/* The client's session, tracked from now on if it was not; NULL for a
 * client without a certificate (or if memory ran out). */
struct session *session_of(const struct mosquitto *client, const struct serial_set *revoked);

/* Queues the session to be disconnected (once). */
void session_kick_later(struct session *s);

/* Marks every session whose certificate is now in `revoked` and queues
 * it; returns how many were newly revoked. */
size_t sessions_revoke(const struct serial_set *revoked);

/* For each line `<serial> <client id>` of a holders message whose serial
 * is in `revoked`, queues the session of that client id to be closed,
 * unless the session tracked under the id holds a certificate that is not
 * revoked (the device reconnected with its new one). This reaches sessions
 * that have done nothing since they connected, which are not tracked.
 * Returns how many were queued. */
size_t sessions_close_holders(const char *payload, size_t len, const struct serial_set *revoked);

/* Disconnects every queued session. */
void sessions_kick_queued(void);

/* Stops tracking the client (it disconnected). */
void session_forget(const struct mosquitto *client);

/* Frees every session and the queue (the plugin is unloaded). */
void sessions_free(void);

#endif
