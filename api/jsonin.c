/* api/jsonin.c: JSON text into one read-only document (see jsonin.h). */
#include "api/jsonin.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/jsonword.h"
#include "api/names.h"

#define JSONIN_MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH */

struct api_jv {
    unsigned char type;
    size_t n; /* a string's length; an array's items; an object's members */
    union {
        long long i;
        double d;
        const char *s;              /* a string, once parsed */
        const struct api_jv *kids;  /* a container's first child, once parsed (objects: key, value, ...) */
        size_t at;                  /* while parsing: a string's offset in chars, a container's first child's index */
    } u;
};

struct api_jdoc {
    struct api_jv *nodes; /* every value but the root's own slot is some container's child */
    size_t nnodes, cap;
    char *chars; /* string texts, each NUL-terminated */
    size_t nchars, ccap;
    const struct api_jv *root;
    /* A small text's nodes and chars start in the same allocation as the
     * document, sized for it: one malloc per parse instead of five
     * (INLINE_TEXT_MAX). Growing beyond moves them to their own. */
    int nodes_inline, chars_inline;
};

/* texts up to this size get their first nodes and chars with the document */
#define INLINE_TEXT_MAX 4096
/* the parser's stack starts on the C stack */
#define LOCAL_STACK 32

struct parser {
    const unsigned char *start, *p, *end;
    struct api_jdoc *doc;
    struct api_jv *stack; /* children of the containers being parsed, innermost last */
    size_t sn, scap;
    int stack_heap; /* stack was allocated (else it is the caller's LOCAL_STACK array) */
    char *msg;
    size_t msg_cap;
};

static int fail(struct parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct parser *ps, const char *fmt, ...)
{
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (ps->msg != NULL && ps->msg_cap > 0)
        snprintf(ps->msg, ps->msg_cap, "%s at byte %zu", what, (size_t)(ps->p - ps->start));
    return -1;
}

static inline void skip_ws(struct parser *ps)
{
    /* compact JSON has none: one test for the usual case */
    if (ps->p < ps->end && *ps->p > ' ')
        return;
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int push(struct parser *ps, const struct api_jv *v)
{
    if (ps->sn == ps->scap) {
        size_t cap = ps->scap ? ps->scap * 2 : 64;
        struct api_jv *ns = ps->stack_heap ? realloc(ps->stack, cap * sizeof(*ns)) : malloc(cap * sizeof(*ns));
        if (ns == NULL)
            return fail(ps, "out of memory");
        if (!ps->stack_heap)
            memcpy(ns, ps->stack, ps->sn * sizeof(*ns));
        ps->stack = ns;
        ps->scap = cap;
        ps->stack_heap = 1;
    }
    ps->stack[ps->sn++] = *v;
    return 0;
}

/* Moves the stack's top COUNT values into the document, in order; the
 * index of the first in *FIRST. */
static int settle(struct parser *ps, size_t count, size_t *first)
{
    struct api_jdoc *d = ps->doc;
    *first = d->nnodes;
    if (count == 0)
        return 0; /* an empty container: nothing to move (and maybe no array yet) */
    if (d->nnodes + count > d->cap) {
        size_t cap = d->cap ? d->cap : 32;
        while (cap < d->nnodes + count)
            cap *= 2;
        struct api_jv *nn = d->nodes_inline ? malloc(cap * sizeof(*nn)) : realloc(d->nodes, cap * sizeof(*nn));
        if (nn == NULL)
            return fail(ps, "out of memory");
        if (d->nodes_inline)
            memcpy(nn, d->nodes, d->nnodes * sizeof(*nn));
        d->nodes = nn;
        d->cap = cap;
        d->nodes_inline = 0;
    }
    memcpy(d->nodes + d->nnodes, ps->stack + ps->sn - count, count * sizeof(*d->nodes));
    d->nnodes += count;
    ps->sn -= count;
    return 0;
}

static int grow_chars(struct parser *ps, size_t more);

/* Room for MORE chars; the common case inline (a small text's chars were
 * sized for it by new_doc), growing apart. */
static inline int room_for_chars(struct parser *ps, size_t more)
{
    const struct api_jdoc *d = ps->doc;
    if (__builtin_expect(d->nchars + more <= d->ccap, 1))
        return 0;
    return grow_chars(ps, more);
}

static int grow_chars(struct parser *ps, size_t more)
{
    struct api_jdoc *d = ps->doc;
    size_t cap = d->ccap ? d->ccap : 64;
    while (cap < d->nchars + more)
        cap *= 2;
    char *nc = d->chars_inline ? malloc(cap) : realloc(d->chars, cap);
    if (nc == NULL)
        return fail(ps, "out of memory");
    if (d->chars_inline)
        memcpy(nc, d->chars, d->nchars);
    d->chars = nc;
    d->ccap = cap;
    d->chars_inline = 0;
    return 0;
}

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = api_hex_digit(p[i]);
        if (h < 0)
            return -1;
        v = v << 4 | (unsigned)h;
    }
    *out = v;
    return 0;
}

/* The length of the valid UTF-8 sequence at P (before END), or 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || (size_t)(end - p) < len)
        return 0;
    for (size_t k = 1; k < len; k++)
        if ((p[k] & 0xc0) != 0x80)
            return 0;
    if (len == 2 && c < 0xc2)
        return 0;
    if (len == 3) {
        unsigned cp = ((c & 0x0fu) << 12) | ((p[1] & 0x3fu) << 6) | (p[2] & 0x3fu);
        if (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
    }
    if (len == 4) {
        unsigned cp = ((c & 0x07u) << 18) | ((p[1] & 0x3fu) << 12) | ((p[2] & 0x3fu) << 6) | (p[3] & 0x3fu);
        if (cp < 0x10000 || cp > 0x10ffff)
            return 0;
    }
    return len;
}

/* 1 for the bytes a string holds as they are: printable ASCII but '"' and '\\' */
static const unsigned char plain_char[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

/* The bytes of X (eight, loaded from memory) that are not plain_char: the
 * escaped ones and those with the high bit (UTF-8, checked byte by byte);
 * only the lowest flag is exact. */
static inline uint64_t special_bytes(uint64_t x)
{
    return api_json_escaped_bytes(x) | (x & API_JSON_WORD_HIGHS);
}

/* A string at P (its opening quote) into the document's chars. Its text
 * is never longer than the rest of the input (an escape decodes shorter
 * than it is written), so room is made once, up front, and the bytes are
 * copied as they are scanned: most strings are a few plain bytes, where a
 * memcpy call per run cost more than the copy. */
static int parse_string(struct parser *ps, struct api_jv *out)
{
    struct api_jdoc *d = ps->doc;
    const unsigned char *p = ps->p + 1, *end = ps->end;
    size_t off = d->nchars;

    if (room_for_chars(ps, (size_t)(end - p) + 5) != 0)
        return -1;
    char *o = d->chars + off;
    for (;;) {
        /* eight bytes at a time, copied whole (the room allows it: the text
         * so far is no longer than its source, and eight more bytes of
         * source follow) and kept up to the first special one */
        while (end - p >= 8) {
            uint64_t x, special;
            memcpy(&x, p, 8);
            memcpy(o, &x, 8);
            if ((special = special_bytes(x)) != 0) {
                size_t plain = (size_t)__builtin_ctzll(special) >> 3;
                o += plain;
                p += plain;
                break;
            }
            o += 8;
            p += 8;
        }
        while (p < end && plain_char[*p])
            *o++ = (char)*p++;
        if (p >= end) {
            ps->p = p;
            return fail(ps, "premature end of input in a string");
        }
        unsigned char c = *p;
        if (c == '"') {
            p++;
            break;
        }
        ps->p = p; /* for an error's position */
        if (c < 0x20)
            return fail(ps, "control character 0x%x in a string", c);
        if (c >= 0x80) {
            size_t n = utf8_len(p, end);
            if (n == 0)
                return fail(ps, "invalid UTF-8 in a string");
            memcpy(o, p, n);
            o += n;
            p += n;
            continue;
        }
        /* an escape */
        if (end - p < 2)
            return fail(ps, "premature end of input in a string");
        c = p[1];
        p += 2;
        ps->p = p;
        const char *simple = strchr("\"\\/bfnrt", c);
        if (c != '\0' && simple != NULL) {
            static const char decoded[] = "\"\\/\b\f\n\r\t";
            *o++ = decoded[simple - "\"\\/bfnrt"];
            continue;
        }
        if (c != 'u')
            return fail(ps, "invalid escape '\\%c' in a string", c >= 0x20 && c < 0x7f ? c : '?');
        unsigned cp, lo;
        if (end - p < 4 || hex4(p, &cp) != 0)
            return fail(ps, "invalid \\u escape in a string");
        p += 4;
        ps->p = p;
        if (cp >= 0xdc00 && cp <= 0xdfff)
            return fail(ps, "invalid Unicode '\\u%04X' (a low surrogate alone)", cp);
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
                return fail(ps, "invalid Unicode '\\u%04X' (a high surrogate alone)", cp);
            p += 6;
            ps->p = p;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (cp == 0)
            return fail(ps, "\\u0000 is not allowed in a string");
        if (cp < 0x80) {
            *o++ = (char)cp;
        } else if (cp < 0x800) {
            *o++ = (char)(0xc0 | cp >> 6);
            *o++ = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            *o++ = (char)(0xe0 | cp >> 12);
            *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
            *o++ = (char)(0x80 | (cp & 0x3f));
        } else {
            *o++ = (char)(0xf0 | cp >> 18);
            *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
            *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
            *o++ = (char)(0x80 | (cp & 0x3f));
        }
    }
    *o++ = '\0';
    ps->p = p;
    d->nchars = (size_t)(o - d->chars);
    out->type = API_JV_STRING;
    out->n = d->nchars - 1 - off;
    out->u.at = off;
    return 0;
}

static int parse_number(struct parser *ps, struct api_jv *out)
{
    const unsigned char *s = ps->p, *p = ps->p;
    int is_real = 0;
    char small[64], *buf = small;

    if (p < ps->end && *p == '-')
        p++;
    if (p >= ps->end || !(*p >= '0' && *p <= '9'))
        return fail(ps, "invalid number");
    if (*p == '0') {
        p++; /* "01": the 1 is what no container accepts next */
    } else {
        while (p < ps->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < ps->end && *p == '.') {
        is_real = 1;
        p++;
        if (p >= ps->end || !(*p >= '0' && *p <= '9'))
            return fail(ps, "invalid number (no digits after '.')");
        while (p < ps->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < ps->end && (*p == 'e' || *p == 'E')) {
        is_real = 1;
        p++;
        if (p < ps->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= ps->end || !(*p >= '0' && *p <= '9'))
            return fail(ps, "invalid number (no digits in the exponent)");
        while (p < ps->end && *p >= '0' && *p <= '9')
            p++;
    }
    size_t n = (size_t)(p - s);
    if (n >= sizeof(small) && (buf = malloc(n + 1)) == NULL)
        return fail(ps, "out of memory");
    memcpy(buf, s, n);
    buf[n] = '\0';
    errno = 0;
    if (is_real) {
        out->type = API_JV_REAL;
        out->u.d = strtod(buf, NULL);
        if (!isfinite(out->u.d)) {
            if (buf != small)
                free(buf);
            return fail(ps, "real number overflow");
        }
    } else {
        out->type = API_JV_INTEGER;
        out->u.i = strtoll(buf, NULL, 10);
        if (errno == ERANGE) {
            if (buf != small)
                free(buf);
            return fail(ps, "too big %sinteger", *s == '-' ? "negative " : "");
        }
    }
    if (buf != small)
        free(buf);
    out->n = 0;
    ps->p = p;
    return 0;
}

static int parse_value(struct parser *ps, int depth, struct api_jv *out);

static int parse_container(struct parser *ps, int depth, struct api_jv *out)
{
    int is_object = *ps->p == '{';
    char close = is_object ? '}' : ']';
    size_t base = ps->sn, count = 0, first;
    struct api_jv v;

    if (depth >= JSONIN_MAX_DEPTH)
        return fail(ps, "maximum parsing depth reached");
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
    } else {
        for (;;) {
            if (is_object) {
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != '"')
                    return fail(ps, count == 0 ? "string or '}' expected" : "string expected");
                if (parse_string(ps, &v) != 0 || push(ps, &v) != 0)
                    return -1;
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != ':')
                    return fail(ps, "':' expected");
                ps->p++;
            }
            if (parse_value(ps, depth + 1, &v) != 0 || push(ps, &v) != 0)
                return -1;
            count++;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == close) {
                ps->p++;
                break;
            }
            return fail(ps, "',' or '%c' expected", close);
        }
    }
    if (settle(ps, ps->sn - base, &first) != 0)
        return -1;
    out->type = is_object ? API_JV_OBJECT : API_JV_ARRAY;
    out->n = count;
    out->u.at = first;
    return 0;
}

static int literal(struct parser *ps, const char *word, unsigned char type, struct api_jv *out)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, "invalid token");
    ps->p += n;
    out->type = type;
    out->n = 0;
    out->u.i = 0;
    return 0;
}

static int parse_value(struct parser *ps, int depth, struct api_jv *out)
{
    skip_ws(ps);
    if (ps->p >= ps->end)
        return fail(ps, "premature end of input");
    switch (*ps->p) {
    case '{':
    case '[':
        return parse_container(ps, depth, out);
    case '"':
        return parse_string(ps, out);
    case 't':
        return literal(ps, "true", API_JV_TRUE, out);
    case 'f':
        return literal(ps, "false", API_JV_FALSE, out);
    case 'n':
        return literal(ps, "null", API_JV_NULL, out);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return parse_number(ps, out);
        return fail(ps, "invalid token");
    }
}

/* A document with room, in the same allocation, for the nodes and chars a
 * text of LEN bytes needs at most when it is small: a value takes at least
 * two bytes of text with its separator (one more for the root), and a
 * string's text, NUL included, is never longer than its quoted source. */
static struct api_jdoc *new_doc(size_t len)
{
    size_t nodes = 0, chars = 0;
    if (len <= INLINE_TEXT_MAX) {
        nodes = len / 2 + 2;
        chars = len + 8; /* room_for_chars asks for a little more than it uses */
    }
    size_t head = (sizeof(struct api_jdoc) + _Alignof(struct api_jv) - 1) / _Alignof(struct api_jv) *
                  _Alignof(struct api_jv);
    char *block = malloc(head + nodes * sizeof(struct api_jv) + chars);
    if (block == NULL)
        return NULL;
    struct api_jdoc *d = (struct api_jdoc *)block;
    memset(d, 0, sizeof(*d));
    if (nodes > 0) {
        d->nodes = (struct api_jv *)(block + head);
        d->cap = nodes;
        d->chars = block + head + nodes * sizeof(struct api_jv);
        d->ccap = chars;
        d->nodes_inline = d->chars_inline = 1;
    }
    return d;
}

int api_jdoc_parse(const char *text, size_t len, struct api_jdoc **out, char *msg, size_t msg_cap)
{
    struct api_jdoc *d = new_doc(len);
    struct api_jv local[LOCAL_STACK];
    struct parser ps = {.start = (const unsigned char *)text, .p = (const unsigned char *)text,
                        .end = (const unsigned char *)text + len, .doc = d, .stack = local, .scap = LOCAL_STACK,
                        .msg = msg, .msg_cap = msg_cap};
    struct api_jv root;
    size_t at;

    *out = NULL;
    if (d == NULL)
        return fail(&ps, "out of memory");
    skip_ws(&ps);
    if (ps.p >= ps.end || (*ps.p != '{' && *ps.p != '[')) {
        fail(&ps, ps.p >= ps.end ? "premature end of input" : "'[' or '{' expected");
        goto failed;
    }
    if (parse_value(&ps, 0, &root) != 0 || push(&ps, &root) != 0 || settle(&ps, 1, &at) != 0)
        goto failed;
    skip_ws(&ps);
    if (ps.p != ps.end) {
        fail(&ps, "end of file expected");
        goto failed;
    }
    /* offsets into pointers, now that nothing moves */
    for (size_t i = 0; i < d->nnodes; i++) {
        struct api_jv *v = &d->nodes[i];
        if (v->type == API_JV_STRING)
            v->u.s = d->chars + v->u.at;
        else if (v->type == API_JV_OBJECT || v->type == API_JV_ARRAY)
            v->u.kids = v->n > 0 ? d->nodes + v->u.at : NULL;
    }
    d->root = &d->nodes[at];
    if (ps.stack_heap)
        free(ps.stack);
    *out = d;
    return 0;
failed:
    if (ps.stack_heap)
        free(ps.stack);
    api_jdoc_free(d);
    return -1;
}

void api_jdoc_free(struct api_jdoc *doc)
{
    if (doc == NULL)
        return;
    if (!doc->nodes_inline)
        free(doc->nodes);
    if (!doc->chars_inline)
        free(doc->chars);
    free(doc);
}

const struct api_jv *api_jdoc_root(const struct api_jdoc *doc)
{
    return doc != NULL ? doc->root : NULL;
}

int api_jv_is(const struct api_jv *v, enum api_jv_type type)
{
    return v != NULL && v->type == type;
}

int api_jv_is_number(const struct api_jv *v)
{
    return v != NULL && (v->type == API_JV_INTEGER || v->type == API_JV_REAL);
}

int api_jv_is_boolean(const struct api_jv *v)
{
    return v != NULL && (v->type == API_JV_TRUE || v->type == API_JV_FALSE);
}

const struct api_jv *api_jv_getn(const struct api_jv *obj, const char *key, size_t klen)
{
    if (obj == NULL || obj->type != API_JV_OBJECT)
        return NULL;
    for (size_t i = obj->n; i-- > 0;) {
        const struct api_jv *k = &obj->u.kids[2 * i];
        /* the first byte before a memcmp call: most members differ there */
        if (k->n == klen && (klen == 0 || (k->u.s[0] == key[0] && memcmp(k->u.s, key, klen) == 0)))
            return k + 1;
    }
    return NULL;
}

const char *api_jv_member(const struct api_jv *obj, size_t i, const struct api_jv **value)
{
    if (obj == NULL || obj->type != API_JV_OBJECT || i >= obj->n)
        return NULL;
    *value = &obj->u.kids[2 * i + 1];
    return obj->u.kids[2 * i].u.s;
}

size_t api_jv_size(const struct api_jv *v)
{
    return v != NULL && v->type == API_JV_ARRAY ? v->n : 0;
}

const struct api_jv *api_jv_at(const struct api_jv *arr, size_t i)
{
    return arr != NULL && arr->type == API_JV_ARRAY && i < arr->n ? &arr->u.kids[i] : NULL;
}

const char *api_jv_string(const struct api_jv *v)
{
    return v != NULL && v->type == API_JV_STRING ? v->u.s : NULL;
}

size_t api_jv_strlen(const struct api_jv *v)
{
    return v != NULL && v->type == API_JV_STRING ? v->n : 0;
}

long long api_jv_integer(const struct api_jv *v)
{
    return v != NULL && v->type == API_JV_INTEGER ? v->u.i : 0;
}

double api_jv_number(const struct api_jv *v)
{
    if (v == NULL)
        return 0;
    return v->type == API_JV_INTEGER ? (double)v->u.i : v->type == API_JV_REAL ? v->u.d : 0;
}
