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

/* The tool-id rule, the one place it is written: the client sees an upstream tool call's id
 * as "toolu_" + id, unless id already starts with "toolu_"; what the client sends back loses
 * a leading "toolu_", so the upstream gets its own id again. A call without an id gets a
 * new one. */
#define AX_TOOL_ID_PREFIX "toolu_"
#define AX_TOOL_ID_PREFIX_LEN 6

/* The bytes of AX_TOOL_ID_PREFIX to put before upstream_id[0..n): 0 or AX_TOOL_ID_PREFIX_LEN. */
size_t ax_tool_id_prefix_len(const char *upstream_id, size_t n);

/* The upstream's id for a client's tool id (a pointer into id). */
const char *ax_tool_id_to_upstream(const char *id);

/* A new client tool id, as ax_id_make (n >= 31). */
void ax_tool_id_make(char *out, size_t n);

#endif
