/*
 * tests/tools/bare_h2o.c: the "bare h2o" baseline of ops/bench/dataplane.
 * A libh2o (evloop) HTTP/1.1 server on 127.0.0.1 that
 * answers every request with the same small Hrana pipeline reply, with no
 * routing, auth, JSON parsing or SQLite: what the same HTTP stack costs with
 * nothing behind it.
 *
 *   bare_h2o [PORT [LOOPS]]   prints "PORT <n>" once listening; SIGTERM
 *                             stops it.
 * LOOPS (default 1) event loops, each on its own thread, shaped as the
 * agent's (api/server.c): the first accepts every connection and hands
 * each to a loop in turn. On a 2-core box shared with the load generator
 * one loop is usually the faster (the bench takes whichever is); two show
 * what the agent's thread shape alone costs there.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <h2o.h>

static volatile sig_atomic_t stop_flag;

static void on_signal(int signo)
{
    (void)signo;
    stop_flag = 1;
}

/* What an agent answers to a one-row point read, byte for byte the shape. */
static const char REPLY[] =
    "{\"baton\":null,\"base_url\":null,\"results\":[{\"type\":\"ok\",\"response\":{\"type\":\"execute\",\"result\":"
    "{\"cols\":[{\"name\":\"v\",\"decltype\":\"TEXT\"}],\"rows\":[[{\"type\":\"text\",\"value\":\"0123456789abcdef\"}]],"
    "\"affected_row_count\":0,\"last_insert_rowid\":null,\"replication_index\":null,\"rows_read\":1,"
    "\"rows_written\":0,\"query_duration_ms\":0.01}}},{\"type\":\"ok\",\"response\":{\"type\":\"close\"}}]}";

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    static h2o_generator_t generator = {NULL, NULL};
    h2o_iovec_t body = h2o_iovec_init(REPLY, sizeof(REPLY) - 1);
    (void)self;
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = body.len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_start_response(req, &generator);
    h2o_send(req, &body, 1, H2O_SEND_STATE_FINAL);
    return 0;
}

#define MAX_LOOPS 16

struct loop {
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_multithread_receiver_t receiver;
    pthread_t thread;
};

struct handoff {
    h2o_multithread_message_t super; /* must stay first */
    int fd;
};

static h2o_globalconf_t config;
static struct loop loops[MAX_LOOPS];
static size_t nloops = 1, next_loop;
static int listen_fd;

static void serve_fd(struct loop *l, int fd)
{
    h2o_socket_t *sock = h2o_evloop_socket_create(l->ctx.loop, fd, H2O_SOCKET_FLAG_IS_ACCEPTED_CONNECTION);
    h2o_accept(&l->accept_ctx, sock);
}

/* On a loop's thread: the connections the first loop handed to it. */
static void on_handoff(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct loop *l = H2O_STRUCT_FROM_MEMBER(struct loop, receiver, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        struct handoff *h = H2O_STRUCT_FROM_MEMBER(struct handoff, super.link, messages->next);
        h2o_linklist_unlink(&h->super.link);
        serve_fd(l, h->fd);
        free(h);
    }
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    int fd, on = 1;
    struct handoff *h;
    (void)listener;
    if (err != NULL || (fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) < 0)
        return;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    size_t i = next_loop++ % nloops;
    if (i == 0 || (h = calloc(1, sizeof(*h))) == NULL) {
        serve_fd(&loops[0], fd);
        return;
    }
    h->fd = fd;
    h2o_multithread_send_message(&loops[i].receiver, &h->super);
}

static void loop_init(struct loop *l)
{
    h2o_context_init(&l->ctx, h2o_evloop_create(), &config);
    l->accept_ctx.ctx = &l->ctx;
    l->accept_ctx.hosts = config.hosts;
    h2o_multithread_register_receiver(h2o_multithread_create_queue(l->ctx.loop), &l->receiver, on_handoff);
}

static void *loop_main(void *arg)
{
    struct loop *l = arg;
    while (!stop_flag)
        if (h2o_evloop_run(l->ctx.loop, 250) != 0 && errno != EINTR)
            break;
    return NULL;
}

int main(int argc, char **argv)
{
    struct sockaddr_in addr;
    socklen_t alen = sizeof(addr);
    struct sigaction sa;
    int on = 1;

    if (argc > 2 && ((nloops = (size_t)atoi(argv[2])) < 1 || nloops > MAX_LOOPS)) {
        fprintf(stderr, "bare_h2o: LOOPS must be 1 to %d\n", MAX_LOOPS);
        return 2;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    h2o_config_init(&config);
    h2o_hostconf_t *host = h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_create_handler(path, sizeof(h2o_handler_t))->on_req = on_req;
    for (size_t i = 0; i < nloops; i++)
        loop_init(&loops[i]);

    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(argc > 1 ? (uint16_t)atoi(argv[1]) : 0);
    if ((listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        bind(listen_fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(listen_fd, SOMAXCONN) != 0 ||
        getsockname(listen_fd, (struct sockaddr *)&addr, &alen) != 0) {
        fprintf(stderr, "bare_h2o: cannot listen: %s\n", strerror(errno));
        return 1;
    }
    h2o_socket_t *listener = h2o_evloop_socket_create(loops[0].ctx.loop, listen_fd, H2O_SOCKET_FLAG_DONT_READ);
    h2o_socket_read_start(listener, on_accept);
    for (size_t i = 1; i < nloops; i++)
        if (pthread_create(&loops[i].thread, NULL, loop_main, &loops[i]) != 0) {
            fprintf(stderr, "bare_h2o: cannot start loop %zu\n", i);
            return 1;
        }
    printf("PORT %u\n", ntohs(addr.sin_port));
    fflush(stdout);
    loop_main(&loops[0]);
    for (size_t i = 1; i < nloops; i++)
        pthread_join(loops[i].thread, NULL);
    return 0; /* a benchmark fixture: the process exit releases the rest */
}
