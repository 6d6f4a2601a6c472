/*
 * Integration tests of api/etcd.c against a real etcd 3.4 (Debian's
 * etcd-server) started on free loopback ports: every call, the lease
 * patterns Shoal relies on, and the watch (events, compaction resync, stop).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "api/etcd.h"
#include "api/http.h"
#include "tests/harness/etcd_harness.h"

static struct api_etcd *e;
static const char *url;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int setup(void **state)
{
    struct api_err err;
    (void)state;
    api_http_global_init(&err);
    url = test_etcd_start();
    if (url == NULL)
        return -1;
    assert_int_equal(api_etcd_new(url, &e, &err), API_OK);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    api_etcd_free(e);
    test_etcd_stop();
    api_http_global_cleanup();
    return 0;
}

static void put_and_get_round_trip_binary_values(void **state)
{
    struct api_etcd_kv kv;
    struct api_err err;
    int64_t rev, rev2;
    int found;
    const char value[] = {'a', 0, (char)0xff, '=', '+', '/', 'z'};
    (void)state;
    assert_int_equal(api_etcd_put(e, "/t/bin", value, sizeof(value), 0, &rev, &err), API_OK);
    assert_true(rev > 0);
    assert_int_equal(api_etcd_get(e, "/t/bin", &kv, &found, &rev2, &err), API_OK);
    assert_true(found);
    assert_int_equal(kv.value_len, sizeof(value));
    assert_memory_equal(kv.value, value, sizeof(value));
    assert_int_equal(kv.mod_revision, rev);
    assert_int_equal(kv.create_revision, rev);
    assert_int_equal(kv.version, 1);
    assert_int_equal(kv.lease, 0);
    api_etcd_kv_fini(&kv);
    assert_int_equal(api_etcd_get(e, "/t/none", &kv, &found, NULL, &err), API_OK);
    assert_false(found);
}

static void range_prefix_pages_with_limit_and_start_after(void **state)
{
    struct api_etcd_kvs kvs;
    struct api_err err;
    char key[32];
    (void)state;
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof(key), "/p/k%d", i);
        assert_int_equal(api_etcd_put(e, key, "v", 1, 0, NULL, &err), API_OK);
    }
    assert_int_equal(api_etcd_put(e, "/p0", "outside", 7, 0, NULL, &err), API_OK);
    assert_int_equal(api_etcd_range_prefix(e, "/p/", NULL, 0, &kvs, &err), API_OK);
    assert_int_equal(kvs.n, 5);
    assert_string_equal(kvs.kvs[0].key, "/p/k0");
    assert_false(kvs.more);
    api_etcd_kvs_fini(&kvs);
    assert_int_equal(api_etcd_range_prefix(e, "/p/", NULL, 2, &kvs, &err), API_OK);
    assert_int_equal(kvs.n, 2);
    assert_true(kvs.more);
    api_etcd_kvs_fini(&kvs);
    assert_int_equal(api_etcd_range_prefix(e, "/p/", "/p/k2", 0, &kvs, &err), API_OK);
    assert_int_equal(kvs.n, 2);
    assert_string_equal(kvs.kvs[0].key, "/p/k3");
    assert_string_equal(kvs.kvs[1].key, "/p/k4");
    api_etcd_kvs_fini(&kvs);
}

static void delete_counts_single_keys_and_prefixes(void **state)
{
    struct api_err err;
    int64_t deleted = -1;
    (void)state;
    api_etcd_put(e, "/d/a", "1", 1, 0, NULL, &err);
    api_etcd_put(e, "/d/b", "1", 1, 0, NULL, &err);
    api_etcd_put(e, "/d/c", "1", 1, 0, NULL, &err);
    assert_int_equal(api_etcd_delete(e, "/d/a", 0, &deleted, &err), API_OK);
    assert_int_equal(deleted, 1);
    assert_int_equal(api_etcd_delete(e, "/d/a", 0, &deleted, &err), API_OK);
    assert_int_equal(deleted, 0);
    assert_int_equal(api_etcd_delete(e, "/d/", 1, &deleted, &err), API_OK);
    assert_int_equal(deleted, 2);
}

static void txn_acquire_fails_its_compare_and_reports_the_holder(void **state)
{
    struct api_err err;
    struct api_etcd_txn_result res;
    int64_t la, lb;
    (void)state;
    assert_int_equal(api_etcd_lease_grant(e, 30, &la, &err), API_OK);
    assert_int_equal(api_etcd_lease_grant(e, 30, &lb, &err), API_OK);
    struct api_etcd_cmp create0 = {.key = "/l/t1", .target = API_ETCD_CREATE, .result = API_ETCD_EQUAL, .number = 0};
    struct api_etcd_op put_a = {.kind = API_ETCD_OP_PUT, .key = "/l/t1", .value = "node-a", .value_len = 6, .lease = la};
    struct api_etcd_op put_b = {.kind = API_ETCD_OP_PUT, .key = "/l/t1", .value = "node-b", .value_len = 6, .lease = lb};
    struct api_etcd_op get = {.kind = API_ETCD_OP_GET, .key = "/l/t1"};
    assert_int_equal(api_etcd_txn(e, &create0, 1, &put_a, 1, &get, 1, &res, &err), API_OK);
    assert_true(res.succeeded);
    int64_t epoch = res.revision;
    api_etcd_txn_result_fini(&res);
    /* node-b loses and learns the holder */
    assert_int_equal(api_etcd_txn(e, &create0, 1, &put_b, 1, &get, 1, &res, &err), API_OK);
    assert_false(res.succeeded);
    assert_int_equal(res.ngets, 1);
    assert_int_equal(res.gets[0].n, 1);
    assert_string_equal(res.gets[0].kvs[0].value, "node-a");
    assert_int_equal(res.gets[0].kvs[0].mod_revision, epoch);
    assert_int_equal(res.gets[0].kvs[0].lease, la);
    api_etcd_txn_result_fini(&res);
    /* hand over with a compare on mod_revision: the new epoch is larger; a stale retry fails */
    struct api_etcd_cmp mod = {.key = "/l/t1", .target = API_ETCD_MOD, .result = API_ETCD_EQUAL, .number = epoch};
    assert_int_equal(api_etcd_txn(e, &mod, 1, &put_b, 1, NULL, 0, &res, &err), API_OK);
    assert_true(res.succeeded);
    assert_true(res.revision > epoch);
    api_etcd_txn_result_fini(&res);
    assert_int_equal(api_etcd_txn(e, &mod, 1, &put_b, 1, NULL, 0, &res, &err), API_OK);
    assert_false(res.succeeded);
    api_etcd_txn_result_fini(&res);
    /* release with value + lease compares */
    struct api_etcd_cmp mine[2] = {
        {.key = "/l/t1", .target = API_ETCD_VALUE, .result = API_ETCD_EQUAL, .value = "node-a", .value_len = 6},
        {.key = "/l/t1", .target = API_ETCD_LEASE, .result = API_ETCD_EQUAL, .number = la}};
    struct api_etcd_op del = {.kind = API_ETCD_OP_DELETE, .key = "/l/t1"};
    assert_int_equal(api_etcd_txn(e, mine, 2, &del, 1, NULL, 0, &res, &err), API_OK);
    assert_false(res.succeeded); /* node-a no longer holds it */
    api_etcd_txn_result_fini(&res);
    api_etcd_lease_revoke(e, la, &err);
    api_etcd_lease_revoke(e, lb, &err);
}

static void a_lease_not_kept_alive_expires_with_its_keys(void **state)
{
    struct api_err err;
    struct api_etcd_kv kv;
    int64_t lease, ttl;
    int found = 1;
    (void)state;
    assert_int_equal(api_etcd_lease_grant(e, 2, &lease, &err), API_OK);
    assert_int_equal(api_etcd_put(e, "/x/short", "v", 1, lease, NULL, &err), API_OK);
    assert_int_equal(api_etcd_lease_keepalive(e, lease, &ttl, &err), API_OK);
    assert_int_equal(ttl, 2);
    int64_t deadline = now_ms() + 10000;
    while (found && now_ms() < deadline) {
        assert_int_equal(api_etcd_get(e, "/x/short", &kv, &found, NULL, &err), API_OK);
        if (found)
            api_etcd_kv_fini(&kv);
        usleep(100000);
    }
    assert_false(found);
    assert_int_equal(api_etcd_lease_keepalive(e, lease, &ttl, &err), API_OK);
    assert_int_equal(ttl, 0); /* gone */
}

static void revoking_a_lease_deletes_its_keys_at_once(void **state)
{
    struct api_err err;
    struct api_etcd_kvs kvs;
    int64_t lease;
    char key[32];
    (void)state;
    assert_int_equal(api_etcd_lease_grant(e, 60, &lease, &err), API_OK);
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "/s/t%d", i);
        assert_int_equal(api_etcd_put(e, key, "x", 1, lease, NULL, &err), API_OK);
    }
    assert_int_equal(api_etcd_lease_revoke(e, lease, &err), API_OK);
    assert_int_equal(api_etcd_range_prefix(e, "/s/", NULL, 0, &kvs, &err), API_OK);
    assert_int_equal(kvs.n, 0);
    api_etcd_kvs_fini(&kvs);
    assert_int_equal(api_etcd_lease_revoke(e, lease, &err), API_ENOTFOUND);
    assert_int_equal(api_etcd_put(e, "/s/x", "v", 1, lease, NULL, &err), API_ENOTFOUND);
}

struct seen {
    pthread_mutex_t mu;
    char log[4096];
    int resyncs;
    size_t resync_n;
};

static void on_events(void *ud, const struct api_etcd_event *evs, size_t n, int64_t rev)
{
    struct seen *s = ud;
    (void)rev;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(s->log);
        snprintf(s->log + len, sizeof(s->log) - len, "%s %s=%s;", evs[i].type == API_ETCD_PUT ? "PUT" : "DEL",
                 evs[i].kv.key, evs[i].kv.value);
    }
    pthread_mutex_unlock(&s->mu);
}

static void on_resync(void *ud, const struct api_etcd_kvs *kvs)
{
    struct seen *s = ud;
    pthread_mutex_lock(&s->mu);
    s->resyncs++;
    s->resync_n = kvs->n;
    pthread_mutex_unlock(&s->mu);
}

static int wait_for(struct seen *s, const char *needle, int resyncs)
{
    int64_t deadline = now_ms() + 10000;
    while (now_ms() < deadline) {
        pthread_mutex_lock(&s->mu);
        int ok = strstr(s->log, needle) != NULL && s->resyncs >= resyncs;
        pthread_mutex_unlock(&s->mu);
        if (ok)
            return 1;
        usleep(20000);
    }
    return 0;
}

static void a_watch_sees_puts_and_deletes_in_order_and_stops_promptly(void **state)
{
    struct seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    struct api_etcd_watch *w;
    struct api_etcd_kvs kvs;
    struct api_err err;
    (void)state;
    assert_int_equal(api_etcd_range_prefix(e, "/w/", NULL, 0, &kvs, &err), API_OK);
    int64_t start = kvs.revision + 1;
    api_etcd_kvs_fini(&kvs);
    assert_int_equal(api_etcd_watch_start(e, "/w/", start, on_events, on_resync, &s, &w, &err), API_OK);
    api_etcd_put(e, "/w/a", "1", 1, 0, NULL, &err);
    api_etcd_put(e, "/w/a", "2", 1, 0, NULL, &err);
    api_etcd_put(e, "/other", "x", 1, 0, NULL, &err);
    api_etcd_delete(e, "/w/a", 0, NULL, &err);
    assert_true(wait_for(&s, "DEL /w/a=;", 0));
    assert_string_equal(s.log, "PUT /w/a=1;PUT /w/a=2;DEL /w/a=;");
    int64_t t0 = now_ms();
    api_etcd_watch_stop(w);
    assert_true(now_ms() - t0 < 3000);
}

static void a_watch_from_a_compacted_revision_resyncs_and_goes_on(void **state)
{
    struct seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    struct api_etcd_watch *w;
    struct api_err err;
    int64_t rev;
    char body[64], curl_url[128];
    (void)state;
    api_etcd_put(e, "/c/a", "1", 1, 0, NULL, &err);
    api_etcd_put(e, "/c/a", "2", 1, 0, &rev, &err);
    /* compact everything up to now */
    struct api_http_client *c = api_http_client_new();
    snprintf(body, sizeof(body), "{\"revision\":\"%lld\",\"physical\":true}", (long long)rev);
    snprintf(curl_url, sizeof(curl_url), "%s/v3/kv/compaction", url);
    struct api_http_req rq = {.method = "POST", .url = curl_url, .body = body, .body_len = strlen(body),
                              .timeout_ms = 5000};
    struct api_http_resp resp;
    assert_int_equal(api_http_do(c, &rq, &resp, &err), API_OK);
    assert_int_equal(resp.status, 200);
    api_http_resp_fini(&resp);
    api_http_client_free(c);
    api_etcd_put(e, "/c/b", "3", 1, 0, NULL, &err);
    assert_int_equal(api_etcd_watch_start(e, "/c/", 1, on_events, on_resync, &s, &w, &err), API_OK);
    assert_true(wait_for(&s, "", 1));
    pthread_mutex_lock(&s.mu);
    assert_int_equal(s.resync_n, 2); /* the fresh read holds /c/a and /c/b */
    assert_string_equal(s.log, "");  /* nothing from before it came as an event */
    pthread_mutex_unlock(&s.mu);
    api_etcd_put(e, "/c/d", "4", 1, 0, NULL, &err);
    assert_true(wait_for(&s, "PUT /c/d=4;", 1));
    assert_int_equal(s.resyncs, 1);
    api_etcd_watch_stop(w);
}

static void an_unreachable_endpoint_is_an_etcd_error_and_the_next_one_is_tried(void **state)
{
    struct api_etcd *dead, *both;
    struct api_err err;
    struct api_etcd_kv kv;
    int found;
    char eps[160];
    (void)state;
    assert_int_equal(api_etcd_new("http://127.0.0.1:1", &dead, &err), API_OK);
    assert_int_equal(api_etcd_get(dead, "/x", &kv, &found, NULL, &err), API_EETCD);
    assert_non_null(strstr(err.msg, "get /x"));
    api_etcd_free(dead);
    snprintf(eps, sizeof(eps), "http://127.0.0.1:1,%s", url);
    assert_int_equal(api_etcd_new(eps, &both, &err), API_OK);
    assert_int_equal(api_etcd_put(both, "/two", "ok", 2, 0, NULL, &err), API_OK);
    assert_int_equal(api_etcd_get(both, "/two", &kv, &found, NULL, &err), API_OK);
    assert_true(found);
    api_etcd_kv_fini(&kv);
    api_etcd_free(both);
    assert_int_equal(api_etcd_new("ftp://x", &dead, &err), API_EINVAL);
    assert_int_equal(api_etcd_new("", &dead, &err), API_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(put_and_get_round_trip_binary_values),
        cmocka_unit_test(range_prefix_pages_with_limit_and_start_after),
        cmocka_unit_test(delete_counts_single_keys_and_prefixes),
        cmocka_unit_test(txn_acquire_fails_its_compare_and_reports_the_holder),
        cmocka_unit_test(a_lease_not_kept_alive_expires_with_its_keys),
        cmocka_unit_test(revoking_a_lease_deletes_its_keys_at_once),
        cmocka_unit_test(a_watch_sees_puts_and_deletes_in_order_and_stops_promptly),
        cmocka_unit_test(a_watch_from_a_compacted_revision_resyncs_and_goes_on),
        cmocka_unit_test(an_unreachable_endpoint_is_an_etcd_error_and_the_next_one_is_tried),
    };
    return cmocka_run_group_tests_name("etcd", tests, setup, teardown);
}
