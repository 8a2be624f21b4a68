/* test_record.c - record.c's pure parts: a delta rebuilds against the base its hash names
 * (and nothing else), snapshots stand alone, malformed deltas are refused; ax_rec_diff says
 * which messages a policy removed, changed or added, which tool results it masked and which
 * fields it touched, for Anthropic and OpenAI requests alike. */
#include "anthroxy_hash.h"
#include "anthroxy_record.h"
#include "ax_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cJSON *parse(const char *s)
{
    cJSON *j = cJSON_Parse(s);
    CHECK(j != NULL);
    return j;
}

static void test_rebuild(void)
{
    const char *a = "{\"messages\":[1,2,3],\"tools\":\"T\"}", *other = "{\"x\":0}";
    char *prevs[AX_REC_BASES] = {(char *)other, (char *)a, NULL, NULL};
    size_t lens[AX_REC_BASES] = {strlen(other), strlen(a), 0, 0}, n = 0;
    char hx[17], buf[512], *out;
    cJSON *d;

    snprintf(hx, sizeof(hx), "%016llx", (unsigned long long)ax_fnv1a(a, strlen(a), AX_FNV1A_INIT));
    /* head: {"messages":[1,2,3 (18 bytes), mid: ,4, tail: ],"tools":"T"} (14) */
    snprintf(buf, sizeof(buf), "{\"base\":\"%s\",\"head\":18,\"tail\":14,\"mid\":\",4\"}", hx);
    d = parse(buf);
    out = ax_rec_rebuild(d, prevs, lens, NULL, AX_REC_BASES, &n);
    CHECK(out != NULL);
    CHECK_STR(out, "{\"messages\":[1,2,3,4],\"tools\":\"T\"}");
    CHECK_INT(n, strlen(out));
    free(out);
    /* the base is found by its hash, wherever it sits in the ring */
    prevs[0] = (char *)a;
    lens[0] = strlen(a);
    prevs[1] = (char *)other;
    lens[1] = strlen(other);
    out = ax_rec_rebuild(d, prevs, lens, NULL, AX_REC_BASES, &n);
    CHECK(out != NULL);
    free(out);
    /* no body has that hash (a line was lost): refused, not rebuilt on the wrong base */
    prevs[0] = (char *)other;
    lens[0] = strlen(other);
    CHECK(ax_rec_rebuild(d, prevs, lens, NULL, AX_REC_BASES, &n) == NULL);
    cJSON_Delete(d);
    /* head + tail past the base: malformed */
    prevs[1] = (char *)a;
    lens[1] = strlen(a);
    snprintf(buf, sizeof(buf), "{\"base\":\"%s\",\"head\":30,\"tail\":13,\"mid\":\"\"}", hx);
    d = parse(buf);
    CHECK(ax_rec_rebuild(d, prevs, lens, NULL, AX_REC_BASES, &n) == NULL);
    cJSON_Delete(d);
    d = parse("{\"base\":5}");
    CHECK(ax_rec_rebuild(d, prevs, lens, NULL, AX_REC_BASES, &n) == NULL);
    cJSON_Delete(d);
    /* a snapshot needs no base */
    d = parse("{\"snapshot\":\"{\\\"a\\\":1}\"}");
    out = ax_rec_rebuild(d, NULL, NULL, NULL, 0, &n);
    CHECK(out != NULL);
    CHECK_STR(out, "{\"a\":1}");
    free(out);
    cJSON_Delete(d);
}

static int has_index(const cJSON *o, const char *key, int i)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, key))
    {
        if (cJSON_IsNumber(it) && (int)it->valuedouble == i)
            return 1;
    }
    return 0;
}

static void test_diff(void)
{
    cJSON *before = parse(
        "{\"model\":\"m\",\"max_tokens\":10,\"messages\":["
        "{\"role\":\"user\",\"content\":\"task\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"R\","
        "\"input\":{}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\","
        "\"content\":\"long output\"}]},"
        "{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"},"
        "{\"role\":\"user\",\"content\":\"last\"}]}");
    cJSON *masked = parse(
        "{\"model\":\"m\",\"max_tokens\":20,\"messages\":["
        "{\"role\":\"user\",\"content\":\"task\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"R\","
        "\"input\":{}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\","
        "\"content\":\"[masked]\"}]},"
        "{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"},"
        "{\"role\":\"user\",\"content\":\"last\"}],\"tool_choice\":{\"type\":\"auto\"}}");
    cJSON *cut = parse("{\"model\":\"m\",\"max_tokens\":10,\"messages\":["
                       "{\"role\":\"user\",\"content\":\"task\"},"
                       "{\"role\":\"user\",\"content\":\"b\"},"
                       "{\"role\":\"user\",\"content\":\"last\"}]}");
    cJSON *oa = parse("{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},"
                      "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"out\"}]}");
    cJSON *ob = parse("{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},"
                      "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"-\"}]}");
    cJSON *d;
    char *s;

    CHECK(ax_rec_diff(before, before) == NULL); /* nothing changed */
    d = ax_rec_diff(before, masked);
    CHECK(d != NULL);
    CHECK(has_index(d, "changed", 2));
    CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(d, "changed")), 1);
    s = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(d, "masked"));
    CHECK_STR(s, "[\"t1\"]");
    cJSON_free(s);
    s = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(d, "fields"));
    CHECK_STR(s, "[\"max_tokens\",\"tool_choice\"]");
    cJSON_free(s);
    CHECK(cJSON_GetObjectItemCaseSensitive(d, "removed") == NULL);
    cJSON_Delete(d);
    /* a turn removed: the tool call, its result and the answer after it */
    d = ax_rec_diff(before, cut);
    CHECK(d != NULL);
    CHECK(has_index(d, "removed", 1) && has_index(d, "removed", 2) && has_index(d, "removed", 3));
    CHECK_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(d, "removed")), 3);
    CHECK(cJSON_GetObjectItemCaseSensitive(d, "fields") == NULL);
    CHECK(cJSON_GetObjectItemCaseSensitive(d, "added") == NULL);
    cJSON_Delete(d);
    /* and back: the same messages added */
    d = ax_rec_diff(cut, before);
    CHECK(has_index(d, "added", 1) && has_index(d, "added", 3));
    cJSON_Delete(d);
    /* an OpenAI tool message masked */
    d = ax_rec_diff(oa, ob);
    s = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(d, "masked"));
    CHECK_STR(s, "[\"c1\"]");
    cJSON_free(s);
    cJSON_Delete(d);
    cJSON_Delete(before);
    cJSON_Delete(masked);
    cJSON_Delete(cut);
    cJSON_Delete(oa);
    cJSON_Delete(ob);
}

int main(void)
{
    test_rebuild();
    test_diff();
    return AX_TEST_DONE("test_record");
}
