/*
 * tests/tools/bare_h2o.c: the "bare h2o" baseline of ops/bench/dataplane and
 * ops/bench/router. A libh2o (evloop) HTTP/1.1 server on 127.0.0.1 that
 * answers every request with the same small Hrana pipeline reply, with no
 * routing, auth, JSON parsing or SQLite: what the same HTTP stack costs with
 * nothing behind it.
 *
 *   bare_h2o [PORT]    prints "PORT <n>" once listening; SIGTERM stops it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
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

static void on_accept(h2o_socket_t *listener, const char *err)
{
    h2o_socket_t *sock;
    if (err == NULL && (sock = h2o_evloop_socket_accept(listener)) != NULL)
        h2o_accept(listener->data, sock);
}

int main(int argc, char **argv)
{
    static h2o_globalconf_t config;
    static h2o_context_t ctx;
    static h2o_accept_ctx_t accept_ctx;
    struct sockaddr_in addr;
    socklen_t alen = sizeof(addr);
    struct sigaction sa;
    int fd, on = 1;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    h2o_config_init(&config);
    h2o_hostconf_t *host = h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_create_handler(path, sizeof(h2o_handler_t))->on_req = on_req;
    h2o_context_init(&ctx, h2o_evloop_create(), &config);
    accept_ctx.ctx = &ctx;
    accept_ctx.hosts = config.hosts;

    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(argc > 1 ? (uint16_t)atoi(argv[1]) : 0);
    if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, SOMAXCONN) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &alen) != 0) {
        fprintf(stderr, "bare_h2o: cannot listen: %s\n", strerror(errno));
        return 1;
    }
    h2o_socket_t *listener = h2o_evloop_socket_create(ctx.loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    listener->data = &accept_ctx;
    h2o_socket_read_start(listener, on_accept);
    printf("PORT %u\n", ntohs(addr.sin_port));
    fflush(stdout);
    while (!stop_flag)
        if (h2o_evloop_run(ctx.loop, 250) != 0 && errno != EINTR)
            break;
    return 0; /* a benchmark fixture: the process exit releases the rest */
}
