/*
 * api/jsonin.h: JSON text parsed into one read-only document (struct
 * api_jdoc), for request bodies on the data plane.
 *
 * Why not jansson: a Hrana pipeline body is read once and thrown away, and
 * jansson builds it as a tree of separately allocated values with a hash
 * table per object: on a point read that cost about a third of the agent's
 * instructions. Here a document is three allocations (values, their text,
 * a scratch stack), values sit in one array, and an object's members are
 * looked up by a scan (Hrana objects have a handful of keys).
 *
 * It accepts exactly what json_loadb(text, len, 0, ...) accepts: an object
 * or array at the top, RFC 8259 syntax, valid UTF-8, no "\u0000", integers
 * that fit in 64 bits (others are errors, as in jansson), reals that are
 * finite, nesting up to 2048 levels, nothing but white space after the
 * value. Of duplicate keys the last one counts, as jansson keeps it. One
 * difference, on purpose: jansson (2.14) skips a NUL byte that follows a
 * number or literal ("[1\0]" parses); here every NUL byte outside a string
 * is an error, as everywhere else in JSON text.
 *
 * Pure; a document may be read by several threads at once.
 */
#ifndef SHOAL_API_JSONIN_H
#define SHOAL_API_JSONIN_H

#include <stddef.h>
#include <string.h>

struct api_jdoc;
struct api_jv; /* a value inside a document; lives as long as its document */

enum api_jv_type {
    API_JV_OBJECT,
    API_JV_ARRAY,
    API_JV_STRING,
    API_JV_INTEGER,
    API_JV_REAL,
    API_JV_TRUE,
    API_JV_FALSE,
    API_JV_NULL,
};

/* Parses TEXT (LEN bytes). 0 with *OUT set, or -1 with a message (and the
 * byte offset it names) in MSG. */
int api_jdoc_parse(const char *text, size_t len, struct api_jdoc **out, char *msg, size_t msg_cap);
void api_jdoc_free(struct api_jdoc *doc);
const struct api_jv *api_jdoc_root(const struct api_jdoc *doc);

/* Every accessor takes NULL (a missing value) and answers as for a value of
 * another type: predicates 0, lookups NULL, sizes 0. */
int api_jv_is(const struct api_jv *v, enum api_jv_type type);
int api_jv_is_number(const struct api_jv *v); /* integer or real */
int api_jv_is_boolean(const struct api_jv *v);
/* OBJ's member KEY (KLEN bytes; the last of duplicates); NULL if OBJ is no
 * object or lacks it. */
const struct api_jv *api_jv_getn(const struct api_jv *obj, const char *key, size_t klen);
/* The same for a NUL-terminated KEY; inline, so a literal's length is
 * known when compiling (lookups by literal keys are most of a request's). */
static inline const struct api_jv *api_jv_get(const struct api_jv *obj, const char *key)
{
    return api_jv_getn(obj, key, strlen(key));
}
/* Member I of OBJ in document order (duplicates included): its key, and its
 * value in *VALUE; NULL past the end or if OBJ is no object. */
const char *api_jv_member(const struct api_jv *obj, size_t i, const struct api_jv **value);
/* Items of an array; 0 for anything else (as json_array_size). */
size_t api_jv_size(const struct api_jv *v);
/* Item I of ARR; NULL past the end or if ARR is no array. */
const struct api_jv *api_jv_at(const struct api_jv *arr, size_t i);
/* A string's text (NUL-terminated, no NUL inside) or NULL; its length in bytes. */
const char *api_jv_string(const struct api_jv *v);
size_t api_jv_strlen(const struct api_jv *v);
long long api_jv_integer(const struct api_jv *v); /* 0 unless an integer */
double api_jv_number(const struct api_jv *v);     /* an integer or real's value, else 0 */

#endif
