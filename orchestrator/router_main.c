/* shoal-router: flags → orch_router_config → run. See orchestrator/router.h. */
#include <stdio.h>
#include <string.h>

#include "api/daemon.h"
#include "api/flags.h"
#include "api/log.h"
#include "api/names.h"
#include "orchestrator/router.h"

static void stop(void *daemon)
{
    orch_router_stop(daemon);
}

int main(int argc, char **argv)
{
    struct orch_router_config cfg;
    const char *log_level = "info";
    int64_t workers = 16;
    struct api_err err;
    int rc;

    orch_router_config_init(&cfg);
    struct api_flag flags[] = {
        {"region", API_FLAG_STRING, &cfg.region, 1, "this router's region code (e.g. ams)", 0},
        {"listen", API_FLAG_STRING, &cfg.listen, 0, "HOST:PORT to serve on (default 127.0.0.1:7000)", 0},
        {"etcd", API_FLAG_STRING, &cfg.etcd, 0, "etcd endpoints, comma-separated", 0},
        {"verify-key", API_FLAG_STRING, &cfg.verify_key, 0, "cluster public key file (default run/secrets/cluster.pub)", 0},
        {"regions", API_FLAG_STRING, &cfg.regions_path, 0, "regions and latency matrix (default ops/regions.json)", 0},
        {"tenant-domain", API_FLAG_STRING, &cfg.tenant_domain, 0, "route <tenant>.<domain> Host names", 0},
        {"replay-max-body", API_FLAG_SIZE, &cfg.replay_max_body, 0, "largest body kept for a replay (default 1 MiB)", 0},
        {"max-body", API_FLAG_SIZE, &cfg.max_body, 0, "request body limit in bytes (default 8 MiB)", 0},
        {"workers", API_FLAG_INT, &workers, 0, "upstream worker threads (default 16)", 0},
        {"log-level", API_FLAG_STRING, &log_level, 0, "debug, info, warn or error", 0},
        {NULL, 0, NULL, 0, NULL, 0},
    };
    if ((rc = api_flags_parse(argc, argv, "shoal-router", "Edge router: sends tenant requests to the right agent.",
                              flags)) >= 0)
        return rc;
    if (workers < 1 || workers > 256 ||
        api_region_check(cfg.region, strlen(cfg.region), &err) != API_OK) {
        fprintf(stderr, "shoal-router: bad flag value (see --help)\n");
        return 2;
    }
    cfg.workers = (size_t)workers;
    if ((rc = api_daemon_init("shoal-router", "router", log_level)) >= 0)
        return rc;
    struct orch_router *o;
    if (orch_router_new(&cfg, &o, &err) != API_OK) {
        log_error("cannot start: %s", err.msg);
        api_daemon_fini();
        return 1;
    }
    api_daemon_on_stop(stop, o);
    orch_router_run(o);
    log_info("stopping");
    orch_router_free(o); /* before api_daemon_fini: it ends libcurl */
    api_daemon_fini();
    return 0;
}
