/* api/jsonout.c: fast compact JSON text (see jsonout.h). */
#include "api/jsonout.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSONOUT_MAX_DEPTH 2048

struct buf {
    char *p;
    size_t len, cap;
    int failed;
};

static int reserve(struct buf *b, size_t more)
{
    if (b->failed)
        return -1;
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *np = realloc(b->p, cap);
    if (np == NULL) {
        b->failed = 1;
        return -1;
    }
    b->p = np;
    b->cap = cap;
    return 0;
}

static void put(struct buf *b, const char *s, size_t n)
{
    if (reserve(b, n) == 0) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
    }
}

static void put_char(struct buf *b, char c)
{
    if (reserve(b, 1) == 0)
        b->p[b->len++] = c;
}

/* As jansson: '"' and '\\' escaped, control characters as \b \f \n \r \t or
 * \u00XX, everything else (including '/' and UTF-8) as is. */
static void put_string(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF"; /* as jansson */
    size_t run = 0;

    if (reserve(b, n + 2) != 0)
        return;
    put_char(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': put(b, "\\\"", 2); break;
        case '\\': put(b, "\\\\", 2); break;
        case '\b': put(b, "\\b", 2); break;
        case '\f': put(b, "\\f", 2); break;
        case '\n': put(b, "\\n", 2); break;
        case '\r': put(b, "\\r", 2); break;
        case '\t': put(b, "\\t", 2); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(b, u, 6);
        }
        }
    }
    put(b, s + run, n - run);
    put_char(b, '"');
}

/* jansson's real format: %.17g, then ".0" when it reads as an integer. */
static void put_real(struct buf *b, double v)
{
    char tmp[64];
    int n;

    if (!isfinite(v)) {
        b->failed = 1;
        return;
    }
    n = snprintf(tmp, sizeof(tmp), "%.17g", v);
    if (n <= 0 || (size_t)n >= sizeof(tmp) - 3) {
        b->failed = 1;
        return;
    }
    if (strpbrk(tmp, ".e") == NULL) {
        tmp[n++] = '.';
        tmp[n++] = '0';
        tmp[n] = '\0';
    }
    /* no '+' and no leading zeros in the exponent: 1e+20 -> 1e20, 1e-05 -> 1e-5 */
    char *e = strchr(tmp, 'e');
    if (e != NULL) {
        char *start = e + 1, *end = start + 1;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, strlen(end) + 1);
            n = (int)strlen(tmp);
        }
    }
    put(b, tmp, (size_t)n);
}

static void put_value(struct buf *b, const json_t *v, int depth)
{
    char tmp[32];
    int n;

    if (depth > JSONOUT_MAX_DEPTH) {
        b->failed = 1;
        return;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *item;
        int first = 1;
        put_char(b, '{');
        json_object_foreach((json_t *)v, key, item) {
            if (!first)
                put_char(b, ',');
            first = 0;
            put_string(b, key, strlen(key));
            put_char(b, ':');
            put_value(b, item, depth + 1);
        }
        put_char(b, '}');
        break;
    }
    case JSON_ARRAY: {
        size_t count = json_array_size(v);
        put_char(b, '[');
        for (size_t i = 0; i < count; i++) {
            if (i > 0)
                put_char(b, ',');
            put_value(b, json_array_get(v, i), depth + 1);
        }
        put_char(b, ']');
        break;
    }
    case JSON_STRING:
        put_string(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        n = snprintf(tmp, sizeof(tmp), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        put(b, tmp, (size_t)n);
        break;
    case JSON_REAL:
        put_real(b, json_real_value(v));
        break;
    case JSON_TRUE:
        put(b, "true", 4);
        break;
    case JSON_FALSE:
        put(b, "false", 5);
        break;
    case JSON_NULL:
        put(b, "null", 4);
        break;
    }
}

char *api_json_encode(const json_t *doc, size_t *len)
{
    struct buf b = {0};

    if (doc == NULL)
        return NULL;
    put_value(&b, doc, 0);
    if (reserve(&b, 0) != 0 || b.failed) {
        free(b.p);
        return NULL;
    }
    b.p[b.len] = '\0';
    if (len != NULL)
        *len = b.len;
    return b.p;
}
