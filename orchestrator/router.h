/*
 * orchestrator/router.h: shoal-router, the edge router. It keeps a route
 * table from an etcd watch (no etcd call per request), sends each data-plane
 * request to the right agent, and follows `fly-replay` answers from any
 * upstream (at most two replays).
 *
 * Threads: the HTTP loop, which does everything (it authorizes, chooses
 * the upstream and proxies asynchronously over keep-alive connections, see
 * api/aclient.h), and the cluster view's watch thread. The fly-replay
 * grammar is in replay.h.
 */
#ifndef SHOAL_ORCHESTRATOR_ROUTER_H
#define SHOAL_ORCHESTRATOR_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"
#include "orchestrator/replay.h"

struct orch_router_config {
    const char *region;
    const char *listen;
    const char *etcd;
    const char *verify_key;
    const char *regions_path;
    const char *tenant_domain;
    size_t replay_max_body;  /* a replay of a larger body is refused with 413 */
    size_t max_body;
    size_t workers;          /* ignored: the router proxies on its event loop (kept for --workers) */
    long replay_timeout_ms;  /* how long a replay target (or a missing primary) is waited for; a
                              * fly-replay's own timeout= overrides it */
    long down_ms;            /* an instance that refused a connection is avoided this long */
    long health_ms;          /* agents' /healthz are probed this often; 0: never */
    size_t pipeline;         /* reads pipelined per upstream connection (api/aclient.h); 0: its default, 1: off */
    const char *app;         /* --app spec, or NULL */
    const char *app_config;  /* --app-config file, or NULL */
};

void orch_router_config_init(struct orch_router_config *cfg);

struct orch_router;

int orch_router_new(const struct orch_router_config *cfg, struct orch_router **out, struct api_err *err);
int orch_router_run(struct orch_router *r);
void orch_router_stop(struct orch_router *r); /* async-signal-safe */
void orch_router_free(struct orch_router *r);

/* An ordinary web app behind the router (--app): instances by region.
 * Requests for it are forwarded to the instance nearest the router (or the
 * one in `?region=` / `fly-prefer-region`), and the app's own fly-replay
 * answers are followed exactly as a Shoal agent's. */
#define ORCH_APP_MAX_INSTANCES 16
struct orch_app_instance {
    char id[64];
    char region[8];
    char url[160]; /* scheme://host:port, no trailing slash */
};
struct orch_app {
    char name[64];
    struct orch_app_instance inst[ORCH_APP_MAX_INSTANCES];
    size_t n;
};

/* Parses `NAME=region:instance:URL,region:instance:URL,...` into *OUT (set
 * only on success). Returns API_OK or API_EINVAL naming the bad part. Pure;
 * exposed for tests. */
int orch_app_parse(const char *spec, struct orch_app *out, struct api_err *err);

#endif
