/*
 * api/jsonout.h: compact JSON text, written straight into one growing
 * buffer (struct api_jw), or of a whole jansson value (api_json_encode,
 * byte for byte what json_dumps(doc, JSON_COMPACT) writes).
 *
 * Why: every data-plane response is a small tree of many values. Building
 * it as jansson objects first cost a malloc per value and per key, a hash
 * per key, and a free of each afterwards: on point reads more than running
 * the query. The writer puts the same text out directly.
 *
 * The writer places commas itself: inside an array every value is an item;
 * inside an object a key (api_jw_key) comes before each value. A failure
 * (out of memory, a real that is not finite, nesting deeper than
 * API_JW_MAX_DEPTH) is remembered and api_jw_finish returns NULL.
 *
 * Pure; a writer is used by one thread at a time.
 */
#ifndef SHOAL_API_JSONOUT_H
#define SHOAL_API_JSONOUT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#define API_JW_MAX_DEPTH 64

struct api_jw {
    char *p;
    size_t len, cap;
    int failed;
    unsigned depth;      /* containers open */
    uint64_t has_items;  /* bit D: the container open at depth D+1 has an item already */
    int after_key;       /* a key was written: the next value is its value */
};

/* A point to go back to (api_jw_rewind): text and comma state. */
struct api_jw_mark {
    size_t len;
    unsigned depth;
    uint64_t has_items;
    int after_key;
};

#define API_JW_INIT {0}

/* Empties W, keeping its buffer (and clearing a failure). */
void api_jw_reset(struct api_jw *w);
/* Frees W's buffer; W is empty and usable again. */
void api_jw_free(struct api_jw *w);
/* W's text, malloc'd and NUL-terminated, its length in *LEN (may be NULL);
 * W is empty afterwards. NULL if anything failed (W is then freed). */
char *api_jw_finish(struct api_jw *w, size_t *len);

void api_jw_object(struct api_jw *w);
void api_jw_object_end(struct api_jw *w);
void api_jw_array(struct api_jw *w);
void api_jw_array_end(struct api_jw *w);
/* KEY (N bytes) is written as it is: a constant of plain ASCII that needs
 * no escape. api_jw_key takes a NUL-terminated one; inline, so a literal's
 * length is known when compiling. */
void api_jw_keyn(struct api_jw *w, const char *key, size_t n);
static inline void api_jw_key(struct api_jw *w, const char *key)
{
    api_jw_keyn(w, key, strlen(key));
}

/* S (N bytes, valid UTF-8: the caller checks) as a JSON string. */
void api_jw_string(struct api_jw *w, const char *s, size_t n);
/* S as a JSON string, or null when S is NULL. */
void api_jw_cstring(struct api_jw *w, const char *s);
void api_jw_int(struct api_jw *w, long long v);
/* V as a JSON string of decimal digits (Hrana's integers). */
void api_jw_int_string(struct api_jw *w, long long v);
/* As jansson writes a real; a value that is not finite fails W. */
void api_jw_real(struct api_jw *w, double v);
void api_jw_bool(struct api_jw *w, int v);
void api_jw_null(struct api_jw *w);
/* V, any jansson value, as one value. */
void api_jw_json(struct api_jw *w, const json_t *v);
/* JSON (N bytes of JSON text holding one value, e.g. another writer's) as one value. */
void api_jw_raw(struct api_jw *w, const char *json, size_t n);
/* N bytes appended as they are, outside the value structure (a newline
 * between the lines of a text/plain cursor reply). */
void api_jw_append(struct api_jw *w, const char *s, size_t n);

void api_jw_mark(const struct api_jw *w, struct api_jw_mark *m);
/* Drops everything written since M (taken on W). */
void api_jw_rewind(struct api_jw *w, const struct api_jw_mark *m);

/* 1 if S (N bytes) is valid UTF-8 (no overlong forms, surrogates or code
 * points past U+10FFFF), which JSON text must be. */
int api_utf8_valid(const char *s, size_t n);

/* The text of DOC (any JSON value), malloc'd and NUL-terminated, its length
 * in *LEN. NULL on OOM, on a value nested deeper than 2048, or on a real that
 * is not finite (which jansson cannot hold anyway). */
char *api_json_encode(const json_t *doc, size_t *len);

#endif
