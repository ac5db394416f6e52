/* The revoked-serial set: see serials.h. */
#include "serials.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

bool serial_normalise(const char *in, size_t len, char out[SERIAL_MAX])
{
	size_t i = 0, o = 0;
	while(i < len && in[i] == '0') i++;
	for(; i < len; i++){
		if(!isxdigit((unsigned char)in[i]) || o + 1 >= SERIAL_MAX) return false;
		out[o++] = (char)toupper((unsigned char)in[i]);
	}
	out[o] = '\0';
	return o > 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* In the first `n` (sorted) entries. */
static bool listed(const struct serial_set *set, const char *serial, size_t n)
{
	const char *key = serial;
	return serial[0] && n && bsearch(&key, set->items, n, sizeof(char *), cmp_str) != NULL;
}

bool serial_set_contains(const struct serial_set *set, const char *serial)
{
	return listed(set, serial, set->len);
}

static bool push(struct serial_set *set, const char *s)
{
	if(set->len == set->cap){
		size_t n = set->cap ? set->cap * 2 : 64;
		char **grown = realloc(set->items, n * sizeof(char *));
		if(!grown) return false;
		set->items = grown;
		set->cap = n;
	}
	set->items[set->len] = strdup(s);
	if(!set->items[set->len]) return false;
	set->len++;
	return true;
}

/* New serials are appended (checked against the sorted part only), then the
 * set is sorted and de-duplicated once: a message carries up to thousands
 * of serials, and the gateway sends the whole list again on every change
 * and reconnect. */
bool serial_set_add_all(struct serial_set *set, const char *payload, size_t len, size_t *added)
{
	const char *p = payload, *end = payload + len;
	size_t sorted = set->len;
	bool out_of_memory = false;
	while(p < end && !out_of_memory){
		while(p < end && isspace((unsigned char)*p)) p++;
		const char *start = p;
		while(p < end && !isspace((unsigned char)*p)) p++;
		char serial[SERIAL_MAX];
		if(p > start && serial_normalise(start, (size_t)(p - start), serial) && !listed(set, serial, sorted)){
			out_of_memory = !push(set, serial);
		}
	}
	*added = 0;
	if(set->len == sorted) return !out_of_memory;
	qsort(set->items, set->len, sizeof(char *), cmp_str);
	size_t kept = 1;
	for(size_t i = 1; i < set->len; i++){
		if(strcmp(set->items[i], set->items[kept - 1])) set->items[kept++] = set->items[i];
		else free(set->items[i]);
	}
	*added = kept - sorted;
	set->len = kept;
	/* What did fit is in force (the set stays sorted either way). */
	return !out_of_memory;
}

void serial_set_free(struct serial_set *set)
{
	for(size_t i = 0; i < set->len; i++) free(set->items[i]);
	free(set->items);
	set->items = NULL;
	set->len = set->cap = 0;
}

/* The next whitespace-free word of [*p, end) on the current line. */
static bool word(const char **p, const char *end, const char **start, size_t *len)
{
	while(*p < end && (**p == ' ' || **p == '\t' || **p == '\r')) (*p)++;
	*start = *p;
	while(*p < end && !isspace((unsigned char)**p)) (*p)++;
	*len = (size_t)(*p - *start);
	return *len > 0;
}

bool holder_next(const char **p, const char *end, char serial[SERIAL_MAX], char id[HOLDER_ID_MAX])
{
	while(*p < end){
		const char *line_end = memchr(*p, '\n', (size_t)(end - *p));
		if(!line_end) line_end = end;
		const char *s, *i, *extra;
		size_t slen, ilen, elen;
		bool ok = word(p, line_end, &s, &slen) && word(p, line_end, &i, &ilen) && !word(p, line_end, &extra, &elen)
			&& ilen < HOLDER_ID_MAX && serial_normalise(s, slen, serial);
		*p = line_end < end ? line_end + 1 : end;
		if(ok){
			memcpy(id, i, ilen);
			id[ilen] = '\0';
			return true;
		}
	}
	return false;
}
