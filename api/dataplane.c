/* api/dataplane.c: tenant resolution and token checks (see dataplane.h). */
#include "api/dataplane.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "api/names.h"

/* Copies a tenant candidate after validating it. */
static int take_tenant(struct api_dp_auth *out, const char *s, size_t len, struct api_err *err)
{
    int rc = api_tenant_id_check(s, len, err);
    if (rc != API_OK)
        return rc;
    memcpy(out->tenant, s, len);
    out->tenant[len] = '\0';
    return API_OK;
}

/* Verified tokens, per thread, 8-way set-associative by a hash of the token
 * text. An Ed25519 verification costs about as much as the rest of a small
 * request; clients send the same token again and again. A hit needs the
 * exact same bytes and the same public key, and the expiry is checked on
 * every use, so the cache changes nothing but the cost. (Direct-mapped, a
 * round-robin load over 1,000 tenants missed on a fifth of its requests:
 * colliding tokens evicted each other every time. 4-way over 1,024 sets,
 * the fullest set of 1,000 tokens usually held five, and a round-robin
 * load missed on all five every round: 0.5% of requests paid a full
 * verification, 1.4% of the agent's time. With 8 ways a set overflows
 * only past eight, about once in 400 such loads.)
 *
 * A set's tags and ages share one cache line, so a lookup reads that line
 * and then only the slot whose tag matches: over 1,000 tenants the slots
 * of a set are rarely in the cache, and each costs a miss. The hash
 * covers the token's last bytes, its signature, which differ between any
 * two tokens (hashing all of it was a thousand instructions per request).
 * Tokens longer than TOKEN_CACHE_MAX_LEN are verified on every use; those
 * Shoal signs are under 300 bytes (tenant ids are at most 63). */
#define TOKEN_CACHE_WAYS 8
#define TOKEN_CACHE_SETS 1024 /* 8,192 slots, about 4 MiB, on the loop thread only */
#define TOKEN_CACHE_MAX_LEN 384
#define TOKEN_HASH_TAIL 24

struct token_slot {
    size_t len;
    unsigned char pk[API_TOKEN_PUBLIC_BYTES];
    struct api_token_claims claims;
    char tok[TOKEN_CACHE_MAX_LEN];
};

struct token_set {
    uint32_t tag[TOKEN_CACHE_WAYS];  /* the token hash's upper half, never 0; 0 = empty */
    uint32_t used[TOKEN_CACHE_WAYS]; /* last hit or fill (wraps after 2^32 lookups: one odd eviction then) */
};

struct token_cache {
    struct token_set sets[TOKEN_CACHE_SETS];
    struct token_slot slots[TOKEN_CACHE_SETS][TOKEN_CACHE_WAYS];
    uint32_t clock;
};

static __thread struct token_cache *tl_tokens;

void api_dp_thread_exit(void)
{
    free(tl_tokens);
    tl_tokens = NULL;
}

static uint64_t token_hash(const char *tok, size_t len)
{
    uint64_t h = 1469598103934665603ull ^ len; /* FNV-1a: placement only, equality is checked in full */
    for (size_t i = len > TOKEN_HASH_TAIL ? len - TOKEN_HASH_TAIL : 0; i < len; i++)
        h = (h ^ (unsigned char)tok[i]) * 1099511628211ull;
    return h ^ (h >> 29); /* FNV's low bits mix poorly: the set index takes them */
}

void api_dp_prefetch_set(const struct api_req *r, struct api_dp_hint *h)
{
    const struct token_cache *c = tl_tokens;
    const char *v, *tok;
    size_t len, tok_len;

    h->set = NULL;
    if (c == NULL || (v = api_req_header(r, "authorization", &len)) == NULL ||
        api_bearer_token(v, len, &tok, &tok_len) != 0 || tok_len > TOKEN_CACHE_MAX_LEN)
        return;
    uint64_t hash = token_hash(tok, tok_len);
    size_t si = (size_t)(hash % TOKEN_CACHE_SETS);
    h->set = &c->sets[si];
    h->slots = c->slots[si];
    h->tag = (uint32_t)(hash >> 32) | 1;
    h->tok_len = tok_len;
    __builtin_prefetch(h->set, 0, 3);
}

void api_dp_prefetch_slot(const struct api_dp_hint *h)
{
    const struct token_set *set = h->set;
    if (set == NULL)
        return;
    /* the slot the set's tags point at: its head and the token's bytes, as
     * api_dp_verify_cached compares them */
    for (int w = 0; w < TOKEN_CACHE_WAYS; w++) {
        if (set->tag[w] != h->tag)
            continue;
        const struct token_slot *slot = (const struct token_slot *)h->slots + w;
        const char *end = slot->tok + h->tok_len;
        for (const char *p = (const char *)slot; p < end; p += 64)
            __builtin_prefetch(p, 0, 3);
        __builtin_prefetch(end - 1, 0, 3);
        return;
    }
}

int api_dp_verify_cached(const unsigned char pk[API_TOKEN_PUBLIC_BYTES], const char *tok, size_t len, int64_t now,
                         struct api_token_claims *out, struct api_err *err)
{
    struct token_cache *c = tl_tokens;
    struct token_set *set = NULL;
    struct token_slot *victim = NULL;
    uint64_t h = 0;
    uint32_t tag = 0;
    int vw = 0;

    if (len <= TOKEN_CACHE_MAX_LEN && (c != NULL || (c = tl_tokens = calloc(1, sizeof(*c))) != NULL)) {
        h = token_hash(tok, len);
        tag = (uint32_t)(h >> 32) | 1;
        size_t si = (size_t)(h % TOKEN_CACHE_SETS);
        set = &c->sets[si];
        for (int w = 0; w < TOKEN_CACHE_WAYS; w++) {
            if (set->tag[w] == tag) {
                struct token_slot *slot = &c->slots[si][w];
                if (slot->len == len && memcmp(slot->tok, tok, len) == 0 &&
                    memcmp(slot->pk, pk, sizeof(slot->pk)) == 0) {
                    if (slot->claims.exp <= now)
                        return api_err_set(err, API_EUNAUTHORIZED, "token expired");
                    set->used[w] = ++c->clock;
                    *out = slot->claims;
                    return API_OK;
                }
            }
            if (set->used[w] < set->used[vw])
                vw = w;
        }
        victim = &c->slots[si][vw];
    }
    int rc = api_token_verify(pk, tok, len, now, out, err);
    if (rc == API_OK && victim != NULL) {
        victim->len = len;
        memcpy(victim->tok, tok, len);
        memcpy(victim->pk, pk, sizeof(victim->pk));
        victim->claims = *out;
        set->tag[vw] = tag;
        set->used[vw] = ++c->clock;
    }
    return rc;
}

int api_dp_authorize(struct api_req *r, const unsigned char pk[API_TOKEN_PUBLIC_BYTES], const char *tenant_domain,
                     struct api_dp_auth *out, struct api_err *err)
{
    size_t plen, len;
    const char *path = api_req_path(r, &plen), *v, *tok;
    size_t tok_len;
    int have_tenant = 0, rc;

    memset(out, 0, sizeof(*out));
    out->rest = path;
    out->rest_len = plen;

    /* 1. /t/<tenant>/... */
    if ((v = api_req_param(r, "tenant", &len)) != NULL) {
        if ((rc = take_tenant(out, v, len, err)) != API_OK)
            return rc;
        have_tenant = 1;
        const char *after = v + len;
        out->rest = after;
        out->rest_len = (size_t)(path + plen - after);
    }
    /* 2. Host: <tenant>.<domain> */
    if (!have_tenant && tenant_domain != NULL && tenant_domain[0] != '\0' &&
        (v = api_req_header(r, ":authority", &len)) == NULL)
        v = api_req_header(r, "host", &len);
    if (!have_tenant && tenant_domain != NULL && tenant_domain[0] != '\0' && v != NULL) {
        size_t dlen = strlen(tenant_domain), hlen = len;
        const char *colon = memchr(v, ':', len);
        if (colon != NULL)
            hlen = (size_t)(colon - v);
        if (hlen > dlen + 1 && v[hlen - dlen - 1] == '.' && strncasecmp(v + hlen - dlen, tenant_domain, dlen) == 0) {
            if ((rc = take_tenant(out, v, hlen - dlen - 1, err)) != API_OK)
                return rc;
            have_tenant = 1;
        }
    }
    /* 3. shoal-tenant header */
    if (!have_tenant && (v = api_req_header(r, "shoal-tenant", &len)) != NULL) {
        if ((rc = take_tenant(out, v, len, err)) != API_OK)
            return rc;
        have_tenant = 1;
    }

    /* The token: required for everything on the data plane. */
    v = api_req_header(r, "authorization", &len);
    if (v == NULL)
        return api_err_set(err, API_EUNAUTHORIZED, "missing Authorization: Bearer <token>");
    if (api_bearer_token(v, len, &tok, &tok_len) != 0)
        return api_err_set(err, API_EUNAUTHORIZED, "the Authorization header is not a Bearer token");
    if ((rc = api_dp_verify_cached(pk, tok, tok_len, (int64_t)time(NULL), &out->claims, err)) != API_OK)
        return rc;

    /* 4. the token's tenant claim */
    if (!have_tenant) {
        api_copy_text(out->tenant, sizeof(out->tenant), out->claims.tenant, strlen(out->claims.tenant));
        have_tenant = 1;
    }
    if (strcmp(out->tenant, out->claims.tenant) != 0)
        return api_err_set(err, API_EFORBIDDEN, "the token is for tenant '%s', not '%s'", out->claims.tenant,
                           out->tenant);
    return API_OK;
}

struct api_resp *api_dp_error_resp(const struct api_err *err)
{
    struct api_resp *resp = api_resp_new(api_err_http_status(err->code));
    const char *msg = err->msg[0] ? err->msg : api_err_json_code(err->code);
    char upper[64];
    size_t i;

    /* Hrana codes are upper case (sqld: STREAM_EXPIRED). */
    for (i = 0; api_err_json_code(err->code)[i] != '\0' && i < sizeof(upper) - 1; i++)
        upper[i] = (char)toupper((unsigned char)api_err_json_code(err->code)[i]);
    upper[i] = '\0';
    json_t *doc = json_pack("{s:{s:s,s:s},s:s,s:s}", "error", "code", api_err_json_code(err->code), "message", msg,
                            "message", msg, "code", upper);

    if (resp == NULL) {
        json_decref(doc);
        return NULL;
    }
    if (api_resp_set_json(resp, api_err_http_status(err->code), doc) != API_OK) {
        api_resp_free(resp);
        return NULL;
    }
    return resp;
}

struct api_resp *api_dp_error_respf(int code, const char *fmt, ...)
{
    struct api_err err;
    va_list ap;

    err.code = code;
    va_start(ap, fmt);
    vsnprintf(err.msg, sizeof(err.msg), fmt, ap);
    va_end(ap);
    return api_dp_error_resp(&err);
}
