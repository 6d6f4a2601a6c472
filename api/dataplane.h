/*
 * api/dataplane.h: what agents and routers share on the data plane:
 * choosing the tenant of a request and checking its token.
 *
 * The tenant is chosen, in order (CONTRACT.md): the path prefix
 * /t/<tenant>/; the Host header <tenant>.<domain> when a tenant domain is
 * configured; the `shoal-tenant` header; the tenant claim of the token.
 * Tokens are verified locally with the cluster's public key.
 *
 * Loop-thread only (reads the request).
 */
#ifndef SHOAL_API_DATAPLANE_H
#define SHOAL_API_DATAPLANE_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"
#include "api/server.h"
#include "api/token.h"

struct api_dp_auth {
    char tenant[API_TENANT_ID_MAX + 1];
    struct api_token_claims claims;
    const char *rest;     /* the path after /t/<tenant> (e.g. "/v2/pipeline"), borrowed */
    size_t rest_len;
};

/* Resolves the tenant and verifies the bearer token of R. TENANT_DOMAIN may
 * be NULL. Errors: 400 invalid_tenant_id, 401 (missing/invalid token),
 * 403 (token for another tenant), 400 when no tenant can be determined. */
int api_dp_authorize(struct api_req *r, const unsigned char pk[API_TOKEN_PUBLIC_BYTES], const char *tenant_domain,
                     struct api_dp_auth *out, struct api_err *err);
/* Where a request's token lies in this thread's token cache, for asking
 * the CPU early for what api_dp_authorize will read there. */
struct api_dp_hint {
    const void *set; /* NULL: nothing to fetch (no cache yet, no token, too long) */
    const void *slots;
    uint32_t tag;
    size_t tok_len;
};
/* Fills H for R and prefetches the token's cache set; then
 * api_dp_prefetch_slot (once that set has arrived) prefetches the slot it
 * names. A loop that holds several requests calls each for all of them, so
 * that their misses overlap instead of following one another. Reads
 * nothing but the request and the set; never fails. */
void api_dp_prefetch_set(const struct api_req *r, struct api_dp_hint *h);
void api_dp_prefetch_slot(const struct api_dp_hint *h);
/* Frees the calling thread's cache of verified tokens (a thread that called
 * api_dp_authorize, as it ends). */
void api_dp_thread_exit(void);

/* api_token_verify through this thread's cache of verified tokens: a token
 * seen before with the same key skips the signature check, never the
 * expiry. */
int api_dp_verify_cached(const unsigned char pk[API_TOKEN_PUBLIC_BYTES], const char *tok, size_t len, int64_t now,
                         struct api_token_claims *out, struct api_err *err);



/* The data-plane error body: the contract's {"error":{"code","message"}}
 * plus Hrana's top-level "message" and "code", so @libsql/client reports the
 * message and code instead of a bare "HTTP 4xx". Never NULL except on OOM. */
struct api_resp *api_dp_error_resp(const struct api_err *err);
/* The same for CODE and a printf-style message. */
struct api_resp *api_dp_error_respf(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
