/*
 * api/token.h: data-plane tokens and the admin token, on libsodium.
 *
 * A data-plane token is a JWT signed with the cluster's Ed25519 key
 * (header {"alg":"EdDSA","typ":"JWT"}, the form sqld and Turso use), with the
 * claims {"sub":"<tenant>","a":"rw"|"ro","iat":<s>,"exp":<s>}. Agents and
 * routers verify it locally with the public key; nothing is looked up.
 *
 * Key files (written by api_token_keygen_files, mode 0600, hex + newline):
 *   cluster.key   the 32-byte Ed25519 seed (orchestrator only)
 *   cluster.pub   the 32-byte public key (agents, routers)
 *   admin.token   the admin bearer token ("shoal_admin_" + 43 base64url chars)
 *
 * All functions are thread-safe and pure apart from the file helpers.
 * sodium_init() must have run (api_token_init does it).
 */
#ifndef SHOAL_API_TOKEN_H
#define SHOAL_API_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"

#define API_TOKEN_PUBLIC_BYTES 32
#define API_TOKEN_SECRET_BYTES 64 /* libsodium's secret key: seed + public key */
#define API_TENANT_ID_MAX 63

enum api_access { API_ACCESS_RO, API_ACCESS_RW };

struct api_token_claims {
    char tenant[API_TENANT_ID_MAX + 1];
    enum api_access access;
    int64_t iat;
    int64_t exp;
};

/* Calls sodium_init(); returns API_EINTERNAL if it fails. */
int api_token_init(struct api_err *err);

/* Signs a token for TENANT valid until EXP (unix seconds). *OUT is a malloc'd
 * NUL-terminated string the caller frees. */
int api_token_sign(const unsigned char sk[API_TOKEN_SECRET_BYTES], const char *tenant, enum api_access access,
                   int64_t iat, int64_t exp, char **out, struct api_err *err);

/* Verifies TOKEN (LEN bytes, not necessarily NUL-terminated) against PK at
 * time NOW: signature, header, claim types, tenant-ID syntax, and expiry.
 * Returns API_EUNAUTHORIZED with a message saying why ("token expired",
 * "bad signature", ...). Fills OUT only on success. Does not check which
 * tenant the caller wants: compare OUT->tenant yourself. */
int api_token_verify(const unsigned char pk[API_TOKEN_PUBLIC_BYTES], const char *token, size_t len, int64_t now,
                     struct api_token_claims *out, struct api_err *err);

/* Constant-time comparison of a presented admin token with the expected one;
 * returns 1 when equal. */
int api_admin_token_equal(const char *expected, const char *got, size_t got_len);

/* Writes cluster.key, cluster.pub and admin.token into DIR (created if
 * missing) unless all three already exist, in which case nothing changes. */
int api_token_keygen_files(const char *dir, struct api_err *err);

/* Load the files above. */
int api_token_load_secret(const char *path, unsigned char sk[API_TOKEN_SECRET_BYTES], struct api_err *err);
int api_token_load_public(const char *path, unsigned char pk[API_TOKEN_PUBLIC_BYTES], struct api_err *err);
/* *OUT is malloc'd, trailing white space stripped. */
int api_token_load_admin(const char *path, char **out, struct api_err *err);

/* Extracts the token from an "Authorization: Bearer <t>" value; returns 0 and
 * sets *TOK and *TOK_LEN (borrowed from VALUE), or -1 if it is not a bearer value. */
/* Loads a token file: PATH if given, else NAME in the folder of SIBLING
 * (how the internal token defaults to the file beside the cluster keys). */
int api_token_load_beside(const char *path, const char *sibling, const char *name, char **out, struct api_err *err);

int api_bearer_token(const char *value, size_t len, const char **tok, size_t *tok_len);

#endif
