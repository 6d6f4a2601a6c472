/* api/jsonout.c: compact JSON text (see jsonout.h). */
#include "api/jsonout.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/jsonword.h"

#define JSONOUT_MAX_DEPTH 2048

static int grow(struct api_jw *w, size_t more);

/* Room for MORE bytes and a NUL; the common case inline, growing apart. */
static inline int reserve(struct api_jw *w, size_t more)
{
    if (__builtin_expect(!w->failed && w->len + more + 1 <= w->cap, 1))
        return 0;
    return grow(w, more);
}

static int grow(struct api_jw *w, size_t more)
{
    if (w->failed)
        return -1;
    size_t cap = w->cap ? w->cap : 512;
    while (cap < w->len + more + 1)
        cap *= 2;
    char *np = realloc(w->p, cap);
    if (np == NULL) {
        w->failed = 1;
        return -1;
    }
    w->p = np;
    w->cap = cap;
    return 0;
}

static inline void put(struct api_jw *w, const char *s, size_t n)
{
    if (reserve(w, n) == 0) {
        memcpy(w->p + w->len, s, n);
        w->len += n;
    }
}

static inline void put_char(struct api_jw *w, char c)
{
    if (reserve(w, 1) == 0)
        w->p[w->len++] = c;
}

/* As jansson: '"' and '\\' escaped, control characters as \b \f \n \r \t or
 * \u00XX, everything else (including '/' and UTF-8) as is. */
static void put_string(struct api_jw *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF"; /* as jansson */
    size_t run = 0, i = 0;

    if (reserve(w, n + 2) != 0)
        return;
    char *o = w->p + w->len + 1;
    o[-1] = '"';
    /* eight bytes at a time while none needs an escape, then byte by byte
     * (room: n + 2) */
    for (uint64_t x; i + 8 <= n && (memcpy(&x, s + i, 8), api_json_escaped_bytes(x) == 0); i += 8)
        memcpy(o + i, &x, 8);
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\')
            break;
        o[i] = (char)c;
    }
    if (i == n) {
        o[n] = '"';
        w->len += n + 2;
        return;
    }
    /* from the first byte that needs an escape on */
    w->len += 1 + i;
    run = i;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(w, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': put(w, "\\\"", 2); break;
        case '\\': put(w, "\\\\", 2); break;
        case '\b': put(w, "\\b", 2); break;
        case '\f': put(w, "\\f", 2); break;
        case '\n': put(w, "\\n", 2); break;
        case '\r': put(w, "\\r", 2); break;
        case '\t': put(w, "\\t", 2); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(w, u, 6);
        }
        }
    }
    put(w, s + run, n - run);
    put_char(w, '"');
}

/* V in decimal into OUT (at least 21 bytes); returns the length. */
static size_t format_int(char *out, long long v)
{
    char tmp[24];
    size_t n = 0, len = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        out[len++] = '-';
    while (n > 0)
        out[len++] = tmp[--n];
    return len;
}

/* jansson's real format: %.17g, then ".0" when it reads as an integer. */
static void put_real(struct api_jw *w, double v)
{
    char tmp[64];
    int n;

    if (!isfinite(v)) {
        w->failed = 1;
        return;
    }
    /* the common case (e.g. a duration of whole milliseconds), without printf:
     * %.17g prints an integral value below 1e15 as its digits */
    if (fabs(v) < 1e15 && v == (double)(long long)v && !(v == 0 && signbit(v))) {
        size_t len = format_int(tmp, (long long)v);
        tmp[len++] = '.';
        tmp[len++] = '0';
        put(w, tmp, len);
        return;
    }
    n = snprintf(tmp, sizeof(tmp), "%.17g", v);
    if (n <= 0 || (size_t)n >= sizeof(tmp) - 3) {
        w->failed = 1;
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
    put(w, tmp, (size_t)n);
}

static void put_value(struct api_jw *w, const json_t *v, int depth)
{
    char tmp[32];

    if (depth > JSONOUT_MAX_DEPTH) {
        w->failed = 1;
        return;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *item;
        int first = 1;
        put_char(w, '{');
        json_object_foreach((json_t *)v, key, item) {
            if (!first)
                put_char(w, ',');
            first = 0;
            put_string(w, key, strlen(key));
            put_char(w, ':');
            put_value(w, item, depth + 1);
        }
        put_char(w, '}');
        break;
    }
    case JSON_ARRAY: {
        size_t count = json_array_size(v);
        put_char(w, '[');
        for (size_t i = 0; i < count; i++) {
            if (i > 0)
                put_char(w, ',');
            put_value(w, json_array_get(v, i), depth + 1);
        }
        put_char(w, ']');
        break;
    }
    case JSON_STRING:
        put_string(w, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        put(w, tmp, format_int(tmp, (long long)json_integer_value(v)));
        break;
    case JSON_REAL:
        put_real(w, json_real_value(v));
        break;
    case JSON_TRUE:
        put(w, "true", 4);
        break;
    case JSON_FALSE:
        put(w, "false", 5);
        break;
    case JSON_NULL:
        put(w, "null", 4);
        break;
    }
}

/* ------------------------------------------------------------------ */
/* the writer                                                          */

/* Before a value: its comma, unless it is the first item or a key's value. */
static void before_value(struct api_jw *w)
{
    if (w->after_key) {
        w->after_key = 0;
        return;
    }
    if (w->depth == 0)
        return;
    uint64_t bit = 1ULL << (w->depth - 1);
    if (w->has_items & bit)
        put_char(w, ',');
    w->has_items |= bit;
}

static void open_container(struct api_jw *w, char c)
{
    before_value(w);
    if (w->depth >= API_JW_MAX_DEPTH) {
        w->failed = 1;
        return;
    }
    put_char(w, c);
    w->depth++;
    w->has_items &= ~(1ULL << (w->depth - 1));
}

static void close_container(struct api_jw *w, char c)
{
    if (w->depth == 0) {
        w->failed = 1;
        return;
    }
    put_char(w, c);
    w->depth--;
}

void api_jw_reset(struct api_jw *w)
{
    w->len = 0;
    w->failed = 0;
    w->depth = 0;
    w->has_items = 0;
    w->after_key = 0;
}

void api_jw_free(struct api_jw *w)
{
    free(w->p);
    memset(w, 0, sizeof(*w));
}

char *api_jw_finish(struct api_jw *w, size_t *len)
{
    char *text;
    if (reserve(w, 0) != 0) {
        api_jw_free(w);
        return NULL;
    }
    w->p[w->len] = '\0';
    if (len != NULL)
        *len = w->len;
    text = w->p;
    memset(w, 0, sizeof(*w));
    return text;
}

void api_jw_object(struct api_jw *w)
{
    open_container(w, '{');
}

void api_jw_object_end(struct api_jw *w)
{
    close_container(w, '}');
}

void api_jw_array(struct api_jw *w)
{
    open_container(w, '[');
}

void api_jw_array_end(struct api_jw *w)
{
    close_container(w, ']');
}

void api_jw_keyn(struct api_jw *w, const char *key, size_t n)
{
    before_value(w);
    if (reserve(w, n + 3) != 0)
        return;
    w->p[w->len++] = '"';
    memcpy(w->p + w->len, key, n);
    w->len += n;
    w->p[w->len++] = '"';
    w->p[w->len++] = ':';
    w->after_key = 1;
}

void api_jw_string(struct api_jw *w, const char *s, size_t n)
{
    before_value(w);
    put_string(w, s, n);
}

void api_jw_cstring(struct api_jw *w, const char *s)
{
    if (s == NULL)
        api_jw_null(w);
    else
        api_jw_string(w, s, strlen(s));
}

void api_jw_int(struct api_jw *w, long long v)
{
    char tmp[24];
    before_value(w);
    put(w, tmp, format_int(tmp, v));
}

void api_jw_int_string(struct api_jw *w, long long v)
{
    char tmp[24];
    size_t n;
    before_value(w);
    tmp[0] = '"';
    n = 1 + format_int(tmp + 1, v);
    tmp[n++] = '"';
    put(w, tmp, n);
}

void api_jw_real(struct api_jw *w, double v)
{
    before_value(w);
    put_real(w, v);
}

void api_jw_bool(struct api_jw *w, int v)
{
    before_value(w);
    if (v)
        put(w, "true", 4);
    else
        put(w, "false", 5);
}

void api_jw_null(struct api_jw *w)
{
    before_value(w);
    put(w, "null", 4);
}

void api_jw_json(struct api_jw *w, const json_t *v)
{
    if (v == NULL) {
        w->failed = 1;
        return;
    }
    before_value(w);
    put_value(w, v, 0);
}

void api_jw_raw(struct api_jw *w, const char *json, size_t n)
{
    before_value(w);
    put(w, json, n);
}

void api_jw_append(struct api_jw *w, const char *s, size_t n)
{
    put(w, s, n);
}

void api_jw_mark(const struct api_jw *w, struct api_jw_mark *m)
{
    m->len = w->len;
    m->depth = w->depth;
    m->has_items = w->has_items;
    m->after_key = w->after_key;
}

void api_jw_rewind(struct api_jw *w, const struct api_jw_mark *m)
{
    if (m->len <= w->len)
        w->len = m->len;
    w->depth = m->depth;
    w->has_items = m->has_items;
    w->after_key = m->after_key;
}

int api_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        /* ASCII eight bytes at a time: the usual text */
        while (i + 8 <= n) {
            uint64_t chunk;
            memcpy(&chunk, s + i, 8);
            if (chunk & 0x8080808080808080ULL)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (len == 0 || i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        if (len == 2 && c < 0xc2)
            return 0; /* overlong */
        if (len == 3) {
            unsigned cp = ((c & 0x0fu) << 12) | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3fu);
            if (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        }
        if (len == 4) {
            unsigned cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3fu) << 12) | ((s[i + 2] & 0x3fu) << 6) |
                          (s[i + 3] & 0x3fu);
            if (cp < 0x10000 || cp > 0x10ffff)
                return 0;
        }
        i += len;
    }
    return 1;
}

char *api_json_encode(const json_t *doc, size_t *len)
{
    struct api_jw w = API_JW_INIT;

    if (doc == NULL)
        return NULL;
    api_jw_json(&w, doc);
    return api_jw_finish(&w, len);
}
