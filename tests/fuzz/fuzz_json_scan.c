/* fuzz_json_scan.c - libFuzzer target: the strict JSON pull scanner (json_scan.c), checked
 * against cJSON. The scanner is a strict subset: whatever it accepts whole (one value and
 * whitespace) cJSON must parse too. A second walk goes through objects and arrays by
 * callbacks, reading every string and "index" member the way stream.c does. Seeds: every
 * JSON fixture and the data of the recorded streams. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "anthroxy_json_scan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int walk_value(struct ax_json_scan *l, int depth);

static int nesting; /* containers entered by the walk: the callbacks cannot pass it */

static int on_member(struct ax_json_scan *l, const char *k, size_t kl, void *ud)
{
    const char *num;
    int rc;

    if (k < (const char *)ud || kl > (size_t)(l->e - k))
        abort(); /* keys point inside the text */
    if (AX_JSON_KEY_IS(k, kl, "index")) {
        const char *start = l->p;

        if ((rc = ax_json_scan_index(l, &num)) < 0)
            return -1;
        if (rc == 1 && (num < start || num >= l->p))
            abort();
        if (rc == 0)
            return ax_json_scan_skip(l, 1);
        return 0;
    }
    return walk_value(l, nesting);
}

static int on_elem(struct ax_json_scan *l, void *ud)
{
    (void)ud;
    return walk_value(l, nesting);
}

static int walk_value(struct ax_json_scan *l, int depth)
{
    const char *raw;
    size_t len;
    int plain, is_int, rc;

    if (depth > 8)
        return ax_json_scan_skip(l, depth);
    ax_json_scan_ws(l);
    if (l->p >= l->e)
        return -1;
    switch (*l->p) {
    case '{':
        nesting = depth + 1;
        rc = ax_json_scan_object(l, on_member, (void *)l->p);
        nesting = depth;
        return rc;
    case '[':
        nesting = depth + 1;
        rc = ax_json_scan_array(l, on_elem, NULL);
        nesting = depth;
        return rc;
    case '"':
        if (ax_json_scan_string(l, &raw, &len, &plain) < 0)
            return -1;
        if (raw + len != l->p - 1)
            abort();
        if (plain && memchr(raw, '\\', len) != NULL)
            abort(); /* "no escape at all" */
        return 0;
    case '-':
    case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        return ax_json_scan_number(l, &is_int);
    default:
        return ax_json_scan_skip(l, depth);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly size bytes, so that ASan sees any read past the end */
    char *text = malloc(size ? size : 1);
    struct ax_json_scan l;
    cJSON *j;
    int ok;

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    l.p = text;
    l.e = text + size;
    ok = ax_json_scan_skip(&l, 0) == 0;
    if (l.p < text || l.p > l.e)
        abort();
    ax_json_scan_ws(&l);
    if (ok && l.p == l.e) {
        if ((j = cJSON_ParseWithLength(text, size)) == NULL)
            abort(); /* the scanner accepted what is not JSON */
        cJSON_Delete(j);
    }
    l.p = text;
    l.e = text + size;
    nesting = 0;
    (void)walk_value(&l, 0);
    if (l.p < text || l.p > l.e)
        abort();
    free(text);
    return 0;
}
