/* ax_test.h - what every unit test and benchmark shares: a failure counter, checks that
 * print file:line and go on, reading a fixture whole, and the summary line.
 *
 * Header-only (each test is one executable): include it once, from the test's own .c.
 *
 *     CHECK(n == 3);
 *     CHECKF(rc == 0, "%s: %s", name, err.message);
 *     CHECK_STR(cfg.host, "127.0.0.1");
 *     CHECK_INT(usage.input_tokens, 59);
 *     return AX_TEST_DONE("test_json");
 */
#ifndef AX_TEST_H
#define AX_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anthroxy_json.h"

/* Checks failed so far. A test that finds a failure by other means adds to it. */
static int ax_test_failures;

/* On failure prints "file:line: check failed: <cond>" and counts it. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            ax_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

/* CHECK with context: on failure also prints the printf-style message after the condition. */
#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            ax_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

/* Two strings equal; NULL on either side fails. Prints both values. */
#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                                     \
            fprintf(stderr, "%s:%d: %s is \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a,      \
                    a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                       \
            ax_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

/* Two integers equal (compared as long long). Prints both values. */
#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            fprintf(stderr, "%s:%d: %s is %lld, expected %lld\n", __FILE__, __LINE__, #a, a_, b_); \
            ax_test_failures++;                                                                    \
        }                                                                                          \
    } while (0)

/* Reads the file at path whole. Returns a malloc'ed buffer with a NUL after the content
 * (which may itself hold NULs) and its length in *len (len may be NULL), or NULL when the
 * file cannot be opened or read, printing nothing. */
static inline char *ax_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *p = NULL;
    long n;

    if (f == NULL)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (p = malloc((size_t)n + 1)) != NULL) {
        if (fread(p, 1, (size_t)n, f) == (size_t)n) {
            p[n] = '\0';
            if (len != NULL)
                *len = (size_t)n;
        } else {
            free(p);
            p = NULL;
        }
    }
    fclose(f);
    return p;
}

/* Reads and parses the JSON file at path with ax_json_parse (as the server parses bodies:
 * integers past 2^53 exact, escaped NULs neutralised). Returns the tree, the caller's to
 * cJSON_Delete; NULL when the file cannot be read (silently: optional fixtures are probed
 * this way) or does not parse (printing "path: reason" to stderr). */
static inline cJSON *ax_test_load_json(const char *path)
{
    struct ax_error err;
    size_t n;
    char *text = ax_test_read_file(path, &n);
    cJSON *v;

    if (text == NULL)
        return NULL;
    memset(&err, 0, sizeof(err));
    v = ax_json_parse(text, n, &err);
    if (v == NULL)
        fprintf(stderr, "%s: %s\n", path, err.message);
    free(text);
    return v;
}

/* Prints "name: ok" to stdout, or "name: N failed" to stderr; returns the exit code. */
static inline int ax_test_done(const char *name)
{
    if (ax_test_failures != 0) {
        fprintf(stderr, "%s: %d failed\n", name, ax_test_failures);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

/* `return AX_TEST_DONE("test_x");` at the end of main. */
#define AX_TEST_DONE(name) ax_test_done(name)

#endif
