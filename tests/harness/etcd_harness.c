/* tests/harness/etcd_harness.c: see etcd_harness.h. */
#include "tests/harness/etcd_harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "api/http.h"

static pid_t etcd_pid = -1;
static char data_dir[64];
static char client_url[64];
static int registered;

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

void test_etcd_stop(void)
{
    if (etcd_pid > 0) {
        kill(etcd_pid, SIGTERM);
        for (int i = 0; i < 100; i++) {
            if (waitpid(etcd_pid, NULL, WNOHANG) == etcd_pid) {
                etcd_pid = -1;
                break;
            }
            usleep(50000);
        }
        if (etcd_pid > 0) {
            kill(etcd_pid, SIGKILL);
            waitpid(etcd_pid, NULL, 0);
        }
        etcd_pid = -1;
    }
    if (data_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", data_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "# could not remove %s\n", data_dir);
        data_dir[0] = '\0';
    }
}

const char *test_etcd_start(void)
{
    char peer_url[64], initial[96], log_path[96];
    int cport = free_port(), pport = free_port();

    if (cport < 0 || pport < 0 || cport == pport)
        return NULL;
    snprintf(data_dir, sizeof(data_dir), "/tmp/shoal-etcd.XXXXXX");
    if (mkdtemp(data_dir) == NULL)
        return NULL;
    snprintf(client_url, sizeof(client_url), "http://127.0.0.1:%d", cport);
    snprintf(peer_url, sizeof(peer_url), "http://127.0.0.1:%d", pport);
    snprintf(initial, sizeof(initial), "t=%s", peer_url);
    snprintf(log_path, sizeof(log_path), "%s/etcd.log", data_dir);
    if (!registered) {
        atexit(test_etcd_stop);
        registered = 1;
    }
    etcd_pid = fork();
    if (etcd_pid == 0) {
        /* etcd dies with the test even when the test crashes (a sanitizer
         * abort skips atexit) */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        FILE *log = freopen(log_path, "w", stderr);
        (void)log;
        dup2(2, 1);
        char dd[96];
        snprintf(dd, sizeof(dd), "%s/data", data_dir);
        execlp("etcd", "etcd", "--name", "t", "--data-dir", dd, "--listen-client-urls", client_url,
               "--advertise-client-urls", client_url, "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls",
               peer_url, "--initial-cluster", initial, (char *)NULL);
        _exit(127);
    }
    if (etcd_pid < 0)
        return NULL;
    struct api_http_client *c = api_http_client_new();
    char health[96];
    snprintf(health, sizeof(health), "%s/health", client_url);
    for (int i = 0; i < 400; i++) { /* 20 s */
        struct api_http_req rq = {.url = health, .timeout_ms = 500, .connect_timeout_ms = 200};
        struct api_http_resp resp;
        struct api_err err;
        if (api_http_do(c, &rq, &resp, &err) == 0) {
            int ok = resp.status == 200 && strstr(resp.body, "true") != NULL;
            api_http_resp_fini(&resp);
            if (ok) {
                api_http_client_free(c);
                return client_url;
            }
        }
        if (waitpid(etcd_pid, NULL, WNOHANG) == etcd_pid) {
            etcd_pid = -1;
            break;
        }
        usleep(50000);
    }
    api_http_client_free(c);
    test_etcd_stop();
    return NULL;
}
