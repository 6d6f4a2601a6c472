/* api/daemon.c: daemon start-up and signals (see daemon.h). */
#include "api/daemon.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "api/http.h"
#include "api/log.h"
#include "api/token.h"

static void (*volatile stop_fn)(void *);
static void *volatile stop_arg;

static void on_signal(int sig)
{
    void (*fn)(void *) = stop_fn;
    (void)sig;
    if (fn != NULL)
        fn(stop_arg);
}

int api_daemon_init(const char *program, const char *component, const char *log_level)
{
    enum log_level lvl;
    struct api_err err;

    if (log_parse_level(log_level, &lvl) != 0) {
        fprintf(stderr, "%s: --log-level must be debug, info, warn or error\n", program);
        return 2;
    }
    log_threshold = lvl;
    log_set_component(component);
    signal(SIGPIPE, SIG_IGN);
    if (api_token_init(&err) != API_OK || api_http_global_init(&err) != API_OK) {
        fprintf(stderr, "%s: %s\n", program, err.msg);
        return 1;
    }
    return -1;
}

void api_daemon_on_stop(void (*stop)(void *arg), void *arg)
{
    struct sigaction sa;

    stop_fn = NULL;
    stop_arg = arg;
    stop_fn = stop;
    if (stop == NULL)
        return; /* the handlers stay: a late signal is ignored, not fatal */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: the event loop wakes up with EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

void api_daemon_fini(void)
{
    stop_fn = NULL;
    api_http_global_cleanup();
}
