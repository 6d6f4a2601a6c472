/* shoal-orchestrator: flags → orch_config → orch_run. See orchestrator/orch.h. */
#include <stdio.h>
#include <string.h>

#include "api/daemon.h"
#include "api/flags.h"
#include "api/log.h"
#include "orchestrator/orch.h"

static void stop(void *daemon)
{
    orch_stop(daemon);
}

int main(int argc, char **argv)
{
    struct orch_config cfg;
    const char *log_level = "info";
    int64_t workers = 16, window_s = 60, dwell_s = 3600, threshold_pct = 20, min_writes = 100, grace_s = 300;
    struct api_err err;
    int rc;

    orch_config_init(&cfg);
    struct api_flag flags[] = {
        {"listen", API_FLAG_STRING, &cfg.listen, 0, "HOST:PORT for the admin API (default 127.0.0.1:7400)", 0},
        {"etcd", API_FLAG_STRING, &cfg.etcd, 0, "etcd endpoints, comma-separated", 0},
        {"regions", API_FLAG_STRING, &cfg.regions_path, 0, "regions and latency matrix (default ops/regions.json)", 0},
        {"signing-key", API_FLAG_STRING, &cfg.signing_key, 0, "cluster signing key file (default run/secrets/cluster.key)", 0},
        {"admin-token-file", API_FLAG_STRING, &cfg.admin_token_file, 0, "admin token file (default run/secrets/admin.token)", 0},
        {"internal-token", API_FLAG_STRING, &cfg.internal_token, 0,
         "file with the token for agents' internal endpoints (default: internal.token beside --signing-key)", 0},
        {"create-wait-ms", API_FLAG_INT, &cfg.create_wait_ms, 0, "wait this long for a new tenant's primary (default 5000)", 0},
        {"leader-ttl", API_FLAG_INT, &cfg.leader_ttl_s, 0,
         "leader election lease in seconds: a standby takes over this long after the leader dies (default 5)", 0},
        {"placement-window", API_FLAG_INT, &window_s, 0,
         "seconds of write traffic judged at a time to move auto tenants' primaries (default 60)", 0},
        {"placement-dwell", API_FLAG_INT, &dwell_s, 0, "seconds a tenant's primary stays put after a move (default 3600)", 0},
        {"placement-threshold", API_FLAG_INT, &threshold_pct, 0,
         "percent of write round-trip time a move must save (default 20)", 0},
        {"placement-min-writes", API_FLAG_INT, &min_writes, 0,
         "writes a tenant needs in a window before it may move (default 100)", 0},
        {"repair-grace", API_FLAG_INT, &grace_s, 0,
         "seconds a node may be gone before its replicas are recreated elsewhere (default 300)", 0},
        {"workers", API_FLAG_INT, &workers, 0, "worker threads (default 16)", 0},
        {"log-level", API_FLAG_STRING, &log_level, 0, "debug, info, warn or error", 0},
        {NULL, 0, NULL, 0, NULL, 0},
    };
    if ((rc = api_flags_parse(argc, argv, "shoal-orchestrator", "Admin API and control loops of a Shoal cluster.",
                              flags)) >= 0)
        return rc;
    if (workers < 1 || workers > 256 || cfg.create_wait_ms < 0 || cfg.leader_ttl_s < 2 || cfg.leader_ttl_s > 3600 ||
        window_s < 1 || window_s > 86400 || dwell_s < 0 || dwell_s > 30 * 86400 || threshold_pct < 0 ||
        threshold_pct > 100 || min_writes < 1 || grace_s < 1 || grace_s > 30 * 86400) {
        fprintf(stderr, "shoal-orchestrator: bad flag value (see --help)\n");
        return 2;
    }
    cfg.workers = (size_t)workers;
    cfg.placement_window_ms = window_s * 1000;
    cfg.placement_dwell_ms = dwell_s * 1000;
    cfg.placement_threshold_permille = (uint32_t)(threshold_pct * 10);
    cfg.placement_min_writes = (uint64_t)min_writes;
    cfg.repair_grace_ms = grace_s * 1000;
    if ((rc = api_daemon_init("shoal-orchestrator", "orchestrator", log_level)) >= 0)
        return rc;
    struct orch *o;
    if (orch_new(&cfg, &o, &err) != API_OK) {
        log_error("cannot start: %s", err.msg);
        api_daemon_fini();
        return 1;
    }
    api_daemon_on_stop(stop, o);
    orch_run(o);
    log_info("stopping");
    api_daemon_on_stop(NULL, NULL); /* a second signal must not reach what is freed next */
    orch_free(o); /* before api_daemon_fini: it ends libcurl */
    api_daemon_fini();
    return 0;
}
