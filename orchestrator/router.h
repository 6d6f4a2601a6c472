/*
 * orchestrator/router.h: shoal-router, the edge router. It keeps a route
 * table from an etcd watch (no etcd call per request), sends each data-plane
 * request to the right agent, and follows `fly-replay` answers from any
 * upstream (at most two replays).
 *
 * Threads: the HTTP loop, worker threads that do the (blocking) upstream
 * calls, and the cluster view's watch thread.
 */
#ifndef SHOAL_ORCHESTRATOR_ROUTER_H
#define SHOAL_ORCHESTRATOR_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"

struct orch_router_config {
    const char *region;
    const char *listen;
    const char *etcd;
    const char *verify_key;
    const char *regions_path;
    const char *tenant_domain;
    size_t replay_max_body;
    size_t max_body;
    size_t workers;
};

void orch_router_config_init(struct orch_router_config *cfg);

struct orch_router;

int orch_router_new(const struct orch_router_config *cfg, struct orch_router **out, struct api_err *err);
int orch_router_run(struct orch_router *r);
void orch_router_stop(struct orch_router *r); /* async-signal-safe */
void orch_router_free(struct orch_router *r);

/* A parsed fly-replay header (Fly.io's grammar; CONTRACT.md). */
#define ORCH_REPLAY_MAX_REGIONS 8
struct orch_replay {
    char regions[ORCH_REPLAY_MAX_REGIONS][8];
    size_t nregions;
    int any_region;
    char instance[64];
    char prefer_instance[64];
    int elsewhere;
    char state[256];
    long timeout_ms;
    int fallback; /* 0 none, 1 force_self, 2 prefer_self */
};

/* Parses VALUE; returns 0, or -1 if malformed. Pure; exposed for tests. */
int orch_replay_parse(const char *value, struct orch_replay *out);

#endif
