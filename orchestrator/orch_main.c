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
    int64_t workers = 16;
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
        {"workers", API_FLAG_INT, &workers, 0, "worker threads (default 16)", 0},
        {"log-level", API_FLAG_STRING, &log_level, 0, "debug, info, warn or error", 0},
        {NULL, 0, NULL, 0, NULL, 0},
    };
    if ((rc = api_flags_parse(argc, argv, "shoal-orchestrator", "Admin API and control loops of a Shoal cluster.",
                              flags)) >= 0)
        return rc;
    if (workers < 1 || workers > 256 || cfg.create_wait_ms < 0 || cfg.leader_ttl_s < 2 || cfg.leader_ttl_s > 3600) {
        fprintf(stderr, "shoal-orchestrator: bad flag value (see --help)\n");
        return 2;
    }
    cfg.workers = (size_t)workers;
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
    orch_free(o); /* before api_daemon_fini: it ends libcurl */
    api_daemon_fini();
    return 0;
}
