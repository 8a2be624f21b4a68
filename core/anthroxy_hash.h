/* anthroxy_hash.h - the one string hash: 64-bit FNV-1a, for the session table, fingerprints of
 * tools and prompts, long-key suffixes and sticky assignments. Not for anything an attacker
 * must not steer: keys that come from clients are bounded and the tables are chained. */
#ifndef ANTHROXY_HASH_H
#define ANTHROXY_HASH_H

#include <stddef.h>
#include <stdint.h>

#define AX_FNV1A_INIT 14695981039346656037ull

/* Folds n bytes of p into h; start with AX_FNV1A_INIT, chain calls to hash several parts. */
static inline uint64_t ax_fnv1a(const void *p, size_t n, uint64_t h)
{
    const unsigned char *s = (const unsigned char *)p;

    while (n-- > 0) {
        h ^= *s++;
        h *= 1099511628211ull;
    }
    return h;
}

#endif
