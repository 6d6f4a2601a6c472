/*
 * tests/unit/api/test_aclient.c: api/aclient.h against a scripted upstream.
 *
 * The upstream is a plain blocking TCP server on its own thread that plays
 * one script per test (what to answer, when to close); the client runs on a
 * real api_server loop on the test's thread, stopped by the last callback
 * (or by a 5 s guard timer, which fails the test).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "api/aclient.h"
#include "api/server.h"

/* --- the scripted upstream ------------------------------------------------ */

struct step {
    int new_conn;       /* accept a new connection before this step */
    const char *answer; /* sent after reading one request head (and its body); NULL: close instead */
    int close_after;    /* close the connection after answering */
    int nreq;           /* requests read before answering (pipelined); 0 means 1 */
};

struct upstream {
    int fd;
    uint16_t port;
    const struct step *steps;
    size_t nsteps;
    int accepted;
    pthread_t th;
    char buf[65536]; /* what was read of the connection and not used yet */
    size_t len;
};

/* Reads one request (head, then content-length bytes of body) of the
 * connection C; bytes after it (a pipelined request) stay in U->buf. 0, or
 * -1 on EOF. */
static int read_request(struct upstream *u, int c)
{
    for (;;) {
        u->buf[u->len] = '\0';
        char *end = strstr(u->buf, "\r\n\r\n");
        if (end != NULL) {
            const char *cl = strcasestr(u->buf, "content-length:");
            size_t want = (size_t)(end + 4 - u->buf) + (cl != NULL && cl < end ? strtoul(cl + 15, NULL, 10) : 0);
            if (u->len >= want) {
                memmove(u->buf, u->buf + want, u->len - want);
                u->len -= want;
                return 0;
            }
        }
        ssize_t n = read(c, u->buf + u->len, sizeof(u->buf) - 1 - u->len);
        if (n <= 0)
            return -1;
        u->len += (size_t)n;
    }
}

static void *upstream_main(void *arg)
{
    struct upstream *u = arg;
    int c = -1;
    for (size_t i = 0; i < u->nsteps; i++) {
        if (u->steps[i].new_conn) {
            if (c >= 0)
                close(c);
            if ((c = accept(u->fd, NULL, NULL)) < 0)
                return NULL;
            u->accepted++;
            u->len = 0;
        }
        int k = 0;
        while (k < (u->steps[i].nreq > 0 ? u->steps[i].nreq : 1) && read_request(u, c) == 0)
            k++;
        if (k < (u->steps[i].nreq > 0 ? u->steps[i].nreq : 1))
            break;
        if (u->steps[i].answer == NULL) {
            close(c);
            c = -1;
            continue;
        }
        if (write(c, u->steps[i].answer, strlen(u->steps[i].answer)) < 0)
            break;
        if (u->steps[i].close_after) {
            close(c);
            c = -1;
        }
    }
    if (c >= 0) {
        char b[16];
        while (read(c, b, sizeof(b)) > 0) /* until the client closes */
            ;
        close(c);
    }
    return NULL;
}

static void upstream_start(struct upstream *u, const struct step *steps, size_t n)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    memset(u, 0, sizeof(*u));
    u->steps = steps;
    u->nsteps = n;
    assert_true((u->fd = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
    assert_int_equal(bind(u->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(u->fd, 8), 0);
    assert_int_equal(getsockname(u->fd, (struct sockaddr *)&a, &al), 0);
    u->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&u->th, NULL, upstream_main, u), 0);
}

static void upstream_join(struct upstream *u)
{
    shutdown(u->fd, SHUT_RDWR);
    pthread_join(u->th, NULL);
    close(u->fd);
}

/* --- the client side ---------------------------------------------------- */

struct fixture {
    struct api_server *server;
    struct api_aclient *client;
    struct api_timer *guard;
    char url[64];
    int calls_left, timed_out;
    int status[4], rc[4], not_sent[4];
    size_t body_len[4];
    char body[4][64];
    int n;
    int chain; /* send the next request from the callback */
};

static void on_guard(void *ud)
{
    struct fixture *f = ud;
    f->timed_out = 1;
    api_server_stop(f->server);
}

static void send_one(struct fixture *f);

static void on_answer(void *ud, int rc, struct api_aclient_resp *resp, const struct api_err *err, int not_sent)
{
    struct fixture *f = ud;
    (void)err;
    f->rc[f->n] = rc;
    f->not_sent[f->n] = not_sent;
    if (rc == 0) {
        f->status[f->n] = resp->status;
        f->body_len[f->n] = resp->body_len;
        snprintf(f->body[f->n], sizeof(f->body[0]), "%.*s", (int)(resp->body_len < 63 ? resp->body_len : 63),
                 resp->body);
    }
    f->n++;
    if (--f->calls_left == 0)
        api_server_stop(f->server);
    else if (f->chain)
        send_one(f);
}

static void send_one(struct fixture *f)
{
    static const char *const hdrs[] = {"content-type: text/plain"};
    struct api_aclient_req rq = {.method = "POST", .url = f->url, .path = "/x", .headers = hdrs, .nheaders = 1,
                                 .body = "hello", .body_len = 5};
    api_aclient_send(f->client, &rq, on_answer, f);
}

/* Sends N pipelinable requests at once: they leave together at the end of
 * the loop turn. */
static void send_pipelined(struct fixture *f, int n)
{
    static const char *const hdrs[] = {"content-type: text/plain"};
    struct api_aclient_req rq = {.method = "POST", .url = f->url, .path = "/x", .headers = hdrs, .nheaders = 1,
                                 .body = "hello", .body_len = 5, .pipeline = 1};
    for (int i = 0; i < n; i++)
        api_aclient_send(f->client, &rq, on_answer, f);
}

static void fixture_init(struct fixture *f, uint16_t port, int calls)
{
    struct api_server_config cfg = {.listen = "127.0.0.1:0"};
    struct api_err err;
    memset(f, 0, sizeof(*f));
    assert_int_equal(api_server_new(&cfg, &f->server, &err), 0);
    assert_int_equal(api_aclient_new(f->server, NULL, &f->client, &err), 0);
    assert_non_null(f->guard = api_timer_new(f->server, on_guard, f));
    api_timer_start(f->guard, 5000);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u", port);
    f->calls_left = calls;
}

static void fixture_fini(struct fixture *f)
{
    api_timer_free(f->guard);
    api_aclient_free(f->client);
    api_server_free(f->server);
}

#define OK_LEN "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

static void a_kept_alive_connection_is_reused(void **state)
{
    static const struct step steps[] = {{1, OK_LEN, 0, 1}, {0, OK_LEN, 0, 1}, {0, OK_LEN, 0, 1}};
    struct upstream u;
    struct fixture f;
    struct api_aclient_stats st;
    (void)state;
    upstream_start(&u, steps, 3);
    fixture_init(&f, u.port, 3);
    f.chain = 1;
    send_one(&f);
    api_server_run(f.server);
    assert_false(f.timed_out);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(f.rc[i], 0);
        assert_int_equal(f.status[i], 200);
        assert_string_equal(f.body[i], "ok");
    }
    api_aclient_stats(f.client, &st);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.reuses, 2);
    fixture_fini(&f);
    upstream_join(&u);
    assert_int_equal(u.accepted, 1);
}

static void a_reused_connection_closed_before_the_answer_is_retried_on_a_fresh_one(void **state)
{
    /* the second request reaches a connection the upstream closes without
     * answering (an idle close racing the request): sent again, once */
    static const struct step steps[] = {{1, OK_LEN, 0, 1}, {0, NULL, 0, 1}, {1, OK_LEN, 0, 1}};
    struct upstream u;
    struct fixture f;
    struct api_aclient_stats st;
    (void)state;
    upstream_start(&u, steps, 3);
    fixture_init(&f, u.port, 2);
    f.chain = 1;
    send_one(&f);
    api_server_run(f.server);
    assert_false(f.timed_out);
    assert_int_equal(f.rc[1], 0);
    assert_int_equal(f.status[1], 200);
    api_aclient_stats(f.client, &st);
    assert_int_equal(st.stale_retries, 1);
    assert_int_equal(st.connects, 2);
    fixture_fini(&f);
    upstream_join(&u);
}

static void a_fresh_connection_closed_before_the_answer_is_an_error(void **state)
{
    static const struct step steps[] = {{1, NULL, 0, 1}};
    struct upstream u;
    struct fixture f;
    (void)state;
    upstream_start(&u, steps, 1);
    fixture_init(&f, u.port, 1);
    send_one(&f);
    api_server_run(f.server);
    assert_false(f.timed_out);
    assert_int_equal(f.rc[0], API_EUPSTREAM);
    assert_int_equal(f.not_sent[0], 0); /* it was sent: never retried elsewhere as a write */
    fixture_fini(&f);
    upstream_join(&u);
}

static void chunked_bodies_with_trailers_and_interim_responses_are_decoded(void **state)
{
    static const struct step steps[] = {
        {1, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n"
            "5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n", 0, 1},
        {0, "HTTP/1.1 204 No Content\r\n\r\n", 0, 1},
        {0, "HTTP/1.0 200 OK\r\n\r\nuntil close", 1, 1}};
    struct upstream u;
    struct fixture f;
    struct api_aclient_stats st;
    (void)state;
    upstream_start(&u, steps, 3);
    fixture_init(&f, u.port, 3);
    f.chain = 1;
    send_one(&f);
    api_server_run(f.server);
    assert_false(f.timed_out);
    assert_int_equal(f.status[0], 201);
    assert_string_equal(f.body[0], "hello, world");
    assert_int_equal(f.status[1], 204);
    assert_int_equal(f.body_len[1], 0);
    assert_int_equal(f.status[2], 200);
    assert_string_equal(f.body[2], "until close");
    api_aclient_stats(f.client, &st);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.idle, 0); /* HTTP/1.0 without keep-alive: not pooled */
    fixture_fini(&f);
    upstream_join(&u);
}

static void a_refused_connection_says_nothing_was_sent(void **state)
{
    struct fixture f;
    struct upstream u;
    static const struct step none[] = {{0, NULL, 0, 1}};
    (void)state;
    upstream_start(&u, none, 0); /* a port that is then closed */
    uint16_t port = u.port;
    upstream_join(&u);
    fixture_init(&f, port, 1);
    send_one(&f);
    api_server_run(f.server);
    assert_false(f.timed_out);
    assert_int_equal(f.rc[0], API_EUPSTREAM);
    assert_int_equal(f.not_sent[0], 1);
    fixture_fini(&f);
}

#define ANSWER(b) "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n" b

static void pipelined_requests_share_one_connection_and_are_answered_in_order(void **state)
{
    static const struct step steps[] = {{1, ANSWER("a") ANSWER("b") ANSWER("c"), 0, 3}};
    struct upstream u;
    struct fixture f;
    struct api_aclient_stats st;
    (void)state;
    upstream_start(&u, steps, 1);
    fixture_init(&f, u.port, 3);
    send_pipelined(&f, 3);
    api_server_run(f.server);
    assert_false(f.timed_out);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(f.rc[i], 0);
        assert_int_equal(f.status[i], 200);
    }
    assert_string_equal(f.body[0], "a");
    assert_string_equal(f.body[1], "b");
    assert_string_equal(f.body[2], "c");
    api_aclient_stats(f.client, &st);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.pipelined, 2);
    assert_int_equal(st.idle, 1);
    fixture_fini(&f);
    upstream_join(&u);
    assert_int_equal(u.accepted, 1);
}

static void a_pipelined_request_behind_a_closing_answer_goes_again_on_a_fresh_connection(void **state)
{
    /* the upstream answers the first and closes: the second, written
     * behind it and never answered, is sent again once */
    static const struct step steps[] = {
        {1, "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na", 1, 2}, {1, ANSWER("b"), 0, 1}};
    struct upstream u;
    struct fixture f;
    struct api_aclient_stats st;
    (void)state;
    upstream_start(&u, steps, 2);
    fixture_init(&f, u.port, 2);
    send_pipelined(&f, 2);
    api_server_run(f.server);
    assert_false(f.timed_out);
    assert_int_equal(f.rc[0], 0);
    assert_int_equal(f.rc[1], 0);
    assert_string_equal(f.body[0], "a");
    assert_string_equal(f.body[1], "b");
    api_aclient_stats(f.client, &st);
    assert_int_equal(st.connects, 2);
    assert_int_equal(st.stale_retries, 1);
    fixture_fini(&f);
    upstream_join(&u);
    assert_int_equal(u.accepted, 2);
}

static void a_pipelined_request_whose_connection_drops_twice_fails(void **state)
{
    /* the connection closes without a byte: each is sent again once, on a
     * fresh connection of its own, which closes too: an error */
    static const struct step steps[] = {{1, NULL, 0, 2}, {1, NULL, 0, 1}, {1, NULL, 0, 1}};
    struct upstream u;
    struct fixture f;
    (void)state;
    upstream_start(&u, steps, 3);
    fixture_init(&f, u.port, 2);
    send_pipelined(&f, 2);
    api_server_run(f.server);
    assert_false(f.timed_out);
    assert_int_equal(f.rc[0], API_EUPSTREAM);
    assert_int_equal(f.rc[1], API_EUPSTREAM);
    fixture_fini(&f);
    upstream_join(&u);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as every daemon does (api/daemon.c): writes to a closed upstream fail with EPIPE */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_kept_alive_connection_is_reused),
        cmocka_unit_test(a_reused_connection_closed_before_the_answer_is_retried_on_a_fresh_one),
        cmocka_unit_test(a_fresh_connection_closed_before_the_answer_is_an_error),
        cmocka_unit_test(chunked_bodies_with_trailers_and_interim_responses_are_decoded),
        cmocka_unit_test(a_refused_connection_says_nothing_was_sent),
        cmocka_unit_test(pipelined_requests_share_one_connection_and_are_answered_in_order),
        cmocka_unit_test(a_pipelined_request_behind_a_closing_answer_goes_again_on_a_fresh_connection),
        cmocka_unit_test(a_pipelined_request_whose_connection_drops_twice_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
