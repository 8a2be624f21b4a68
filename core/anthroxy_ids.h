/* anthroxy_ids.h - identifiers in Anthropic form (msg_..., toolu_..., req_...).
 *
 * Random by default (24 base62 characters from a per-process xorshift seeded from
 * /dev/urandom at first use). Tests inject a deterministic source with ax_ids_set_source so
 * that byte-exact output can be compared. */
#ifndef ANTHROXY_IDS_H
#define ANTHROXY_IDS_H

#include <stddef.h>

/* Writes prefix + 24 base62 characters + NUL into out (n >= strlen(prefix) + 25). */
void ax_id_make(char *out, size_t n, const char *prefix);

/* fn(out, n, prefix, ud) replaces the generator; NULL restores the random one. */
typedef void (*ax_id_source_fn)(char *out, size_t n, const char *prefix, void *ud);
void ax_ids_set_source(ax_id_source_fn fn, void *ud);

#endif
