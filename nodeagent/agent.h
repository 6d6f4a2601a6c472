/*
 * nodeagent/agent.h: shoal-agent, one per node. Hosts many tenant SQLite
 * files, holds the primary lease of the tenants it leads, and serves every
 * tenant over Hrana-over-HTTP.
 *
 * Threads: the HTTP event loop (the thread calling agent_run), a controller
 * thread (session keep-alive, converging on the desired state in etcd), the
 * etcd watch thread of the cluster view, and the worker pool (SQLite work,
 * forwarding), keyed by tenant.
 */
#ifndef SHOAL_NODEAGENT_AGENT_H
#define SHOAL_NODEAGENT_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"

struct agent_config {
    const char *node;
    const char *region;
    const char *listen;
    const char *advertise_url; /* NULL: the bound http://127.0.0.1:PORT */
    const char *data_dir;
    const char *etcd;
    const char *verify_key;    /* cluster.pub */
    const char *tenant_domain; /* may be NULL */
    int64_t lease_ttl_s;
    size_t workers;
    size_t active_workers; /* of WORKERS, how many run SQLite at once (0: one per core) */
    size_t loops;          /* event loops serving HTTP (0: one per core, at most 8) */
    size_t inline_reads;   /* short reads run on the event loop, at most this many per loop turn (0: never) */
    int64_t loop_spin_us;   /* a loop busy-waits this long for the one reply it awaits (-1: default by cores) */
    int64_t worker_spin_us; /* an idle worker busy-waits this long for a next job (-1: default by cores) */
    size_t max_open;
    int cache_kib;
    size_t max_body;
    int64_t stmt_timeout_ms;
    const char *internal_token; /* file; NULL: internal.token beside verify_key */
    size_t log_keep_bytes;      /* replication log compaction threshold */
    int64_t max_lag_ms;
    int64_t quorum_timeout_ms;
    int64_t pull_wait_ms;
    int64_t catchup_timeout_ms; /* shoal-min-txid wait on a replica before the primary serves */
    int64_t tenant_wait_ms;     /* a request for a tenant not in this agent's view waits this long for it */
    int64_t traffic_interval_ms; /* write counts by client region go to etcd this often */
};

void agent_config_init(struct agent_config *cfg);

struct agent;

/* Starts everything (binds, registers the node, reads the cluster state). */
int agent_new(const struct agent_config *cfg, struct agent **out, struct api_err *err);
/* Runs the HTTP loop until agent_stop. */
int agent_run(struct agent *a);
/* Async-signal-safe. */
void agent_stop(struct agent *a);
/* Stops threads, releases leases (revokes the session), frees. */
void agent_free(struct agent *a);

#endif
