/*
 * The revoked certificate serials the broker has been told about: a sorted
 * set of normalised hex serials (upper case, no leading zeros). A CRL never
 * takes a serial back, so the set only grows. Pure: no broker calls, so the
 * C test exercises it as it is.
 */
#ifndef FLEETWARD_SERIALS_H
#define FLEETWARD_SERIALS_H

#include <stdbool.h>
#include <stddef.h>

/* Longest serial kept, with its terminating NUL (RFC 5280 allows 20 octets,
 * 40 hex digits). */
#define SERIAL_MAX 80

struct serial_set {
	char **items; /* sorted, distinct */
	size_t len, cap;
};

/* Upper case, leading zeros dropped, only hex digits; false if `in` is not a
 * serial at all (empty, all zeros, another character, or too long). */
bool serial_normalise(const char *in, size_t len, char out[SERIAL_MAX]);

/* Whether the normalised `serial` is in the set (an empty one never is). */
bool serial_set_contains(const struct serial_set *set, const char *serial);

/* Adds every serial of a control message: hex serials separated by
 * whitespace; what is not a serial is skipped. The set stays sorted and
 * distinct; `*added` is how many serials were new. False if memory ran
 * out: what did fit is in the set (and counted). */
bool serial_set_add_all(struct serial_set *set, const char *payload, size_t len, size_t *added);

void serial_set_free(struct serial_set *set);

/* Longest client id kept from a holders message, with its NUL (device ids
 * are Kubernetes names: at most 253 characters). */
#define HOLDER_ID_MAX 256

/* Reads the next line `<serial> <client id>` of a holders message
 * (FLEETWARD_CLOSE_TOPIC) from `*p` (before `end`), advancing `*p` past
 * it. Lines that are not one serial and one client id are skipped. False
 * when no line is left. */
bool holder_next(const char **p, const char *end, char serial[SERIAL_MAX], char id[HOLDER_ID_MAX]);

#endif
