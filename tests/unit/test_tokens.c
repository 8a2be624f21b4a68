/* test_tokens.c - the raw token estimator: the per-run rules of ax_tokens_text, JSON walking
 * consistent with the printed text, image sizes from headers, message and request totals on
 * Claude Code's recorded requests. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_json.h"
#include "anthroxy_tokens.h"
#include "ax_test.h"

static int64_t tt(const char *s)
{
    return ax_tokens_text(s, strlen(s));
}

#define TEXT_IS(s, want)                                                                           \
    do {                                                                                           \
        int64_t got_ = tt(s);                                                                      \
        CHECKF(got_ == (want), "'%s': %lld, expected %lld", s, (long long)got_,                    \
               (long long)(want));                                                                 \
    } while (0)

static void test_text_rules(void)
{
    TEXT_IS("", 0);
    TEXT_IS("hello", 1);
    TEXT_IS(" hello", 1); /* one space merges into the word */
    TEXT_IS("hello world", 2);
    TEXT_IS("The quick brown fox jumps over the lazy dog.", 10);
    TEXT_IS("internationalization", 3); /* 20 letters: 7 per token */
    TEXT_IS("additionalProperties", 2); /* camelCase: two words */
    TEXT_IS("getHTTPResponse", 3);      /* get | HTTPResponse (12) */
    TEXT_IS("input_schema", 2);         /* '_' merges into "schema" */
    TEXT_IS("12345", 3);                /* two digits per token */
    TEXT_IS("{\"", 1);                  /* punctuation: three per token */
    TEXT_IS("\":\"", 1);
    TEXT_IS("\"},{\"", 2);
    TEXT_IS("{\"type\":\"object\"}", 5); /* {" type ":" object "} */
    TEXT_IS("a  b", 3);                  /* a, one space, " b" */
    TEXT_IS("a\n    b", 4);              /* a, \n, indentation, " b" */
    TEXT_IS("x;\n", 2);                  /* the line end stays with ';' */
    TEXT_IS("\n\n", 1);
    TEXT_IS("   ", 1);
    TEXT_IS("\xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c", 4); /* 4 CJK ideographs */
    TEXT_IS("\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82", 3); /* 6 Cyrillic letters */
    TEXT_IS("\xf0\x9f\x98\x80", 1);                                 /* one emoji */
    TEXT_IS("\xff\xfe", 2);                                         /* invalid bytes */
    TEXT_IS("caf\xc3\xa9", 1);  /* accented letters belong to the word */
    TEXT_IS("\xe2\x80\x94", 1); /* an em dash */
    /* a multi-byte character cut at the end still counts once */
    TEXT_IS("\xe4\xbd", 1);
    TEXT_IS("1 2", 3);       /* a lone space before a digit is a token */
    TEXT_IS("a ", 2);        /* and so is one at the end */
    TEXT_IS("x   \n  y", 4); /* x, spaces and line end (one run), indentation, " y" */
    /* long runs: one more token per 16 whitespace characters */
    TEXT_IS("a                                  b", 5); /* a, 33 spaces (3), " b" */
}

static void test_prose_ratio(void)
{
    static const char prose[] =
        "Use this tool when you need to read a file from the local filesystem. You can access "
        "any file directly by using this tool. Assume this tool is able to read all files on "
        "the machine. If the user provides a path to a file, assume that path is valid. It is "
        "okay to read a file that does not exist; an error will be returned.";
    int64_t words = 0, t = tt(prose);
    const char *p;

    for (p = prose; *p; p++)
        words += *p == ' ';
    words++;
    /* real BPE tokenizers spend 1.1 to 1.4 tokens per English word */
    CHECKF(t >= words * 11 / 10 && t <= words * 14 / 10, "%lld tokens for %lld words", (long long)t,
           (long long)words);
}

static cJSON *load(const char *name)
{
    char path[512];

    snprintf(path, sizeof(path), "%s/claude-code/%s", AX_FIXTURES, name);
    return ax_test_load_json(path);
}

/* Walking a tree must agree with estimating its printed text. */
static void test_json_walk(void)
{
    cJSON *req = load("first-turn.json");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools"), *t;
    int64_t walk, text;
    char *printed;

    CHECK(req != NULL);
    if (req == NULL)
        return;
    printed = cJSON_PrintUnformatted(tools);
    walk = ax_tokens_json(tools);
    text = tt(printed);
    CHECKF(walk * 100 >= text * 90 && walk * 100 <= text * 110, "walk %lld, text %lld",
           (long long)walk, (long long)text);
    cJSON_free(printed);
    cJSON_ArrayForEach(t, tools) /* and tool by tool, within 15 % */
    {
        const cJSON *schema = cJSON_GetObjectItemCaseSensitive(t, "input_schema");
        printed = cJSON_PrintUnformatted(schema);
        walk = ax_tokens_json(schema);
        text = tt(printed);
        CHECKF(walk * 100 >= text * 85 && walk * 100 <= text * 115, "%s: walk %lld, text %lld",
               cJSON_GetObjectItemCaseSensitive(t, "name")->valuestring, (long long)walk,
               (long long)text);
        cJSON_free(printed);
    }
    cJSON_Delete(req);
}

/* Numbers past 2^63 (or inf, from 1e999999) in content or tool input: counted like any long
 * number (3 tokens), with no out-of-range cast (the sanitizer build checks float-cast-overflow). */
static void test_huge_numbers(void)
{
    static const char *const nums[] = {"1e999999", "-1e999999", "9.3e18", "1e300", "-9.3e18",
                                       "18446744073709551616.5"};
    size_t i;

    for (i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        cJSON *n = cJSON_Parse(nums[i]);
        CHECKF(cJSON_IsNumber(n) && ax_tokens_json(n) == 3, "%s: %lld", nums[i],
               (long long)ax_tokens_json(n));
        cJSON_Delete(n);
    }
}

static void test_requests(void)
{
    cJSON *first = load("first-turn.json"), *after = load("after-tool-call.json");
    const cJSON *m;
    int64_t a, b, sum = 3, tools_cost;
    cJSON *no_tools;

    CHECK(first != NULL && after != NULL);
    if (first == NULL || after == NULL)
        goto done;
    a = ax_tokens_request(first);
    b = ax_tokens_request(after);
    /* Claude Code's fixed prefix (24 tools and its system prompt) is about 20k tokens */
    CHECKF(a >= 15000 && a <= 25000, "first turn: %lld", (long long)a);
    CHECKF(b > a, "after the tool call %lld <= first turn %lld", (long long)b, (long long)a);
    /* the fixed part: system and tools, most of Claude Code's first request */
    sum = ax_tokens_fixed(first);
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(first, "messages"))
    {
        sum += ax_tokens_message(m);
    }
    CHECKF(sum == a, "fixed + messages %lld != request %lld", (long long)sum, (long long)a);
    CHECKF(ax_tokens_fixed(first) > a * 9 / 10, "fixed part %lld of %lld",
           (long long)ax_tokens_fixed(first), (long long)a);
    sum = 3;
    /* the total is the sum of its parts */
    no_tools = cJSON_Duplicate(first, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(no_tools, "tools");
    tools_cost = a - ax_tokens_request(no_tools);
    CHECKF(tools_cost > 10000, "tools: %lld", (long long)tools_cost);
    cJSON_DeleteItemFromObjectCaseSensitive(no_tools, "system");
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(no_tools, "messages"))
    {
        sum += ax_tokens_message(m);
    }
    CHECK(ax_tokens_request(no_tools) == sum);
    cJSON_Delete(no_tools);
done:
    cJSON_Delete(first);
    cJSON_Delete(after);
}

static int64_t msg_tokens(const char *json)
{
    cJSON *m = cJSON_Parse(json);
    int64_t t = ax_tokens_message(m);
    cJSON_Delete(m);
    return t;
}

static void test_messages(void)
{
    int64_t t;

    CHECK(msg_tokens("{\"role\":\"user\",\"content\":\"hello world\"}") == 4 + 2);
    CHECK(msg_tokens("{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hello\"},"
                     "{\"type\":\"text\",\"text\":\"world\"}]}") == 4 + 2);
    /* tool_result content, nested blocks included */
    t = msg_tokens("{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":"
                   "\"t\",\"content\":[{\"type\":\"text\",\"text\":\"one two three\"}]}]}");
    CHECKF(t == 4 + 6 + 3, "%lld", (long long)t);
    t = msg_tokens("{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":"
                   "\"t\",\"content\":\"one two three\"}]}");
    CHECKF(t == 4 + 6 + 3, "%lld", (long long)t);
    /* tool_use: name and input JSON */
    t = msg_tokens("{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"x\","
                   "\"name\":\"Write\",\"input\":{\"path\":\"a\"}}]}");
    CHECKF(t == 4 + 10 + 1 + (1 + 2 + 1 + 1), "%lld", (long long)t);
    /* thinking counts, redacted_thinking is never sent */
    CHECK(msg_tokens("{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":"
                     "\"hmm ok\",\"signature\":\"zzzzzzzzzzzzzzzzzzzz\"}]}") == 4 + 2);
    CHECK(msg_tokens("{\"role\":\"assistant\",\"content\":[{\"type\":\"redacted_thinking\","
                     "\"data\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}]}") == 4);
    /* a PDF is sent as a short note, a text document and a search result as their text */
    CHECK(msg_tokens("{\"role\":\"user\",\"content\":[{\"type\":\"document\",\"source\":{"
                     "\"type\":\"base64\",\"media_type\":\"application/pdf\",\"data\":"
                     "\"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\"}}]}") ==
          4 + 12);
    CHECK(msg_tokens("{\"role\":\"user\",\"content\":[{\"type\":\"document\",\"title\":\"Notes\","
                     "\"source\":{\"type\":\"text\",\"data\":\"one two\"}}]}") == 4 + 1 + 2);
    CHECK(msg_tokens("{\"role\":\"user\",\"content\":[{\"type\":\"search_result\",\"title\":"
                     "\"T\",\"source\":\"src\",\"content\":[{\"type\":\"text\",\"text\":"
                     "\"one two\"}]}]}") == 4 + 1 + 1 + 2);
    CHECK(ax_tokens_message(NULL) == 0);
}

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64(const unsigned char *in, size_t n, char *out)
{
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64chars[v >> 18];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = b64chars[(v >> 6) & 63];
        out[o++] = b64chars[v & 63];
    }
    out[o] = '\0'; /* callers pass multiples of 3 */
}

static int64_t image_tokens(const unsigned char *hdr, size_t n)
{
    char data[256], json[400];
    cJSON *src;
    int64_t t;

    b64(hdr, n, data);
    snprintf(json, sizeof(json), "{\"type\":\"base64\",\"media_type\":\"x\",\"data\":\"%s\"}",
             data);
    src = cJSON_Parse(json);
    t = ax_tokens_image(src);
    cJSON_Delete(src);
    return t;
}

static void test_images(void)
{
    unsigned char png[27] = {0x89, 'P',  'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A, 0,
                             0,    0,    13,  'I', 'H',  'D',  'R',  0,    0,
                             0x03, 0xE8, 0,   0,   0x01, 0xF4, 8,    2,    0}; /* 1000x500 */
    unsigned char big[27];
    unsigned char gif[12] = {'G', 'I', 'F', '8', '9', 'a', 100, 0, 100, 0, 0, 0};
    unsigned char jpg[33] = {0xFF, 0xD8, 0xFF, 0xE0, 0,    16, 'J', 'F', 'I',  'F',  0, 1,
                             1,    0,    0,    1,    0,    1,  0,   0,   0xFF, 0xC0, 0, 17,
                             8,    0x01, 0xE0, 0x02, 0x80, 3,  0,   0,   0}; /* 640x480 after an
                                                                                APP0 segment */
    cJSON *url;
    int64_t t;

    t = image_tokens(png, sizeof(png));
    CHECKF(t == 667, "png 1000x500: %lld", (long long)t); /* 500000 / 750 */
    memcpy(big, png, sizeof(big));
    big[18] = 0x07, big[19] = 0xD0, big[22] = 0x03, big[23] = 0xE8; /* 2000x1000 */
    t = image_tokens(big, sizeof(big));
    CHECKF(t == AX_TOKENS_IMAGE_MAX, "png 2000x1000: %lld", (long long)t);
    t = image_tokens(gif, sizeof(gif));
    CHECKF(t == 14, "gif 100x100: %lld", (long long)t);
    t = image_tokens(jpg, sizeof(jpg));
    CHECKF(t == 410, "jpeg 640x480: %lld", (long long)t);
    url = cJSON_Parse("{\"type\":\"url\",\"url\":\"https://example.com/x.png\"}");
    CHECK(ax_tokens_image(url) == AX_TOKENS_IMAGE_MAX);
    cJSON_Delete(url);
    /* a header cut short (only the PNG signature) is not an image size (and no UB) */
    url = cJSON_Parse("{\"type\":\"base64\",\"data\":\"iVBORw0KGgo=\"}");
    CHECK(ax_tokens_image(url) == AX_TOKENS_IMAGE_MAX);
    cJSON_Delete(url);
    url = cJSON_Parse("{\"type\":\"base64\",\"data\":\"not an image\"}");
    CHECK(ax_tokens_image(url) == AX_TOKENS_IMAGE_MAX);
    cJSON_Delete(url);
}

/* A deferred tool (defer_loading) is not in the prompt until referenced: not counted. */
static void test_deferred_tools(void)
{
    cJSON *one = cJSON_Parse("[{\"name\":\"Read\",\"description\":\"Read a file\","
                             "\"input_schema\":{\"type\":\"object\"}}]");
    cJSON *two = cJSON_Parse("[{\"name\":\"Read\",\"description\":\"Read a file\","
                             "\"input_schema\":{\"type\":\"object\"}},{\"name\":\"mcp_big\","
                             "\"description\":\"a long description of a tool loaded on demand\","
                             "\"input_schema\":{\"type\":\"object\",\"properties\":{\"q\":"
                             "{\"type\":\"string\"}}},\"defer_loading\":true}]");
    cJSON *sent = cJSON_Parse("[{\"name\":\"Read\",\"description\":\"Read a file\","
                              "\"input_schema\":{\"type\":\"object\"}},{\"name\":\"mcp_big\","
                              "\"description\":\"a long description of a tool loaded on demand\","
                              "\"input_schema\":{\"type\":\"object\",\"properties\":{\"q\":"
                              "{\"type\":\"string\"}}}}]");

    CHECK(one && two && sent);
    CHECK_INT(ax_tokens_tools(two), ax_tokens_tools(one));
    CHECK(ax_tokens_tools(sent) > ax_tokens_tools(one));
    cJSON_Delete(one);
    cJSON_Delete(two);
    cJSON_Delete(sent);
}

int main(void)
{
    test_text_rules();
    test_prose_ratio();
    test_json_walk();
    test_huge_numbers();
    test_requests();
    test_messages();
    test_images();
    test_deferred_tools();
    return AX_TEST_DONE("test_tokens");
}
