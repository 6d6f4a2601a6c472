/*
 * api/names.h: the syntax of names that reach the file system or etcd keys
 * (CONTRACT.md "Names"), and the 16-hex-digit form of TXIDs and checksums.
 * Pure functions; thread-safe.
 *
 *   tenant IDs, node names  ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$
 *   region codes            ^[a-z]{3}[0-9]?$
 */
#ifndef SHOAL_API_NAMES_H
#define SHOAL_API_NAMES_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"

/* 1 if S (LEN bytes, may contain NULs or anything else) is valid, else 0. */
int api_name_valid(const char *s, size_t len);
int api_region_valid(const char *s, size_t len);

/* API_OK, or API_EBADTENANT with a message that shows the offending ID
 * escaped and shortened ("tenant id '../x' is not a DNS label ..."). */
int api_tenant_id_check(const char *s, size_t len, struct api_err *err);
/* API_OK, or API_EINVAL naming WHAT ("node", "region"). */
int api_node_name_check(const char *s, size_t len, struct api_err *err);
int api_region_check(const char *s, size_t len, struct api_err *err);

/* Writes V as 16 lower-case hex digits plus NUL into OUT. */
void api_hex64_format(uint64_t v, char out[17]);
/* Copies LEN bytes of SRC (at most CAP - 1 of them) into DST and ends it
 * with a NUL: what snprintf(dst, cap, "%.*s", len, src) does, without
 * printf's cost on every request. */
void api_copy_text(char *dst, size_t cap, const char *src, size_t len);
/* The value of hex digit C (either case), or -1. */
int api_hex_digit(int c);
/* Parses exactly 16 hex digits (either case); returns 0 on success, -1 otherwise. */
int api_hex64_parse(const char *s, size_t len, uint64_t *out);

#endif
