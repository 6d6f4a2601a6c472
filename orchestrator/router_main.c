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
    int64_t workers = 16, down_ms = 2000, health_ms = 1000, pipeline = 0;
    const char *replay_timeout = NULL;
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
        {"replay-max-body", API_FLAG_SIZE, &cfg.replay_max_body, 0,
         "largest request body the router replays; a fly-replay for a larger one is answered 413 (default 1 MiB)", 0},
        {"replay-timeout", API_FLAG_STRING, &replay_timeout, 0,
         "how long a fly-replay target that is gone or refuses is retried, and how long a write waits for a tenant "
         "without a primary, when the fly-replay names no timeout= (default 1s; 500ms, 2s)", 0},
        {"down-ms", API_FLAG_INT, &down_ms, 0,
         "an upstream that refused a connection is avoided for this many ms (default 2000)", 0},
        {"app", API_FLAG_STRING, &cfg.app, 0,
         "front an ordinary web app: NAME=region:instance:URL,... (requests to paths Shoal does not serve go to it; "
         "?region= picks the region; its fly-replay answers are followed)", 0},
        {"app-config", API_FLAG_STRING, &cfg.app_config, 0,
         "JSON file {\"apps\":{\"NAME\":[{\"region\",\"instance\",\"url\"}]}}: several apps, chosen by the Host's "
         "first label", 0},
        {"max-body", API_FLAG_SIZE, &cfg.max_body, 0, "request body limit in bytes (default 8 MiB)", 0},
        {"health-ms", API_FLAG_INT, &health_ms, 0,
         "probe every agent's /healthz this often; a replica reporting a tenant as lagging gets none of its reads "
         "(default 1000; 0 turns probing off)", 0},
        {"upstream-pipeline", API_FLAG_INT, &pipeline, 0,
         "reads to an agent that arrive in one event-loop turn share a connection, this many at most, written at "
         "once and answered in order (default 4; 1 sends each on its own connection)", 0},
        {"workers", API_FLAG_INT, &workers, 0,
         "ignored; kept so old command lines work (the router proxies on its event loop, without worker threads)", 0},
        {"log-level", API_FLAG_STRING, &log_level, 0, "debug, info, warn or error", 0},
        {NULL, 0, NULL, 0, NULL, 0},
    };
    if ((rc = api_flags_parse(argc, argv, "shoal-router", "Edge router: sends each tenant request to the nearest healthy agent (writes to the primary) and follows fly-replay.",
                              flags)) >= 0)
        return rc;
    if (workers < 1 || workers > 256 ||
        api_region_check(cfg.region, strlen(cfg.region), &err) != API_OK) {
        fprintf(stderr, "shoal-router: bad flag value (see --help)\n");
        return 2;
    }
    cfg.workers = (size_t)workers;
    if (down_ms < 0 || down_ms > 600000) {
        fprintf(stderr, "shoal-router: --down-ms must be 0..600000\n");
        return 2;
    }
    cfg.down_ms = (long)down_ms;
    if (health_ms < 0 || health_ms > 600000) {
        fprintf(stderr, "shoal-router: --health-ms must be 0..600000\n");
        return 2;
    }
    cfg.health_ms = (long)health_ms;
    if (pipeline < 0 || pipeline > 64) {
        fprintf(stderr, "shoal-router: --upstream-pipeline must be 0..64\n");
        return 2;
    }
    cfg.pipeline = (size_t)pipeline;
    if (cfg.app != NULL) {
        struct orch_app app;
        if (orch_app_parse(cfg.app, &app, &err) != API_OK) {
            fprintf(stderr, "shoal-router: %s\n", err.msg);
            return 2;
        }
    }
    if (replay_timeout != NULL && orch_duration_ms(replay_timeout, &cfg.replay_timeout_ms) != 0) {
        fprintf(stderr, "shoal-router: --replay-timeout takes a duration such as 1s or 500ms\n");
        return 2;
    }
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
    api_daemon_on_stop(NULL, NULL); /* a second signal must not reach what is freed next */
    orch_router_free(o); /* before api_daemon_fini: it ends libcurl */
    api_daemon_fini();
    return 0;
}
