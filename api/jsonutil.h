/*
 * api/jsonutil.h: small jansson helpers for validating request fields with
 * messages that name the field, and for timestamps. Pure; thread-safe.
 */
#ifndef SHOAL_API_JSONUTIL_H
#define SHOAL_API_JSONUTIL_H

#include <stdint.h>

#include <jansson.h>

#include "api/err.h"

/* Rejects any key of OBJ that is not in ALLOWED (NULL-terminated), so a
 * misspelt field is an error instead of being silently ignored. */
int api_json_only_keys(const json_t *obj, const char *const *allowed, const char *what, struct api_err *err);

/* Optional string field: *OUT is NULL when absent or null; API_EINVAL when
 * present with another type. Borrowed from OBJ. */
int api_json_opt_string(const json_t *obj, const char *key, const char **out, struct api_err *err);

/* Optional integer field in [MIN, MAX]; *OUT keeps its value when absent. */
int api_json_opt_int(const json_t *obj, const char *key, int64_t min, int64_t max, int64_t *out,
                     struct api_err *err);

/* Formats unix seconds as RFC 3339 UTC ("2026-11-22T10:00:00Z") into OUT[21]. */
void api_time_format(int64_t unix_s, char out[21]);

/* Reads a whole small file into a malloc'd NUL-terminated buffer. */
int api_read_file(const char *path, size_t max, char **out, size_t *len, struct api_err *err);

/* Creates PATH and its missing parents (mode 0755), like mkdir -p. */
int api_mkdir_p(const char *path, struct api_err *err);

#endif
