/* ids.c - Anthropic-style identifiers; a pluggable source keeps tests deterministic. */
#include "anthroxy_ids.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static ax_id_source_fn id_source;
static void *id_source_ud;
static _Thread_local uint64_t id_state; /* per thread: --workers runs one loop per thread */

static const char base62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static uint64_t next_random(void)
{
    if (id_state == 0) {
        FILE *f = fopen("/dev/urandom", "rb");
        if (f == NULL || fread(&id_state, sizeof(id_state), 1, f) != 1)
            id_state = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        if (f)
            fclose(f);
        if (id_state == 0)
            id_state = 0x9E3779B97F4A7C15ull;
    }
    id_state ^= id_state << 13;
    id_state ^= id_state >> 7;
    id_state ^= id_state << 17;
    return id_state;
}

void ax_ids_set_source(ax_id_source_fn fn, void *ud)
{
    id_source = fn;
    id_source_ud = ud;
}

void ax_id_make(char *out, size_t n, const char *prefix)
{
    size_t plen = strlen(prefix), i;
    uint64_t r = 0;

    if (id_source != NULL) {
        id_source(out, n, prefix, id_source_ud);
        return;
    }
    if (n < plen + 25) {
        if (n > 0)
            out[0] = '\0';
        return;
    }
    memcpy(out, prefix, plen);
    for (i = 0; i < 24; i++) {
        if (i % 10 == 0)
            r = next_random();
        out[plen + i] = base62[r % 62];
        r /= 62;
    }
    out[plen + 24] = '\0';
}

size_t ax_tool_id_prefix_len(const char *upstream_id, size_t n)
{
    return n >= AX_TOOL_ID_PREFIX_LEN &&
                   memcmp(upstream_id, AX_TOOL_ID_PREFIX, AX_TOOL_ID_PREFIX_LEN) == 0
               ? 0
               : AX_TOOL_ID_PREFIX_LEN;
}

const char *ax_tool_id_to_upstream(const char *id)
{
    return strncmp(id, AX_TOOL_ID_PREFIX, AX_TOOL_ID_PREFIX_LEN) == 0 ? id + AX_TOOL_ID_PREFIX_LEN
                                                                      : id;
}

void ax_tool_id_make(char *out, size_t n)
{
    ax_id_make(out, n, AX_TOOL_ID_PREFIX);
}
