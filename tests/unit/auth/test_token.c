/* Unit tests for api/token.c: signing and strict verification of data-plane
 * tokens, key files, the admin token and bearer parsing; and the data
 * plane's per-thread cache of verified tokens (api/dataplane.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "api/dataplane.h"
#include "api/token.h"

static unsigned char pk[32], sk[64], pk2[32], sk2[64];
static const int64_t NOW = 1790000000;

static int setup(void **state)
{
    struct api_err err;
    (void)state;
    assert_int_equal(api_token_init(&err), API_OK);
    crypto_sign_keypair(pk, sk);
    crypto_sign_keypair(pk2, sk2);
    return 0;
}

__attribute__((noinline)) static char *sign(const char *tenant, enum api_access a, int64_t exp)
{
    char *tok = NULL;
    struct api_err err;
    assert_int_equal(api_token_sign(sk, tenant, a, NOW, exp, &tok, &err), API_OK);
    return tok;
}

static void signed_tokens_verify_with_their_claims(void **state)
{
    struct api_token_claims c;
    struct api_err err;
    (void)state;
    char *rw = sign("acme", API_ACCESS_RW, NOW + 60), *ro = sign("acme", API_ACCESS_RO, NOW + 60);
    assert_int_equal(api_token_verify(pk, rw, strlen(rw), NOW, &c, &err), API_OK);
    assert_string_equal(c.tenant, "acme");
    assert_int_equal(c.access, API_ACCESS_RW);
    assert_int_equal(c.exp, NOW + 60);
    assert_int_equal(api_token_verify(pk, ro, strlen(ro), NOW, &c, &err), API_OK);
    assert_int_equal(c.access, API_ACCESS_RO);
    /* three base64url parts */
    assert_int_equal(strspn(rw, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."), strlen(rw));
    free(rw);
    free(ro);
}

static void expired_tokens_are_refused(void **state)
{
    struct api_token_claims c;
    struct api_err err;
    (void)state;
    char *t = sign("acme", API_ACCESS_RW, NOW);
    assert_int_equal(api_token_verify(pk, t, strlen(t), NOW, &c, &err), API_EUNAUTHORIZED);
    assert_non_null(strstr(err.msg, "expired"));
    assert_int_equal(api_token_verify(pk, t, strlen(t), NOW - 1, &c, &err), API_OK);
    free(t);
}

static void tampered_or_foreign_tokens_are_refused(void **state)
{
    struct api_token_claims c;
    struct api_err err;
    (void)state;
    char *t = sign("acme", API_ACCESS_RO, NOW + 60);
    size_t len = strlen(t);
    char *dot1 = strchr(t, '.'), *dot2 = strchr(dot1 + 1, '.');

    /* another cluster's key */
    assert_int_equal(api_token_verify(pk2, t, len, NOW, &c, &err), API_EUNAUTHORIZED);
    /* a flipped character in the payload, then in the signature */
    char *copy = strdup(t);
    copy[dot1 - t + 3] = copy[dot1 - t + 3] == 'A' ? 'B' : 'A';
    assert_int_equal(api_token_verify(pk, copy, len, NOW, &c, &err), API_EUNAUTHORIZED);
    strcpy(copy, t);
    copy[dot2 - t + 5] = copy[dot2 - t + 5] == 'A' ? 'B' : 'A';
    assert_int_equal(api_token_verify(pk, copy, len, NOW, &c, &err), API_EUNAUTHORIZED);
    /* an rw payload with the ro signature */
    char *rw = sign("acme", API_ACCESS_RW, NOW + 60);
    char *rwdot1 = strchr(rw, '.'), *rwdot2 = strchr(rwdot1 + 1, '.');
    char mixed[2048];
    snprintf(mixed, sizeof(mixed), "%.*s%s", (int)(rwdot2 - rw), rw, dot2);
    assert_int_equal(api_token_verify(pk, mixed, strlen(mixed), NOW, &c, &err), API_EUNAUTHORIZED);
    free(rw);
    free(copy);
    free(t);
}

static void malformed_tokens_and_alg_none_are_refused(void **state)
{
    struct api_token_claims c;
    struct api_err err;
    static const char *const bad[] = {"", "abc", "a.b", "a.b.c.d", "!!!.@@@.###", "..", NULL};
    (void)state;
    for (const char *const *b = bad; *b; b++)
        assert_int_equal(api_token_verify(pk, *b, strlen(*b), NOW, &c, &err), API_EUNAUTHORIZED);
    /* {"alg":"none"} . {"sub":"acme","a":"rw","exp":9999999999} . (empty) */
    const char *none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhY21lIiwiYSI6InJ3IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    assert_int_equal(api_token_verify(pk, none, strlen(none), NOW, &c, &err), API_EUNAUTHORIZED);
    char huge[5000];
    memset(huge, 'a', sizeof(huge));
    assert_int_equal(api_token_verify(pk, huge, sizeof(huge), NOW, &c, &err), API_EUNAUTHORIZED);
}

static void signing_refuses_bad_tenant_ids(void **state)
{
    char *tok = NULL;
    struct api_err err;
    (void)state;
    assert_int_equal(api_token_sign(sk, "../x", API_ACCESS_RW, NOW, NOW + 1, &tok, &err), API_EBADTENANT);
    assert_null(tok);
}

static void keygen_creates_reuses_and_refuses_partial_sets(void **state)
{
    char dir[] = "/tmp/shoal-keys.XXXXXX", path[256], *admin = NULL, *admin2 = NULL;
    unsigned char lpk[32], lsk[64];
    struct api_token_claims c;
    struct api_err err;
    struct stat st;
    (void)state;
    assert_non_null(mkdtemp(dir));
    assert_int_equal(api_token_keygen_files(dir, &err), API_OK);
    snprintf(path, sizeof(path), "%s/cluster.key", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(api_token_load_secret(path, lsk, &err), API_OK);
    snprintf(path, sizeof(path), "%s/cluster.pub", dir);
    assert_int_equal(api_token_load_public(path, lpk, &err), API_OK);
    snprintf(path, sizeof(path), "%s/admin.token", dir);
    assert_int_equal(api_token_load_admin(path, &admin, &err), API_OK);
    assert_int_equal(strncmp(admin, "shoal_admin_", 12), 0);
    assert_int_equal(strlen(admin), 12 + 43);
    /* the loaded pair signs and verifies */
    char *tok;
    assert_int_equal(api_token_sign(lsk, "acme", API_ACCESS_RW, NOW, NOW + 5, &tok, &err), API_OK);
    assert_int_equal(api_token_verify(lpk, tok, strlen(tok), NOW, &c, &err), API_OK);
    free(tok);
    /* a second run keeps the files */
    assert_int_equal(api_token_keygen_files(dir, &err), API_OK);
    assert_int_equal(api_token_load_admin(path, &admin2, &err), API_OK);
    assert_string_equal(admin, admin2);
    /* a partial set is an error, not an overwrite */
    unlink(path);
    assert_int_equal(api_token_keygen_files(dir, &err), API_ECONFLICT);
    /* loaders reject bad content */
    FILE *f = fopen(path, "w");
    fputs("short\n", f);
    fclose(f);
    assert_int_equal(api_token_load_admin(path, &admin2 /* unchanged on error */, &err), API_EINVAL);
    snprintf(path, sizeof(path), "%s/cluster.pub", dir);
    f = fopen(path, "w");
    fputs("not hex at all\n", f);
    fclose(f);
    assert_int_equal(api_token_load_public(path, lpk, &err), API_EINVAL);
    free(admin);
    free(admin2);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void admin_token_comparison_and_bearer_parsing(void **state)
{
    const char *tok;
    size_t len;
    (void)state;
    assert_true(api_admin_token_equal("shoal_admin_secret", "shoal_admin_secret", 18));
    assert_false(api_admin_token_equal("shoal_admin_secret", "shoal_admin_secreT", 18));
    assert_false(api_admin_token_equal("shoal_admin_secret", "shoal_admin_secret", 17));
    assert_false(api_admin_token_equal("", "", 0));
    assert_int_equal(api_bearer_token("Bearer abc", 10, &tok, &len), 0);
    assert_int_equal(len, 3);
    assert_int_equal(strncmp(tok, "abc", 3), 0);
    assert_int_equal(api_bearer_token("  bearer   xyz  ", 16, &tok, &len), 0);
    assert_int_equal(len, 3);
    assert_int_equal(api_bearer_token("Basic abc", 9, &tok, &len), -1);
    assert_int_equal(api_bearer_token("Bearer ", 7, &tok, &len), -1);
    assert_int_equal(api_bearer_token("Bearerabc", 9, &tok, &len), -1);
}

/* The cache changes only the cost: a cached token is still refused with
 * another key, once expired, or when any byte differs, even with the same
 * signature (the part the cache hashes); thousands of tokens, more than a
 * set holds, all verify again after eviction. */
static void cached_verification_answers_as_the_uncached(void **state)
{
    struct api_token_claims c;
    struct api_err err;
    (void)state;
    char *tok = sign("cached", API_ACCESS_RW, NOW + 60);
    size_t len = strlen(tok);
    for (int i = 0; i < 2; i++) { /* a fill, then a hit */
        assert_int_equal(api_dp_verify_cached(pk, tok, len, NOW, &c, &err), API_OK);
        assert_string_equal(c.tenant, "cached");
        assert_int_equal(c.exp, NOW + 60);
    }
    assert_int_equal(api_dp_verify_cached(pk2, tok, len, NOW, &c, &err), API_EUNAUTHORIZED);
    assert_int_equal(api_dp_verify_cached(pk, tok, len, NOW + 60, &c, &err), API_EUNAUTHORIZED);
    assert_non_null(strstr(err.msg, "expired"));
    assert_int_equal(api_dp_verify_cached(pk, tok, len, NOW, &c, &err), API_OK); /* still cached, still valid */
    char *forged = strdup(tok);
    char *dot = strchr(forged, '.') + 1; /* a payload byte: the signature, the hashed tail, stays */
    *dot = *dot == 'A' ? 'B' : 'A';
    assert_int_not_equal(api_dp_verify_cached(pk, forged, len, NOW, &c, &err), API_OK);
    assert_int_equal(api_dp_verify_cached(pk, tok, len - 1, NOW, &c, &err) == API_OK, 0); /* a prefix */
    free(forged);

    enum { N = 6000 }; /* more tokens than the cache's 4,096 slots */
    char **many = calloc(N, sizeof(*many));
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < N; i++) {
            char name[32];
            snprintf(name, sizeof(name), "t%d", i);
            if (round == 0)
                many[i] = sign(name, i % 2 ? API_ACCESS_RO : API_ACCESS_RW, NOW + 60);
            assert_int_equal(api_dp_verify_cached(pk, many[i], strlen(many[i]), NOW, &c, &err), API_OK);
            assert_string_equal(c.tenant, name);
            assert_int_equal(c.access, i % 2 ? API_ACCESS_RO : API_ACCESS_RW);
        }
    for (int i = 0; i < N; i++)
        free(many[i]);
    free(many);
    free(tok);
    api_dp_thread_exit();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(signed_tokens_verify_with_their_claims),
        cmocka_unit_test(expired_tokens_are_refused),
        cmocka_unit_test(cached_verification_answers_as_the_uncached),
        cmocka_unit_test(tampered_or_foreign_tokens_are_refused),
        cmocka_unit_test(malformed_tokens_and_alg_none_are_refused),
        cmocka_unit_test(signing_refuses_bad_tenant_ids),
        cmocka_unit_test(keygen_creates_reuses_and_refuses_partial_sets),
        cmocka_unit_test(admin_token_comparison_and_bearer_parsing),
    };
    return cmocka_run_group_tests_name("token", tests, setup, NULL);
}
