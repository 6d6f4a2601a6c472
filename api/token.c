/*
 * api/token.c: Ed25519-signed JWT data-plane tokens, key files and the admin
 * token (see token.h).
 *
 * Verification is strict on purpose: exactly three base64url segments, the
 * header must say EdDSA (never "none", never HS256 with the public key as a
 * secret), the claims must have the right types, and the signature is
 * checked before the claims are trusted for anything.
 */
#include "api/token.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "api/names.h"

#define TOKEN_MAX_LEN 4096
#define ADMIN_PREFIX "shoal_admin_"

static const char jwt_header[] = "{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}";

int api_token_init(struct api_err *err)
{
    if (sodium_init() < 0)
        return api_err_set(err, API_EINTERNAL, "libsodium failed to initialise");
    return API_OK;
}

static char *b64url(const void *data, size_t len)
{
    size_t cap = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *out = malloc(cap);
    if (out != NULL)
        sodium_bin2base64(out, cap, data, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return out;
}

int api_token_sign(const unsigned char sk[API_TOKEN_SECRET_BYTES], const char *tenant, enum api_access access,
                   int64_t iat, int64_t exp, char **out, struct api_err *err)
{
    json_t *claims;
    char *payload_json, *h64, *p64, *signing, *s64, *tok;
    unsigned char sig[crypto_sign_BYTES];
    int rc;

    if ((rc = api_tenant_id_check(tenant, strlen(tenant), err)) != API_OK)
        return rc;
    claims = json_pack("{s:s,s:s,s:I,s:I}", "sub", tenant, "a", access == API_ACCESS_RW ? "rw" : "ro", "iat",
                       (json_int_t)iat, "exp", (json_int_t)exp);
    payload_json = claims ? json_dumps(claims, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(claims);
    h64 = b64url(jwt_header, strlen(jwt_header));
    p64 = payload_json ? b64url(payload_json, strlen(payload_json)) : NULL;
    free(payload_json);
    if (h64 == NULL || p64 == NULL || asprintf(&signing, "%s.%s", h64, p64) < 0) {
        free(h64);
        free(p64);
        return api_err_set(err, API_ENOMEM, "signing a token: out of memory");
    }
    free(h64);
    free(p64);
    crypto_sign_detached(sig, NULL, (const unsigned char *)signing, strlen(signing), sk);
    s64 = b64url(sig, sizeof(sig));
    if (s64 == NULL || asprintf(&tok, "%s.%s", signing, s64) < 0) {
        free(s64);
        free(signing);
        return api_err_set(err, API_ENOMEM, "signing a token: out of memory");
    }
    free(s64);
    free(signing);
    *out = tok;
    return API_OK;
}

/* Decodes one base64url segment into a malloc'd buffer (NUL-terminated). */
static int unb64url(const char *s, size_t len, unsigned char **out, size_t *out_len)
{
    size_t cap = len * 3 / 4 + 3, n = 0;
    unsigned char *buf = malloc(cap + 1);
    const char *end;
    if (buf == NULL)
        return -1;
    if (sodium_base642bin(buf, cap, s, len, NULL, &n, &end, sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        end != s + len) {
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

int api_token_verify(const unsigned char pk[API_TOKEN_PUBLIC_BYTES], const char *token, size_t len, int64_t now,
                     struct api_token_claims *out, struct api_err *err)
{
    const char *dot1, *dot2;
    unsigned char *hdr = NULL, *payload = NULL, *sig = NULL;
    size_t hlen, plen, slen;
    json_t *h = NULL, *c = NULL;
    struct api_token_claims claims;
    int rc = API_EUNAUTHORIZED;

    memset(&claims, 0, sizeof(claims));
    if (token == NULL || len == 0)
        return api_err_set(err, API_EUNAUTHORIZED, "empty token");
    if (len > TOKEN_MAX_LEN)
        return api_err_set(err, API_EUNAUTHORIZED, "token is longer than %d bytes", TOKEN_MAX_LEN);
    dot1 = memchr(token, '.', len);
    dot2 = dot1 ? memchr(dot1 + 1, '.', (size_t)(token + len - dot1 - 1)) : NULL;
    if (dot1 == NULL || dot2 == NULL || memchr(dot2 + 1, '.', (size_t)(token + len - dot2 - 1)) != NULL)
        return api_err_set(err, API_EUNAUTHORIZED, "token is not a JWT (three dot-separated parts)");
    if (unb64url(token, (size_t)(dot1 - token), &hdr, &hlen) != 0 ||
        unb64url(dot1 + 1, (size_t)(dot2 - dot1 - 1), &payload, &plen) != 0 ||
        unb64url(dot2 + 1, (size_t)(token + len - dot2 - 1), &sig, &slen) != 0) {
        api_err_set(err, API_EUNAUTHORIZED, "token has a part that is not base64url");
        goto out;
    }
    h = json_loadb((const char *)hdr, hlen, 0, NULL);
    const char *alg = json_string_value(json_object_get(h, "alg"));
    if (alg == NULL || strcmp(alg, "EdDSA") != 0) {
        api_err_set(err, API_EUNAUTHORIZED, "token algorithm must be EdDSA");
        goto out;
    }
    if (slen != crypto_sign_BYTES ||
        crypto_sign_verify_detached(sig, (const unsigned char *)token, (size_t)(dot2 - token), pk) != 0) {
        api_err_set(err, API_EUNAUTHORIZED, "token signature is not valid for this cluster");
        goto out;
    }
    c = json_loadb((const char *)payload, plen, 0, NULL);
    json_t *sub = json_object_get(c, "sub"), *a = json_object_get(c, "a"), *exp = json_object_get(c, "exp"),
           *iat = json_object_get(c, "iat");
    if (!json_is_string(sub) || !json_is_string(a) || !json_is_integer(exp) || (iat && !json_is_integer(iat))) {
        api_err_set(err, API_EUNAUTHORIZED, "token claims are missing or mistyped");
        goto out;
    }
    const char *tenant = json_string_value(sub);
    if (!api_name_valid(tenant, strlen(tenant))) {
        api_err_set(err, API_EUNAUTHORIZED, "token names an invalid tenant");
        goto out;
    }
    if (strcmp(json_string_value(a), "rw") == 0)
        claims.access = API_ACCESS_RW;
    else if (strcmp(json_string_value(a), "ro") == 0)
        claims.access = API_ACCESS_RO;
    else {
        api_err_set(err, API_EUNAUTHORIZED, "token access must be rw or ro");
        goto out;
    }
    claims.exp = json_integer_value(exp);
    claims.iat = iat ? json_integer_value(iat) : 0;
    if (claims.exp <= now) {
        api_err_set(err, API_EUNAUTHORIZED, "token expired");
        goto out;
    }
    snprintf(claims.tenant, sizeof(claims.tenant), "%s", tenant);
    *out = claims;
    rc = API_OK;
out:
    json_decref(h);
    json_decref(c);
    free(hdr);
    free(payload);
    free(sig);
    return rc;
}

int api_admin_token_equal(const char *expected, const char *got, size_t got_len)
{
    size_t n = strlen(expected);
    unsigned char a[crypto_generichash_BYTES], b[crypto_generichash_BYTES];
    /* Hash both so the comparison is constant-time whatever the lengths. */
    crypto_generichash(a, sizeof(a), (const unsigned char *)expected, n, NULL, 0);
    crypto_generichash(b, sizeof(b), (const unsigned char *)got, got_len, NULL, 0);
    return n > 0 && sodium_memcmp(a, b, sizeof(a)) == 0;
}

int api_bearer_token(const char *value, size_t len, const char **tok, size_t *tok_len)
{
    while (len > 0 && (*value == ' ' || *value == '\t')) {
        value++;
        len--;
    }
    if (len < 7 || strncasecmp(value, "bearer ", 7) != 0)
        return -1;
    value += 7;
    len -= 7;
    while (len > 0 && (*value == ' ' || *value == '\t')) {
        value++;
        len--;
    }
    while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t' || value[len - 1] == '\r'))
        len--;
    if (len == 0)
        return -1;
    *tok = value;
    *tok_len = len;
    return 0;
}

/* ---- files ---- */

static int write_secret_file(const char *path, const char *text, struct api_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    size_t n = strlen(text);
    if (fd < 0)
        return api_err_set(err, API_EIO, "cannot create '%s': %s", path, strerror(errno));
    if (write(fd, text, n) != (ssize_t)n || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return api_err_set(err, API_EIO, "cannot write '%s': %s", path, strerror(e));
    }
    close(fd);
    return API_OK;
}

/* internal.token: what agents present to each other's replication
 * endpoints. Added to older key directories that lack it. */
static int ensure_internal_token(const char *dir, struct api_err *err)
{
    char path[4096], tok[128];
    unsigned char rnd[32];
    snprintf(path, sizeof(path), "%s/internal.token", dir);
    if (access(path, F_OK) == 0)
        return API_OK;
    randombytes_buf(rnd, sizeof(rnd));
    memcpy(tok, "shoal_internal_", 15);
    sodium_bin2base64(tok + 15, sizeof(tok) - 15, rnd, sizeof(rnd), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    strcat(tok, "\n");
    int rc = write_secret_file(path, tok, err);
    sodium_memzero(tok, sizeof(tok));
    return rc;
}

int api_token_keygen_files(const char *dir, struct api_err *err)
{
    char kp[4096], pp[4096], ap[4096];
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES], seed[crypto_sign_SEEDBYTES];
    unsigned char admin[32];
    char hex[2 * crypto_sign_SEEDBYTES + 2], tok[128];
    int have = 0, rc;

    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return api_err_set(err, API_EIO, "cannot create '%s': %s", dir, strerror(errno));
    snprintf(kp, sizeof(kp), "%s/cluster.key", dir);
    snprintf(pp, sizeof(pp), "%s/cluster.pub", dir);
    snprintf(ap, sizeof(ap), "%s/admin.token", dir);
    have = (access(kp, F_OK) == 0) + (access(pp, F_OK) == 0) + (access(ap, F_OK) == 0);
    if (have == 3)
        return ensure_internal_token(dir, err);
    if (have != 0)
        return api_err_set(err, API_ECONFLICT, "'%s' holds only some of cluster.key, cluster.pub and admin.token; "
                                               "remove them all or restore the missing ones", dir);
    randombytes_buf(seed, sizeof(seed));
    crypto_sign_seed_keypair(pk, sk, seed);
    sodium_bin2hex(hex, sizeof(hex), seed, sizeof(seed));
    strcat(hex, "\n");
    if ((rc = write_secret_file(kp, hex, err)) != API_OK)
        goto out;
    sodium_bin2hex(hex, sizeof(hex), pk, sizeof(pk));
    strcat(hex, "\n");
    if ((rc = write_secret_file(pp, hex, err)) != API_OK)
        goto out;
    randombytes_buf(admin, sizeof(admin));
    memcpy(tok, ADMIN_PREFIX, strlen(ADMIN_PREFIX));
    sodium_bin2base64(tok + strlen(ADMIN_PREFIX), sizeof(tok) - strlen(ADMIN_PREFIX), admin, sizeof(admin),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    strcat(tok, "\n");
    if ((rc = write_secret_file(ap, tok, err)) == API_OK)
        rc = ensure_internal_token(dir, err);
out:
    sodium_memzero(seed, sizeof(seed));
    sodium_memzero(sk, sizeof(sk));
    sodium_memzero(hex, sizeof(hex));
    return rc;
}

static int load_hex(const char *path, unsigned char *out, size_t n, struct api_err *err)
{
    char buf[256];
    size_t len, bin_len = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return api_err_set(err, API_EIO, "cannot open key file '%s': %s", path, strerror(errno));
    len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = '\0';
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
        buf[--len] = '\0';
    if (len != 2 * n || sodium_hex2bin(out, n, buf, len, NULL, &bin_len, NULL) != 0 || bin_len != n) {
        sodium_memzero(buf, sizeof(buf));
        return api_err_set(err, API_EINVAL, "key file '%s' must hold %zu hex digits", path, 2 * n);
    }
    sodium_memzero(buf, sizeof(buf));
    return API_OK;
}

int api_token_load_secret(const char *path, unsigned char sk[API_TOKEN_SECRET_BYTES], struct api_err *err)
{
    unsigned char seed[crypto_sign_SEEDBYTES], pk[crypto_sign_PUBLICKEYBYTES];
    int rc = load_hex(path, seed, sizeof(seed), err);
    if (rc != API_OK)
        return rc;
    crypto_sign_seed_keypair(pk, sk, seed);
    sodium_memzero(seed, sizeof(seed));
    return API_OK;
}

int api_token_load_public(const char *path, unsigned char pk[API_TOKEN_PUBLIC_BYTES], struct api_err *err)
{
    return load_hex(path, pk, API_TOKEN_PUBLIC_BYTES, err);
}

int api_token_load_admin(const char *path, char **out, struct api_err *err)
{
    char buf[512];
    size_t len;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return api_err_set(err, API_EIO, "cannot open admin token file '%s': %s", path, strerror(errno));
    len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = '\0';
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' || buf[len - 1] == '\t'))
        buf[--len] = '\0';
    if (len < 16)
        return api_err_set(err, API_EINVAL, "admin token in '%s' is shorter than 16 characters", path);
    if ((*out = strdup(buf)) == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    sodium_memzero(buf, sizeof(buf));
    return API_OK;
}

int api_token_load_beside(const char *path, const char *sibling, const char *name, char **out, struct api_err *err)
{
    char buf[4096];
    if (path != NULL) {
        snprintf(buf, sizeof(buf), "%s", path);
    } else {
        const char *slash = strrchr(sibling, '/');
        if (slash == NULL)
            snprintf(buf, sizeof(buf), "%s", name);
        else
            snprintf(buf, sizeof(buf), "%.*s/%s", (int)(slash - sibling), sibling, name);
    }
    return api_token_load_admin(buf, out, err);
}
