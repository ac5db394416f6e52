/* Sessions and the kick queue: see sessions.h. */
#include "sessions.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/x509.h>

#include <mosquitto_broker.h>

#define BUCKETS 65536

static struct session *sessions[BUCKETS];
/* Client ids to disconnect at the next tick. */
static char **kicks;
static size_t kicks_len, kicks_cap;

static size_t bucket_of(const struct mosquitto *client)
{
	uintptr_t p = (uintptr_t)client;
	return (size_t)((p >> 4) ^ (p >> 20)) % BUCKETS;
}

static void certificate_serial(const struct mosquitto *client, char out[SERIAL_MAX])
{
	out[0] = '\0';
	X509 *cert = mosquitto_client_certificate(client);
	if(!cert) return;
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), NULL);
	if(bn){
		char *hex = BN_bn2hex(bn);
		if(hex){
			if(!serial_normalise(hex, strlen(hex), out)) out[0] = '\0';
			OPENSSL_free(hex);
		}
		BN_free(bn);
	}
	X509_free(cert);
}

struct session *session_of(const struct mosquitto *client, const struct serial_set *revoked)
{
	size_t b = bucket_of(client);
	for(struct session *s = sessions[b]; s; s = s->next){
		if(s->client == client) return s;
	}
	char serial[SERIAL_MAX];
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
	s->revoked = serial_set_contains(revoked, s->serial);
	s->next = sessions[b];
	sessions[b] = s;
	return s;
}

static bool queue_kick(const char *id)
{
	if(kicks_len == kicks_cap){
		size_t n = kicks_cap ? kicks_cap * 2 : 64;
		char **grown = realloc(kicks, n * sizeof(char *));
		if(!grown) return false;
		kicks = grown;
		kicks_cap = n;
	}
	kicks[kicks_len] = strdup(id);
	if(!kicks[kicks_len]) return false;
	kicks_len++;
	return true;
}

void session_kick_later(struct session *s)
{
	if(s->kick_pending || !s->id[0]) return;
	if(queue_kick(s->id)) s->kick_pending = true;
}

/* The tracked session of client id `id`, if any. A scan: holders come
 * with revocations, which are rare. */
static struct session *session_by_id(const char *id)
{
	for(size_t b = 0; b < BUCKETS; b++){
		for(struct session *s = sessions[b]; s; s = s->next){
			if(!strcmp(s->id, id)) return s;
		}
	}
	return NULL;
}

size_t sessions_close_holders(const char *payload, size_t len, const struct serial_set *revoked)
{
	size_t queued = 0;
	const char *p = payload, *end = payload + len;
	char serial[SERIAL_MAX], id[HOLDER_ID_MAX];
	while(holder_next(&p, end, serial, id)){
		if(!serial_set_contains(revoked, serial)) continue;
		struct session *s = session_by_id(id);
		if(s && !serial_set_contains(revoked, s->serial)) continue;
		if(s){
			if(!s->kick_pending){
				session_kick_later(s);
				queued++;
			}
		}else if(queue_kick(id)){
			queued++;
		}
	}
	return queued;
}

size_t sessions_revoke(const struct serial_set *revoked)
{
	size_t newly = 0;
	for(size_t b = 0; b < BUCKETS; b++){
		for(struct session *s = sessions[b]; s; s = s->next){
			if(!s->revoked && serial_set_contains(revoked, s->serial)){
				s->revoked = true;
				session_kick_later(s);
				newly++;
			}
		}
	}
	return newly;
}

void sessions_kick_queued(void)
{
	/* Kicking may run the disconnect callback, which edits the sessions:
	 * take the queue first. */
	char **now = kicks;
	size_t n = kicks_len;
	kicks = NULL;
	kicks_len = kicks_cap = 0;
	for(size_t i = 0; i < n; i++){
		mosquitto_kick_client_by_clientid(now[i], false);
		free(now[i]);
	}
	free(now);
}

void session_forget(const struct mosquitto *client)
{
	struct session **p = &sessions[bucket_of(client)];
	while(*p){
		if((*p)->client == client){
			struct session *gone = *p;
			*p = gone->next;
			free(gone->id);
			free(gone);
			return;
		}
		p = &(*p)->next;
	}
}

void sessions_free(void)
{
	for(size_t b = 0; b < BUCKETS; b++){
		while(sessions[b]){
			struct session *gone = sessions[b];
			sessions[b] = gone->next;
			free(gone->id);
			free(gone);
		}
	}
	for(size_t i = 0; i < kicks_len; i++) free(kicks[i]);
	free(kicks);
	kicks = NULL;
	kicks_len = kicks_cap = 0;
}
