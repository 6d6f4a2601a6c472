/*
 * api/jsonout.h: compact JSON text of a jansson value, byte for byte what
 * json_dumps(doc, JSON_COMPACT) writes, in about a third of the time.
 *
 * Why: every data-plane response is a small tree of many values, and
 * jansson's dumper goes through a callback per token and decodes each string
 * as UTF-8 again; on point reads it cost more than running the query.
 *
 * Pure; thread-safe.
 */
#ifndef SHOAL_API_JSONOUT_H
#define SHOAL_API_JSONOUT_H

#include <stddef.h>

#include <jansson.h>

/* The text of DOC (any JSON value), malloc'd and NUL-terminated, its length
 * in *LEN. NULL on OOM, on a value nested deeper than 2048, or on a real that
 * is not finite (which jansson cannot hold anyway). */
char *api_json_encode(const json_t *doc, size_t *len);

#endif
