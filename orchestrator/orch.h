/*
 * orchestrator/orch.h: shoal-orchestrator, the admin REST API (/v1, admin
 * bearer token) over the desired state in etcd, with placement of new
 * tenants. Reads come from the watched cluster view; writes are etcd txns.
 *
 * Threads: the HTTP loop, a worker pool for everything that blocks (etcd
 * writes, asking agents for positions), and the cluster view's watch thread.
 */
#ifndef SHOAL_ORCHESTRATOR_ORCH_H
#define SHOAL_ORCHESTRATOR_ORCH_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"

struct orch_config {
    const char *listen;
    const char *etcd;
    const char *regions_path;
    const char *signing_key;
    const char *admin_token_file;
    const char *internal_token; /* file; NULL: internal.token beside signing_key */
    size_t workers;
    int64_t create_wait_ms; /* how long POST /v1/tenants waits for the primary's lease */
    int64_t leader_ttl_s;   /* leader election lease (default 5) */
    /* placement near users (placer.c) */
    int64_t placement_window_ms;          /* traffic is judged per window (default 60 s) */
    int64_t placement_dwell_ms;           /* no move sooner after the last (default 1 h) */
    uint32_t placement_threshold_permille; /* gain a move must exceed (default 200 = 20 %) */
    uint64_t placement_min_writes;        /* fewer writes in a window: stay (default 100) */
    int64_t repair_grace_ms;              /* a node gone this long loses its replicas (default 5 min) */
};

void orch_config_init(struct orch_config *cfg);

struct orch;

int orch_new(const struct orch_config *cfg, struct orch **out, struct api_err *err);
int orch_run(struct orch *o);
void orch_stop(struct orch *o); /* async-signal-safe */
void orch_free(struct orch *o);

#endif
