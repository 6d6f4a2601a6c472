/*
 * Unit tests for api/: the error table, the hash map, flag parsing, and the
 * HTTP server framework driven over real loopback HTTP (routing with
 * parameters, 404/405/413 in the contract's JSON shape, query decoding,
 * deferred replies finished from worker threads, CORS preflight), with one
 * event loop and with three (api_server_set_loops).
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "api/cluster.h"
#include "api/err.h"
#include "api/flags.h"
#include "api/http.h"
#include "api/jsonin.h"
#include "api/jsonout.h"
#include "api/map.h"
#include "api/server.h"
#include "api/workq.h"

/* ---- error table ---- */

static void error_codes_map_to_statuses_and_json_codes(void **state)
{
    (void)state;
    assert_int_equal(api_err_http_status(API_ENOTENANT), 404);
    assert_string_equal(api_err_json_code(API_ENOTENANT), "tenant_not_found");
    assert_int_equal(api_err_http_status(API_ETENANTEXISTS), 409);
    assert_string_equal(api_err_json_code(API_EBADTENANT), "invalid_tenant_id");
    assert_int_equal(api_err_http_status(API_EREPLAYLOOP), 508);
    assert_int_equal(api_err_http_status(API_ENOCAPACITY), 503);
    assert_string_equal(api_err_json_code(API_ENOCAPACITY), "no_capacity");
    assert_int_equal(api_err_http_status(-1), 500);
    assert_int_equal(api_err_http_status(API_ERR_COUNT), 500);
    assert_string_equal(api_err_name(API_ETOOLARGE), "API_ETOOLARGE");
}

static void error_wrap_prefixes_context_and_keeps_code(void **state)
{
    struct api_err err;
    (void)state;
    assert_int_equal(api_err_set(&err, API_ECONFLICT, "lease held by %s", "n2"), API_ECONFLICT);
    assert_int_equal(api_err_wrap(&err, "tenant '%s'", "acme"), API_ECONFLICT);
    assert_string_equal(err.msg, "tenant 'acme': lease held by n2");
    char big[2000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    api_err_set(&err, API_EIO, "%s", big);
    api_err_wrap(&err, "ctx");
    assert_int_equal(strlen(err.msg), API_ERR_MSG_MAX - 1);
    assert_int_equal(strncmp(err.msg, "ctx: x", 6), 0);
}

/* ---- map ---- */

static void map_puts_gets_and_deletes_many_keys(void **state)
{
    struct api_map *m = api_map_new();
    char key[32];
    int oom;
    (void)state;
    for (long i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "tenant-%ld", i);
        assert_null(api_map_put(m, key, (void *)(i + 1), &oom));
        assert_int_equal(oom, 0);
    }
    assert_int_equal(api_map_len(m), 20000);
    for (long i = 0; i < 20000; i += 7) {
        snprintf(key, sizeof(key), "tenant-%ld", i);
        assert_ptr_equal(api_map_get(m, key), (void *)(i + 1));
    }
    assert_ptr_equal(api_map_put(m, "tenant-5", (void *)99, &oom), (void *)6);
    assert_ptr_equal(api_map_del(m, "tenant-5"), (void *)99);
    assert_null(api_map_get(m, "tenant-5"));
    assert_null(api_map_del(m, "tenant-5"));
    assert_int_equal(api_map_len(m), 19999);
    api_map_free(m, NULL);
}

/* A worker slot's map holds the tenants whose api_hash_str is alike in
 * its low bits (slot = hash % slots): they must still spread over the
 * buckets, or each lookup walks one long chain. */
static void map_spreads_keys_alike_in_their_low_hash_bits(void **state)
{
    struct api_map *m = api_map_new();
    char key[32];
    int oom, found = 0;
    (void)state;
    for (long i = 0; found < 400; i++) {
        snprintf(key, sizeof(key), "d%ld", i);
        if ((api_hash_str(key, strlen(key)) & 63) != 5) /* one slot of 64 */
            continue;
        assert_null(api_map_put(m, key, (void *)(i + 1), &oom));
        found++;
        if (found == 16) /* a slot's share of 1,000 tenants: the map has not grown yet */
            assert_true(api_map_longest_chain(m) <= 4);
    }
    assert_true(api_map_longest_chain(m) <= 8);
    api_map_free(m, NULL);
}

/* ---- flags ---- */

static void flags_parse_values_and_report_bad_usage(void **state)
{
    const char *node = NULL;
    int64_t ttl = 10;
    size_t body = 0;
    (void)state;
    struct api_flag f1[] = {{"node", API_FLAG_STRING, &node, 1, "", 0},
                            {"lease-ttl", API_FLAG_INT, &ttl, 0, "", 0},
                            {"max-body", API_FLAG_SIZE, &body, 0, "", 0},
                            {NULL, 0, NULL, 0, NULL, 0}};
    char *ok[] = {"p", "--node", "n1", "--lease-ttl=3", "--max-body", "42", NULL};
    assert_int_equal(api_flags_parse(6, ok, "p", "", f1), -1);
    assert_string_equal(node, "n1");
    assert_int_equal(ttl, 3);
    assert_int_equal(body, 42);

    struct api_flag f2[] = {{"node", API_FLAG_STRING, &node, 1, "", 0}, {NULL, 0, NULL, 0, NULL, 0}};
    char *missing[] = {"p", NULL};
    assert_int_equal(api_flags_parse(1, missing, "p", "", f2), 2);
    struct api_flag f3[] = {{"lease-ttl", API_FLAG_INT, &ttl, 0, "", 0}, {NULL, 0, NULL, 0, NULL, 0}};
    char *badnum[] = {"p", "--lease-ttl", "ten", NULL};
    assert_int_equal(api_flags_parse(3, badnum, "p", "", f3), 2);
    char *unknown[] = {"p", "--nope", NULL};
    assert_int_equal(api_flags_parse(2, unknown, "p", "", f3), 2);
    char *novalue[] = {"p", "--lease-ttl", NULL};
    assert_int_equal(api_flags_parse(2, novalue, "p", "", f3), 2);
}

/* ---- server ---- */

struct fixture {
    struct api_server *server;
    struct api_workq *workers;
    pthread_t loop;
    struct api_http_client *http;
    char base[64];
};

static void on_tenant(struct api_req *r, void *ud)
{
    size_t len;
    const char *id = api_req_param(r, "id", &len);
    char q[64] = "";
    int has = api_req_query(r, "q", q, sizeof(q));
    (void)ud;
    api_reply_json(r, 200, json_pack("{s:s%,s:s,s:i}", "id", id, len, "q", q, "has_q", has));
}

struct slow_job {
    struct api_pending *p;
    char word[16];
};

/* "hold" replies once released (at most 10 s): a reply outstanding for as
 * long as a test wants. */
static atomic_int hold_released;

static void slow_job(void *arg)
{
    struct slow_job *j = arg;
    if (strcmp(j->word, "hold") == 0)
        for (int i = 0; i < 10000 && !atomic_load(&hold_released); i++)
            usleep(1000);
    struct api_resp *resp = api_resp_new(202);
    api_resp_add_header(resp, "x-worker", "yes");
    api_resp_set_json(resp, 202, json_pack("{s:s}", "word", j->word));
    api_pending_finish(j->p, resp);
    free(j);
}

static void on_deferred(struct api_req *r, void *ud)
{
    struct fixture *f = ud;
    struct slow_job *j = calloc(1, sizeof(*j));
    size_t len;
    const char *w = api_req_param(r, "word", &len);
    snprintf(j->word, sizeof(j->word), "%.*s", (int)len, w);
    j->p = api_req_defer(r);
    api_pending_soon(j->p);
    api_workq_submit(f->workers, 1, slow_job, j);
}

/* Streamed replies: the worker reports what its writes returned. */
struct stream_probe {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, saw_gone, saw_timeout, gone_after;
    size_t written;
};
static struct stream_probe probe = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0};

#define STREAM_LINES 200000 /* about 2.3 MB: more than API_STREAM_MAX_QUEUED */

static void stream_job(void *arg)
{
    struct slow_job *j = arg;
    struct api_resp *head = api_resp_new(200);
    struct api_stream *st;
    char line[32];
    int rc = API_OK;
    size_t written = 0;

    api_resp_set_body(head, "text/plain", "", 0);
    api_resp_add_header(head, "x-stream", "yes");
    st = api_pending_stream(j->p, head);
    assert_non_null(st);
    if (strcmp(j->word, "lines") == 0) {
        for (int i = 0; i < STREAM_LINES && rc == API_OK; i++) {
            int n = snprintf(line, sizeof(line), "line %d\n", i);
            rc = api_stream_write(st, line, (size_t)n, api_now_ms() + 5000);
        }
        assert_int_equal(rc, API_OK);
        api_stream_end(st);
    } else if (strcmp(j->word, "abort") == 0) {
        api_stream_write(st, "partial\n", 8, api_now_ms() + 5000);
        api_stream_abort(st);
    } else { /* "forever" (2 s per write) or "stall" (200 ms): until the client leaves or stops reading */
        static char block[16384];
        int64_t wait = strcmp(j->word, "stall") == 0 ? 200 : 2000;
        memset(block, 'x', sizeof(block));
        while ((rc = api_stream_write(st, block, sizeof(block), api_now_ms() + wait)) == API_OK &&
               written < ((size_t)512 << 20))
            written += sizeof(block);
        pthread_mutex_lock(&probe.mu);
        probe.saw_gone = rc == API_EIO;
        probe.gone_after = api_stream_gone(st);
        probe.saw_timeout = rc == API_ETIMEOUT;
        probe.written = written;
        pthread_mutex_unlock(&probe.mu);
        /* writes after the client left are dropped at once */
        if (rc == API_EIO)
            assert_int_equal(api_stream_write(st, "x", 1, api_now_ms() + 60000), API_EIO);
        api_stream_end(st);
    }
    pthread_mutex_lock(&probe.mu);
    probe.done = 1;
    pthread_cond_broadcast(&probe.cv);
    pthread_mutex_unlock(&probe.mu);
    free(j);
}

static void on_stream(struct api_req *r, void *ud)
{
    struct fixture *f = ud;
    struct slow_job *j = calloc(1, sizeof(*j));
    size_t len;
    const char *w = api_req_param(r, "mode", &len);
    snprintf(j->word, sizeof(j->word), "%.*s", (int)len, w);
    j->p = api_req_defer(r);
    api_pending_soon(j->p);
    api_workq_submit(f->workers, 2, stream_job, j);
}

static void on_echo_json(struct api_req *r, void *ud)
{
    json_t *doc;
    struct api_err err;
    (void)ud;
    if (api_req_json_object(r, &doc, &err) != API_OK) {
        api_reply_error(r, &err);
        return;
    }
    api_reply_json(r, 200, doc);
}

/* Which thread ran the handler: each event loop has its own. */
static void on_whoami(struct api_req *r, void *ud)
{
    char id[32];
    (void)ud;
    snprintf(id, sizeof(id), "%lu", (unsigned long)pthread_self());
    api_reply_json(r, 200, json_pack("{s:s}", "thread", id));
}

/* Requests gathered over a loop's turn and answered together at its end
 * (api_server_end_of_turn), on that loop's thread. */
struct gathered {
    struct gathered *next;
    struct api_pending *p;
    char word[32];
    uint64_t turn;
};
static __thread struct gathered *tl_gathered;
static atomic_int gather_runs, gather_runs_empty, gathered_answers;

static void answer_gathered(void *arg)
{
    struct fixture *f = arg;
    struct gathered *g = tl_gathered, *next;
    int together = 0;

    tl_gathered = NULL;
    for (struct gathered *x = g; x != NULL; x = x->next)
        together++;
    atomic_fetch_add(&gather_runs, 1);
    if (together == 0)
        atomic_fetch_add(&gather_runs_empty, 1); /* asked for twice in one turn */
    for (; g != NULL; g = next) {
        next = g->next;
        struct api_resp *resp = api_resp_new(200);
        api_resp_set_json(resp, 200,
                          json_pack("{s:s,s:i,s:b}", "word", g->word, "together", together, "same_turn",
                                    g->turn == api_server_turn(f->server)));
        api_pending_reply(g->p, resp);
        atomic_fetch_add(&gathered_answers, 1);
        free(g);
    }
}

static void on_gather(struct api_req *r, void *ud)
{
    struct fixture *f = ud;
    struct gathered *g = calloc(1, sizeof(*g));
    size_t len;
    const char *w = api_req_param(r, "word", &len);
    snprintf(g->word, sizeof(g->word), "%.*s", (int)len, w);
    g->turn = api_server_turn(f->server);
    g->p = api_req_defer(r);
    g->next = tl_gathered;
    tl_gathered = g;
    api_server_end_of_turn(r, answer_gathered, f);
    api_server_end_of_turn(r, answer_gathered, f); /* asked twice in one turn: runs once */
}

static void *run_loop(void *arg)
{
    api_server_run(arg);
    return NULL;
}

static int setup_server_with_loops(void **state, size_t loops, int64_t spin_us)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct api_server_config cfg = {.listen = "127.0.0.1:0", .max_body = 1024, .cors = 1};
    struct api_err err;

    assert_int_equal(api_server_new(&cfg, &f->server, &err), API_OK);
    assert_int_equal(api_workq_new(2, 0, NULL, &f->workers, &err), API_OK);
    api_server_route(f->server, "GET", "/v1/tenants/{id}", on_tenant, f);
    api_server_route(f->server, "GET", "/slow/{word}", on_deferred, f);
    api_server_route(f->server, "POST", "/echo", on_echo_json, f);
    api_server_route(f->server, "GET", "/stream/{mode}", on_stream, f);
    api_server_route(f->server, "GET", "/whoami", on_whoami, f);
    api_server_route(f->server, "GET", "/gather/{word}", on_gather, f);
    api_server_set_loops(f->server, loops, NULL);
    api_server_set_spin(f->server, spin_us);
    api_workq_set_spin(f->workers, spin_us);
    snprintf(f->base, sizeof(f->base), "%s", api_server_url(f->server));
    assert_int_equal(pthread_create(&f->loop, NULL, run_loop, f->server), 0);
    f->http = api_http_client_new();
    *state = f;
    return 0;
}

/* One loop and a pool that both spin far longer than any test (10 s),
 * so every wait for a worker's reply is a spin. */
static int setup_server_spinning(void **state)
{
    return setup_server_with_loops(state, 1, 10 * 1000 * 1000);
}

static int setup_server(void **state)
{
    return setup_server_with_loops(state, 1, 0);
}

static int setup_server_3_loops(void **state)
{
    return setup_server_with_loops(state, 3, 0);
}

static int teardown_server(void **state)
{
    struct fixture *f = *state;
    api_http_client_free(f->http);
    api_server_stop(f->server);
    pthread_join(f->loop, NULL);
    api_workq_free(f->workers);
    api_server_free(f->server);
    free(f);
    return 0;
}

static long request(struct fixture *f, const char *method, const char *path, const char *body, json_t **out,
                    struct api_http_resp *keep)
{
    char url[256];
    struct api_http_resp resp;
    struct api_err err;
    snprintf(url, sizeof(url), "%s%s", f->base, path);
    struct api_http_req rq = {.method = method, .url = url, .body = body, .body_len = body ? strlen(body) : 0,
                              .timeout_ms = 5000};
    assert_int_equal(api_http_do(f->http, &rq, &resp, &err), API_OK);
    long status = resp.status;
    if (out != NULL)
        *out = json_loadb(resp.body, resp.body_len, 0, NULL);
    if (keep != NULL)
        *keep = resp;
    else
        api_http_resp_fini(&resp);
    return status;
}

static void server_routes_by_pattern_and_captures_raw_segments(void **state)
{
    struct fixture *f = *state;
    json_t *doc;
    assert_int_equal(request(f, "GET", "/v1/tenants/acme?q=a%20b+c&x=1", NULL, &doc, NULL), 200);
    assert_string_equal(json_string_value(json_object_get(doc, "id")), "acme");
    assert_string_equal(json_string_value(json_object_get(doc, "q")), "a b c");
    json_decref(doc);
    /* the segment is raw: an encoded slash stays visible to validation */
    assert_int_equal(request(f, "GET", "/v1/tenants/..%2fx", NULL, &doc, NULL), 200);
    assert_string_equal(json_string_value(json_object_get(doc, "id")), "..%2fx");
    assert_int_equal(json_integer_value(json_object_get(doc, "has_q")), 0);
    json_decref(doc);
    /* a bad percent escape in the query is reported as such */
    assert_int_equal(request(f, "GET", "/v1/tenants/acme?q=%zz", NULL, &doc, NULL), 200);
    assert_int_equal(json_integer_value(json_object_get(doc, "has_q")), -1);
    json_decref(doc);
}

static void server_answers_404_405_and_413_as_json_errors(void **state)
{
    struct fixture *f = *state;
    json_t *doc;
    assert_int_equal(request(f, "GET", "/nope", NULL, &doc, NULL), 404);
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "error"), "code")), "not_found");
    json_decref(doc);
    assert_int_equal(request(f, "GET", "/v1/tenants/acme/extra", NULL, &doc, NULL), 404);
    json_decref(doc);
    assert_int_equal(request(f, "DELETE", "/v1/tenants/acme", NULL, &doc, NULL), 405);
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "error"), "code")),
                        "method_not_allowed");
    json_decref(doc);
    char big[1500];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(request(f, "POST", "/echo", big, NULL, NULL), 413);
}

static void server_parses_json_bodies_and_rejects_bad_ones(void **state)
{
    struct fixture *f = *state;
    json_t *doc;
    assert_int_equal(request(f, "POST", "/echo", "{\"a\":[1,2]}", &doc, NULL), 200);
    assert_int_equal(json_array_size(json_object_get(doc, "a")), 2);
    json_decref(doc);
    assert_int_equal(request(f, "POST", "/echo", "{\"a\":", &doc, NULL), 400);
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "error"), "code")), "invalid_json");
    json_decref(doc);
    assert_int_equal(request(f, "POST", "/echo", "[1]", &doc, NULL), 400);
    json_decref(doc);
    assert_int_equal(request(f, "POST", "/echo", "{\"a\":1,\"a\":2}", &doc, NULL), 400);
    json_decref(doc);
    assert_int_equal(request(f, "POST", "/echo", "", &doc, NULL), 400);
    json_decref(doc);
}

static void server_sends_replies_finished_on_worker_threads(void **state)
{
    struct fixture *f = *state;
    struct api_http_resp resp;
    json_t *doc;
    for (int i = 0; i < 50; i++) {
        assert_int_equal(request(f, "GET", "/slow/hello", NULL, &doc, &resp), 202);
        assert_string_equal(json_string_value(json_object_get(doc, "word")), "hello");
        assert_non_null(api_http_resp_header(&resp, "x-worker"));
        assert_string_equal(api_http_resp_header(&resp, "access-control-allow-origin"), "*");
        json_decref(doc);
        api_http_resp_fini(&resp);
    }
}

static void probe_reset(void)
{
    pthread_mutex_lock(&probe.mu);
    probe.done = probe.saw_gone = probe.saw_timeout = probe.gone_after = 0;
    probe.written = 0;
    pthread_mutex_unlock(&probe.mu);
}

/* Waits up to 10 s for the stream worker to finish. */
static int probe_wait(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    pthread_mutex_lock(&probe.mu);
    while (!probe.done && pthread_cond_timedwait(&probe.cv, &probe.mu, &ts) == 0)
        ;
    int done = probe.done;
    pthread_mutex_unlock(&probe.mu);
    return done;
}

/* A raw HTTP/1.1 connection that sent GET PATH. */
static int raw_request(struct fixture *f, const char *path)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(api_server_port(f->server))};
    struct timeval tv = {.tv_sec = 10};
    char req[256];
    int fd = socket(AF_INET, SOCK_STREAM, 0), n;
    assert_true(fd >= 0);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    return fd;
}

/* A loop spinning for one outstanding reply still serves its other
 * connections, and the reply still arrives. */
static void server_spinning_for_a_reply_serves_other_connections(void **state)
{
    struct fixture *f = *state;
    char buf[1024];
    size_t len = 0;
    ssize_t n;
    json_t *doc;

    atomic_store(&hold_released, 0);
    int fd = raw_request(f, "/slow/hold");
    for (int i = 0; i < 20; i++) { /* the loop spins for /slow/hold meanwhile */
        assert_int_equal(request(f, "GET", "/v1/tenants/abc", NULL, &doc, NULL), 200);
        assert_string_equal(json_string_value(json_object_get(doc, "id")), "abc");
        json_decref(doc);
    }
    atomic_store(&hold_released, 1);
    while (len < sizeof(buf) - 1 && (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0) {
        len += (size_t)n;
        buf[len] = '\0';
        if (strstr(buf, "\"hold\"") != NULL)
            break;
    }
    close(fd);
    buf[len] = '\0';
    assert_non_null(strstr(buf, "HTTP/1.1 202"));
    assert_non_null(strstr(buf, "{\"word\":\"hold\"}"));
}

static void server_streams_replies_written_on_worker_threads(void **state)
{
    struct fixture *f = *state;
    struct api_http_resp resp;
    size_t want = 0;
    char line[32];
    for (int i = 0; i < STREAM_LINES; i++)
        want += (size_t)snprintf(line, sizeof(line), "line %d\n", i);
    for (int round = 0; round < 3; round++) { /* the connection is reused after a chunked reply */
        probe_reset();
        assert_int_equal(request(f, "GET", "/stream/lines", NULL, NULL, &resp), 200);
        assert_string_equal(api_http_resp_header(&resp, "x-stream"), "yes");
        assert_string_equal(api_http_resp_header(&resp, "content-type"), "text/plain");
        assert_null(api_http_resp_header(&resp, "content-length"));
        assert_string_equal(api_http_resp_header(&resp, "transfer-encoding"), "chunked");
        assert_int_equal(resp.body_len, want);
        assert_memory_equal(resp.body, "line 0\nline 1\n", 14);
        assert_memory_equal(resp.body + want - 12, "line 199999\n", 12);
        api_http_resp_fini(&resp);
        assert_true(probe_wait());
    }
}

static void server_stream_abort_truncates_the_reply(void **state)
{
    struct fixture *f = *state;
    char buf[4096];
    size_t len = 0;
    ssize_t n;
    probe_reset();
    int fd = raw_request(f, "/stream/abort");
    while ((n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
        len += (size_t)n;
    buf[len] = '\0';
    close(fd);
    assert_int_equal(n, 0); /* the server closed the connection */
    assert_non_null(strstr(buf, "HTTP/1.1 200"));
    assert_non_null(strstr(buf, "transfer-encoding: chunked"));
    assert_null(strstr(buf, "\r\n0\r\n\r\n")); /* never the last chunk */
    assert_true(probe_wait());
}

static void server_stream_tells_the_worker_when_the_client_leaves(void **state)
{
    struct fixture *f = *state;
    char buf[16384];
    size_t got = 0;
    ssize_t n;
    probe_reset();
    int fd = raw_request(f, "/stream/forever");
    while (got < 256 * 1024 && (n = read(fd, buf, sizeof(buf))) > 0)
        got += (size_t)n;
    close(fd); /* unread data: the kernel resets the connection */
    assert_true(probe_wait());
    assert_true(probe.saw_gone);
    assert_true(probe.gone_after);
    assert_false(probe.saw_timeout);
}

static void server_stream_write_times_out_when_the_client_stops_reading(void **state)
{
    struct fixture *f = *state;
    probe_reset();
    int fd = raw_request(f, "/stream/stall");
    assert_true(probe_wait()); /* the writer was not blocked for good */
    assert_true(probe.saw_timeout);
    /* what it got rid of fits the socket buffers and the 1 MiB queue */
    assert_true(probe.written < ((size_t)64 << 20));
    assert_true(probe.written > API_STREAM_MAX_QUEUED);
    close(fd);
}

/* The body of the reply on FD (a raw_request), up to CAP - 1 bytes. */
static void read_reply_body(int fd, char *out, size_t cap)
{
    char buf[2048];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof(buf) - 1 && (n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0) {
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n") != NULL && buf[got - 1] == '}')
            break;
    }
    buf[got] = '\0';
    const char *body = strstr(buf, "\r\n\r\n");
    snprintf(out, cap, "%s", body != NULL ? body + 4 : "");
}

static void server_spreads_connections_over_its_loops(void **state)
{
    struct fixture *f = *state;
    char seen[6][128];
    size_t distinct = 0;
    for (int i = 0; i < 6; i++) {
        int fd = raw_request(f, "/whoami");
        read_reply_body(fd, seen[i], sizeof(seen[i]));
        close(fd);
        assert_non_null(strstr(seen[i], "\"thread\""));
        int dup = 0;
        for (int k = 0; k < i; k++)
            dup |= strcmp(seen[k], seen[i]) == 0;
        distinct += !dup;
    }
    /* connections go to the three loops in turn */
    assert_int_equal(distinct, 3);
    char m[1024];
    size_t len = 0;
    api_server_metrics(f->server, "t", m, sizeof(m), &len);
    m[len < sizeof(m) ? len : sizeof(m) - 1] = '\0';
    assert_non_null(strstr(m, "t_http_requests_total 6\n"));
    assert_non_null(strstr(m, "t_http_responses_total{class=\"2xx\"} 6\n"));
}

/* Every request a handler gathered is answered by the one call it asked
 * for at the end of its loop's turn: in that same turn, once per turn
 * however often it was asked, on the loop that read the request. */
static void server_runs_end_of_turn_calls_after_the_turns_requests(void **state)
{
    struct fixture *f = *state;
    enum { CONNS = 12 };
    int fds[CONNS];
    char path[64], body[256], want[64];

    atomic_store(&gather_runs, 0);
    atomic_store(&gather_runs_empty, 0);
    atomic_store(&gathered_answers, 0);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < CONNS; i++) { /* all sent before any is read: turns may take several */
            snprintf(path, sizeof(path), "/gather/w%d-%d", round, i);
            fds[i] = raw_request(f, path);
        }
        for (int i = 0; i < CONNS; i++) {
            read_reply_body(fds[i], body, sizeof(body));
            close(fds[i]);
            snprintf(want, sizeof(want), "\"word\":\"w%d-%d\"", round, i);
            assert_non_null(strstr(body, want));
            assert_non_null(strstr(body, "\"same_turn\":true"));
        }
    }
    assert_int_equal(atomic_load(&gathered_answers), 3 * CONNS);
    int runs = atomic_load(&gather_runs);
    assert_true(runs >= 1 && runs <= 3 * CONNS);
    assert_int_equal(atomic_load(&gather_runs_empty), 0);
}

static void server_answers_cors_preflight(void **state)
{
    struct fixture *f = *state;
    struct api_http_resp resp;
    assert_int_equal(request(f, "OPTIONS", "/v1/tenants/acme", NULL, NULL, &resp), 204);
    assert_non_null(strstr(api_http_resp_header(&resp, "access-control-allow-headers"), "authorization"));
    api_http_resp_fini(&resp);
}

/* api_json_encode writes exactly what json_dumps(JSON_COMPACT) writes:
 * fixed edge cases, then 2,000 random trees (deterministic seed). */
static uint64_t rnd_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

static json_t *random_value(int depth)
{
    static const char *const pieces[] = {"a", "\"", "\\", "/", "\n", "\t", "\x01", "\x1f", "\x7f", "\xc3\xa9",
                                         "\xe2\x82\xac", "\xf0\x9f\x90\x9f", " ", "key", "0"};
    int kind = (int)(rnd() % (depth > 4 ? 6 : 8));
    switch (kind) {
    case 0: return json_null();
    case 1: return json_boolean(rnd() & 1);
    case 2: {
        static const json_int_t edges[] = {0, -1, 1, INT64_MAX, INT64_MIN, 1000000007};
        return json_integer(rnd() & 1 ? edges[rnd() % 6] : (json_int_t)rnd());
    }
    case 3: {
        double d;
        uint64_t bits = rnd();
        memcpy(&d, &bits, sizeof(d));
        if (!isfinite(d))
            d = (double)(int64_t)rnd() / 1024.0;
        if (rnd() % 4 == 0)
            d = (double)(rnd() % 100000) * (rnd() & 1 ? 1e20 : 1e-9);
        return json_real(d);
    }
    case 4:
    case 5: {
        char text[256] = "";
        size_t n = rnd() % 12;
        for (size_t i = 0; i < n; i++)
            strcat(text, pieces[rnd() % (sizeof(pieces) / sizeof(pieces[0]))]);
        return json_string(text);
    }
    case 6: {
        json_t *a = json_array();
        for (size_t i = rnd() % 5; i > 0; i--)
            json_array_append_new(a, random_value(depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (size_t i = rnd() % 5; i > 0; i--) {
            char key[32];
            snprintf(key, sizeof(key), "%s%u", rnd() & 1 ? "k\"\n" : "name", (unsigned)(rnd() % 50));
            json_object_set_new(o, key, random_value(depth + 1));
        }
        return o;
    }
    }
}

static void json_encoding_matches_jansson_byte_for_byte(void **state)
{
    (void)state;
    static const char *const fixed[] = {
        "{\"a\":[1,2.5,-0.0,1e300,1e-300,0.1,\"x\\u0000y\",true,false,null],\"b\":{}}",
        "[[],{},\"\\u00e9\\u20ac\\ud83d\\udc1f\",\"\\/ \\\" \\\\ \\b\\f\\n\\r\\t \\u007f\"]",
        "[100000000000000000000.0,1e21,123456789012345678,-9223372036854775808,5e-324]", "3", "\"s\"", "null"};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]) + 2000; i++) {
        json_t *doc = i < sizeof(fixed) / sizeof(fixed[0]) ? json_loads(fixed[i], JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL)
                                                           : random_value(0);
        assert_non_null(doc);
        char *want = json_dumps(doc, JSON_COMPACT | JSON_ENCODE_ANY);
        size_t len = 0;
        char *got = api_json_encode(doc, &len);
        assert_non_null(want);
        assert_non_null(got);
        assert_string_equal(got, want);
        assert_int_equal(len, strlen(want));
        free(want);
        free(got);
        json_decref(doc);
    }
}

/* The writer (struct api_jw) gives the same text for the same tree: the
 * random trees above, with plain keys (api_jw_key writes keys as given),
 * written value by value; plus marks, failures and UTF-8 checks. */
static json_t *plain_keys(const json_t *v)
{
    if (json_is_array(v)) {
        json_t *a = json_array();
        for (size_t i = 0; i < json_array_size(v); i++)
            json_array_append_new(a, plain_keys(json_array_get(v, i)));
        return a;
    }
    if (json_is_object(v)) {
        json_t *o = json_object(), *item;
        const char *key;
        json_object_foreach((json_t *)v, key, item) {
            char k[64];
            snprintf(k, sizeof(k), "%s", key);
            for (char *c = k; *c; c++)
                if (*c == '"' || *c == '\n')
                    *c = '_';
            json_object_set_new(o, k, plain_keys(item));
        }
        return o;
    }
    return json_deep_copy(v);
}

static void write_tree(struct api_jw *w, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *item;
        api_jw_object(w);
        json_object_foreach((json_t *)v, key, item) {
            api_jw_key(w, key);
            write_tree(w, item);
        }
        api_jw_object_end(w);
        break;
    }
    case JSON_ARRAY:
        api_jw_array(w);
        for (size_t i = 0; i < json_array_size(v); i++)
            write_tree(w, json_array_get(v, i));
        api_jw_array_end(w);
        break;
    case JSON_STRING: api_jw_string(w, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER: api_jw_int(w, (long long)json_integer_value(v)); break;
    case JSON_REAL: api_jw_real(w, json_real_value(v)); break;
    case JSON_TRUE: api_jw_bool(w, 1); break;
    case JSON_FALSE: api_jw_bool(w, 0); break;
    case JSON_NULL: api_jw_null(w); break;
    }
}

static void json_writer_matches_jansson_and_rewinds(void **state)
{
    (void)state;
    rnd_state = 0x243f6a8885a308d3ULL;
    for (int i = 0; i < 2000; i++) {
        json_t *raw = random_value(0), *doc = plain_keys(raw);
        struct api_jw w = API_JW_INIT;
        /* the same tree inside an array, twice: once by the walker, once whole */
        api_jw_array(&w);
        write_tree(&w, doc);
        api_jw_json(&w, doc);
        api_jw_array_end(&w);
        json_t *pair = json_pack("[OO]", doc, doc);
        char *want = json_dumps(pair, JSON_COMPACT), *got = api_jw_finish(&w, NULL);
        assert_non_null(got);
        assert_string_equal(got, want);
        free(want);
        free(got);
        json_decref(pair);
        json_decref(doc);
        json_decref(raw);
    }
    /* strings are scanned eight bytes at a time: each kind of byte at each
     * place of strings up to 40 bytes long */
    static const char *const kinds[] = {"\"", "\\", "\x01", "\x1f", "\n", " ", "~", "\x7f", "\xc3\xa9", "\xe2\x82\xac"};
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
        for (size_t len = 0; len <= 40; len++)
            for (size_t at = 0; at <= len; at++) {
                char text[64];
                int n = snprintf(text, sizeof(text), "%.*s%s%.*s", (int)at, "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH",
                                 kinds[k], (int)(len - at), "ijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP");
                struct api_jw w = API_JW_INIT;
                api_jw_string(&w, text, (size_t)n);
                json_t *str = json_stringn(text, (size_t)n);
                char *want = json_dumps(str, JSON_COMPACT | JSON_ENCODE_ANY), *got = api_jw_finish(&w, NULL);
                assert_non_null(got);
                assert_string_equal(got, want);
                free(want);
                free(got);
                json_decref(str);
            }
    /* integral reals take a path of their own: the same text as %.17g */
    static const double reals[] = {0.0, -0.0, 1.0, -1.0, 42.0, 999999999999999.0, -999999999999999.0,
                                   1e15, 123456789012345.0, 0.5, 1e16, 4503599627370496.0};
    for (size_t i = 0; i < sizeof(reals) / sizeof(reals[0]); i++) {
        struct api_jw w = API_JW_INIT;
        json_t *r = json_real(reals[i]);
        api_jw_real(&w, reals[i]);
        char *want = json_dumps(r, JSON_COMPACT | JSON_ENCODE_ANY), *got = api_jw_finish(&w, NULL);
        assert_string_equal(got, want);
        free(want);
        free(got);
        json_decref(r);
    }
    /* a mark drops what follows it, commas included */
    struct api_jw w = API_JW_INIT;
    struct api_jw_mark m;
    api_jw_object(&w);
    api_jw_key(&w, "a");
    api_jw_int(&w, 1);
    api_jw_mark(&w, &m);
    api_jw_key(&w, "b");
    api_jw_array(&w);
    api_jw_int_string(&w, INT64_MIN);
    api_jw_rewind(&w, &m);
    api_jw_key(&w, "c");
    api_jw_cstring(&w, NULL);
    api_jw_key(&w, "d");
    api_jw_int_string(&w, INT64_MIN);
    api_jw_key(&w, "e");
    api_jw_raw(&w, "[1,2]", 5);
    api_jw_object_end(&w);
    api_jw_append(&w, "\n", 1);
    char *text = api_jw_finish(&w, NULL);
    assert_string_equal(text, "{\"a\":1,\"c\":null,\"d\":\"-9223372036854775808\",\"e\":[1,2]}\n");
    free(text);
    /* failures: a real JSON cannot hold, closing what is not open, too deep */
    api_jw_real(&w, NAN);
    assert_null(api_jw_finish(&w, NULL));
    api_jw_array_end(&w);
    assert_null(api_jw_finish(&w, NULL));
    for (int d = 0; d <= API_JW_MAX_DEPTH; d++)
        api_jw_array(&w);
    assert_null(api_jw_finish(&w, NULL));
    /* UTF-8 as JSON text must be */
    assert_true(api_utf8_valid("", 0));
    assert_true(api_utf8_valid("plain ascii, long enough for the fast path", 42));
    assert_true(api_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x90\x9f\xf4\x8f\xbf\xbf", 13));
    assert_false(api_utf8_valid("abcdefgh\xff", 9));
    assert_false(api_utf8_valid("\xc0\xaf", 2));         /* overlong */
    assert_false(api_utf8_valid("\xed\xa0\x80", 3));     /* a surrogate */
    assert_false(api_utf8_valid("\xf4\x90\x80\x80", 4)); /* past U+10FFFF */
    assert_false(api_utf8_valid("\xe2\x82", 2));         /* cut short */
    assert_false(api_utf8_valid("a\x80", 2));             /* a lone continuation byte */
}

/* api_jdoc_parse accepts exactly what json_loadb(.., 0, ..) accepts and
 * reads the same values: fixed edge cases, random documents, and their
 * mutations (bytes changed, cut short, doubled), differentially against
 * jansson. */
static json_t *jv_to_json(const struct api_jv *v)
{
    if (api_jv_is(v, API_JV_OBJECT)) {
        json_t *o = json_object();
        const struct api_jv *item;
        const char *key;
        for (size_t i = 0; (key = api_jv_member(v, i, &item)) != NULL; i++)
            json_object_set_new(o, key, jv_to_json(item)); /* a later duplicate replaces, as in jansson */
        /* lookups find what jansson keeps */
        for (size_t i = 0; (key = api_jv_member(v, i, &item)) != NULL; i++) {
            json_t *want = json_object_get(o, key), *got = jv_to_json(api_jv_get(v, key));
            assert_true(json_equal(want, got));
            json_decref(got);
        }
        return o;
    }
    if (api_jv_is(v, API_JV_ARRAY)) {
        json_t *a = json_array();
        for (size_t i = 0; i < api_jv_size(v); i++)
            json_array_append_new(a, jv_to_json(api_jv_at(v, i)));
        return a;
    }
    if (api_jv_is(v, API_JV_STRING)) {
        assert_int_equal(strlen(api_jv_string(v)), api_jv_strlen(v));
        return json_stringn(api_jv_string(v), api_jv_strlen(v));
    }
    if (api_jv_is(v, API_JV_INTEGER))
        return json_integer(api_jv_integer(v));
    if (api_jv_is(v, API_JV_REAL))
        return json_real(api_jv_number(v));
    if (api_jv_is(v, API_JV_TRUE))
        return json_true();
    if (api_jv_is(v, API_JV_FALSE))
        return json_false();
    assert_true(api_jv_is(v, API_JV_NULL));
    return json_null();
}

/* Both parsers on TEXT: the same verdict, and the same document. */
static void parse_like_jansson(const char *text, size_t len)
{
    json_error_t jerr;
    json_t *want = json_loadb(text, len, 0, &jerr);
    struct api_jdoc *doc = NULL;
    char msg[200];
    int rc = api_jdoc_parse(text, len, &doc, msg, sizeof(msg));
    if ((want != NULL) != (rc == 0))
        fail_msg("jansson %s, api_jdoc_parse %s (%s) on: %.*s", want ? "accepts" : "refuses",
                 rc == 0 ? "accepts" : "refuses", rc == 0 ? "" : msg, (int)len, text);
    if (want != NULL) {
        json_t *got = jv_to_json(api_jdoc_root(doc));
        char *a = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS), *b = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
        if (strcmp(a, b) != 0)
            fail_msg("different documents from: %.*s\njansson: %s\nours:    %s", (int)len, text, a, b);
        free(a);
        free(b);
        json_decref(got);
        json_decref(want);
    } else {
        assert_non_null(strstr(msg, "at byte"));
    }
    api_jdoc_free(doc);
}

static void json_parser_agrees_with_jansson(void **state)
{
    (void)state;
    static const char *const fixed[] = {
        "{}", "[]", " [ ] ", "{\"a\":1,\"a\":2}", "{\"a\":{\"b\":[1,2,{\"c\":null}]},\"a\":true}",
        "[\"\\u00e9\\u20AC\\ud83d\\udc1f\\/\\b\\f\\n\\r\\t\\\"\\\\\"]", "[\"\\u0000\"]", "[\"\\ud83d\"]",
        "[\"\\udc1f\"]", "[\"\\ud83d\\u0041\"]", "[\"\\x41\"]", "[\"\\u12\"]", "[\"a\tb\"]", "[\"\xc3\xa9\"]", "[\"\xff\"]",
        "[\"\xc0\xaf\"]", "[\"\xed\xa0\x80\"]", "[\"\xf4\x90\x80\x80\"]", "[true,false,null]", "[tru]", "[nulll]",
        "[1,]", "[,1]", "{\"a\"}", "{\"a\":}", "{a:1}", "{\"a\":1,}", "{\"a\":1 \"b\":2}", "\"top\"", "3", "null", "",
        "   ", "[1] x", "[1] ", "[\"unterminated", "{\"a\":[1,2}", "[1}", "\xef\xbb\xbf[]", "[\"a\"\n,\r\"b\"\t]"};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        parse_like_jansson(fixed[i], strlen(fixed[i]));
    /* numbers, each alone in an array: one bad one would hide the others */
    static const char *const numbers[] = {
        "0", "-0", "1", "-1", "9223372036854775807", "-9223372036854775808", "9223372036854775808",
        "-9223372036854775809", "1.5", "-0.0", "1e300", "1E-300", "1e400", "-1e400", "1e-400", "0.1e1", "1e+2",
        "1.", ".5", "01", "-01", "00", "-", "1e", "1e+", "--1", "+1", "0x10", "1.5e", "123456789012345678901234567890",
        "0.000000000000000000000000000000000000000000000000000000000000000000000000001"};
    for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
        char text[128];
        snprintf(text, sizeof(text), "[%s]", numbers[i]);
        parse_like_jansson(text, strlen(text));
    }
    /* strings read eight bytes at a time: each kind of byte at each place
     * of strings up to 40 bytes long, and cut short there */
    static const char *const kinds[] = {"\\\"", "\\\\", "\\u00e9", "\x01", "\x1f", " ", "~", "\x7f",
                                        "\xc3\xa9", "\xff", "\"", "\\", "\xe2\x82\xac"};
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
        for (size_t len = 0; len <= 40; len++)
            for (size_t at = 0; at <= len; at++) {
                char text[128];
                int n = snprintf(text, sizeof(text), "[\"%.*s%s%.*s\"]", (int)at, "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH",
                                 kinds[k], (int)(len - at), "ijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP");
                parse_like_jansson(text, (size_t)n);
                parse_like_jansson(text, (size_t)n - 2); /* no closing quote */
            }
    /* a NUL byte inside the text */
    parse_like_jansson("[\"a\0b\"]", 6);
    parse_like_jansson("[1]\0", 4);
    parse_like_jansson("[\"a\"\0]", 5);
    /* ... where jansson skips one after a number or literal; this parser does not (jsonin.h) */
    struct api_jdoc *nul_doc = NULL;
    json_t *lenient = json_loadb("[1\0]", 4, 0, NULL);
    assert_non_null(lenient);
    json_decref(lenient);
    assert_int_equal(api_jdoc_parse("[1\0]", 4, &nul_doc, NULL, 0), -1);
    assert_int_equal(api_jdoc_parse("{\"a\":true\0}", 10, &nul_doc, NULL, 0), -1);
    assert_null(nul_doc);
    /* nesting: 2048 levels are fine, 2049 are not */
    for (int depth = 2047; depth <= 2049; depth++) {
        char *deep = malloc(2 * (size_t)depth + 1);
        memset(deep, '[', (size_t)depth);
        memset(deep + depth, ']', (size_t)depth);
        parse_like_jansson(deep, 2 * (size_t)depth);
        free(deep);
    }
    /* the densest texts around the size whose nodes and chars come with
     * the document (jsonin.c, INLINE_TEXT_MAX 4096): numbers, empty
     * strings, members, escapes; each one, below and above */
    static const char *const units[] = {"1,", "\"\",", "{\"\":0},", "[],", "\"\\u00e9\\n\",", "\"\\ud83d\\udc1f\","};
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++)
        for (size_t want = 4080; want <= 4112; want += 4) {
            size_t ul = strlen(units[u]), n = 1;
            char *text = malloc(want + 2 * ul + 8);
            text[0] = '[';
            while (n + ul < want) {
                memcpy(text + n, units[u], ul);
                n += ul;
            }
            text[n - 1] = ']'; /* the last unit's comma */
            parse_like_jansson(text, n);
            free(text);
        }
    rnd_state = 0x13198a2e03707344ULL;
    for (int i = 0; i < 3000; i++) {
        json_t *doc = json_array();
        json_array_append_new(doc, random_value(0));
        char *text = json_dumps(doc, i % 2 ? JSON_COMPACT : JSON_INDENT(1));
        size_t len = strlen(text);
        parse_like_jansson(text, len);
        for (int m = 0; m < 4 && len > 0; m++) {
            char *mut = malloc(2 * len + 1);
            size_t mlen = len;
            memcpy(mut, text, len);
            switch (rnd() % 4) {
            case 0: mut[rnd() % len] = (char)(rnd() & 0xff); break;
            case 1: mut[rnd() % len] = "\"\\{}[],:0-e.u \x80"[rnd() % 15]; break;
            case 2: mlen = rnd() % len; break;
            default: memcpy(mut + len, text, len); mlen = 2 * len; break;
            }
            if (memchr(mut, '\0', mlen) == NULL)
                parse_like_jansson(mut, mlen);
            free(mut);
        }
        free(text);
        json_decref(doc);
    }
}

int main(void)
{
    struct api_err err;
    /* as every daemon does (api/daemon.c): a reply to a client that already
     * hung up (the 413 tests) fails with EPIPE instead of killing the run */
    signal(SIGPIPE, SIG_IGN);
    api_http_global_init(&err);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(error_codes_map_to_statuses_and_json_codes),
        cmocka_unit_test(error_wrap_prefixes_context_and_keeps_code),
        cmocka_unit_test(map_puts_gets_and_deletes_many_keys),
        cmocka_unit_test(map_spreads_keys_alike_in_their_low_hash_bits),
        cmocka_unit_test(flags_parse_values_and_report_bad_usage),
        cmocka_unit_test(json_encoding_matches_jansson_byte_for_byte),
        cmocka_unit_test(json_writer_matches_jansson_and_rewinds),
        cmocka_unit_test(json_parser_agrees_with_jansson),
        cmocka_unit_test_setup_teardown(server_routes_by_pattern_and_captures_raw_segments, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_answers_404_405_and_413_as_json_errors, setup_server, teardown_server),
        cmocka_unit_test_setup_teardown(server_parses_json_bodies_and_rejects_bad_ones, setup_server, teardown_server),
        cmocka_unit_test_setup_teardown(server_sends_replies_finished_on_worker_threads, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_answers_cors_preflight, setup_server, teardown_server),
        cmocka_unit_test_setup_teardown(server_runs_end_of_turn_calls_after_the_turns_requests, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_runs_end_of_turn_calls_after_the_turns_requests, setup_server_3_loops,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_streams_replies_written_on_worker_threads, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_stream_abort_truncates_the_reply, setup_server, teardown_server),
        cmocka_unit_test_setup_teardown(server_stream_tells_the_worker_when_the_client_leaves, setup_server,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_stream_write_times_out_when_the_client_stops_reading, setup_server,
                                        teardown_server),
        /* a loop and workers that spin for replies and jobs */
        cmocka_unit_test_setup_teardown(server_spinning_for_a_reply_serves_other_connections, setup_server_spinning,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_sends_replies_finished_on_worker_threads, setup_server_spinning,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_streams_replies_written_on_worker_threads, setup_server_spinning,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_stream_tells_the_worker_when_the_client_leaves, setup_server_spinning,
                                        teardown_server),
        /* the same with three event loops */
        cmocka_unit_test_setup_teardown(server_spreads_connections_over_its_loops, setup_server_3_loops,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_routes_by_pattern_and_captures_raw_segments, setup_server_3_loops,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_answers_404_405_and_413_as_json_errors, setup_server_3_loops,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_sends_replies_finished_on_worker_threads, setup_server_3_loops,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_streams_replies_written_on_worker_threads, setup_server_3_loops,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_stream_abort_truncates_the_reply, setup_server_3_loops,
                                        teardown_server),
        cmocka_unit_test_setup_teardown(server_stream_tells_the_worker_when_the_client_leaves, setup_server_3_loops,
                                        teardown_server),
    };
    int failed = cmocka_run_group_tests_name("api", tests, NULL, NULL);
    api_http_global_cleanup();
    return failed;
}
