/* shoal-agent: flags → agent_config → agent_run. See nodeagent/agent.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "api/daemon.h"
#include "api/flags.h"
#include "api/log.h"
#include "api/names.h"
#include "nodeagent/agent.h"
#include "nodeagent/store.h"

static void stop(void *agent)
{
    agent_stop(agent);
}

/* "2s", "500ms" or "2" (seconds), at most 10 minutes. */
static int parse_duration_ms(const char *text, int64_t *out)
{
    char *end = NULL;
    double v = strtod(text, &end);
    double ms = end && strcmp(end, "ms") == 0 ? v : end && (strcmp(end, "s") == 0 || *end == '\0') ? v * 1000 : -1;
    if (end == text || ms < 0 || ms > 600000)
        return -1;
    *out = (int64_t)ms;
    return 0;
}

int main(int argc, char **argv)
{
    struct agent_config cfg;
    const char *log_level = "info", *catchup = NULL, *tenant_wait = NULL;
    char data_dir[512];
    int64_t workers = 16, active_workers = 0, inline_reads = 64, loops = 0, max_open = 1000, cache_kib = 256, stmt_timeout_ms = 5000, max_lag_s = 5,
            quorum_timeout_ms = 5000, pull_wait_ms = 1000, traffic_interval_ms = 10000, loop_spin_us = -1, worker_spin_us = -1;
    struct api_err err;
    int rc;

    agent_store_process_init();
    agent_config_init(&cfg);
    struct api_flag flags[] = {
        {"node", API_FLAG_STRING, &cfg.node, 1, "this node's name (a DNS label)", 0},
        {"region", API_FLAG_STRING, &cfg.region, 1, "this node's region code (e.g. ams)", 0},
        {"listen", API_FLAG_STRING, &cfg.listen, 0, "HOST:PORT to serve on (default 127.0.0.1:7401)", 0},
        {"advertise-url", API_FLAG_STRING, &cfg.advertise_url, 0, "URL others use to reach this agent", 0},
        {"data", API_FLAG_STRING, &cfg.data_dir, 0, "data directory (default ./data/NODE)", 0},
        {"etcd", API_FLAG_STRING, &cfg.etcd, 0, "etcd endpoints, comma-separated", 0},
        {"lease-ttl", API_FLAG_INT, &cfg.lease_ttl_s, 0, "session lease TTL in seconds (default 10)", 0},
        {"verify-key", API_FLAG_STRING, &cfg.verify_key, 0, "cluster public key file (default run/secrets/cluster.pub)", 0},
        {"tenant-domain", API_FLAG_STRING, &cfg.tenant_domain, 0, "serve <tenant>.<domain> Host names", 0},
        {"workers", API_FLAG_INT, &workers, 0, "SQLite worker threads (default 16)", 0},
        {"active-workers", API_FLAG_INT, &active_workers, 0,
         "of those, how many run at once outside disk and network waits (default: one per core)", 0},
        {"loops", API_FLAG_INT, &loops, 0,
         "event loops serving HTTP, each on its own thread (default: one per core, at most 8)", 0},
        {"inline-reads", API_FLAG_INT, &inline_reads, 0,
         "short reads run on the event loop instead of a worker, at most this many per loop turn (default 64; 0: never)", 0},
        {"loop-spin-us", API_FLAG_INT, &loop_spin_us, 0,
         "an event loop awaiting one worker reply and nothing else busy-waits this long for it before sleeping "
         "(default 500 with 2 or more cores, else 0: never)", 0},
        {"worker-spin-us", API_FLAG_INT, &worker_spin_us, 0,
         "an idle worker, when no other runs and jobs lately came soon after one another, busy-waits this long for "
         "the next job before sleeping "
         "(default 150 with 2 or more cores, else 0: never)", 0},
        {"max-open", API_FLAG_INT, &max_open, 0, "open tenant databases, and replication logs, at most (default 1000 each)", 0},
        {"cache-kib", API_FLAG_INT, &cache_kib, 0, "page cache per open tenant in KiB (default 256)", 0},
        {"max-body", API_FLAG_SIZE, &cfg.max_body, 0, "request body limit in bytes (default 8 MiB)", 0},
        {"stmt-timeout-ms", API_FLAG_INT, &stmt_timeout_ms, 0, "per-statement time limit (default 5000)", 0},
        {"internal-token", API_FLAG_STRING, &cfg.internal_token, 0,
         "file with the token agents present to each other (default: internal.token beside --verify-key)", 0},
        {"max-lag", API_FLAG_INT, &max_lag_s, 0, "/healthz turns 503 when a replica lags longer (seconds, default 5)", 0},
        {"quorum-timeout-ms", API_FLAG_INT, &quorum_timeout_ms, 0,
         "how long a quorum write waits for a replica (default 5000)", 0},
        {"log-keep", API_FLAG_SIZE, &cfg.log_keep_bytes, 0,
         "compact a tenant's replication log beyond this many bytes (default 8 MiB)", 0},
        {"catchup-timeout", API_FLAG_STRING, &catchup, 0,
         "how long a replica waits for shoal-min-txid before the primary serves (e.g. 2s, 500ms; default 2s)", 0},
        {"tenant-wait", API_FLAG_STRING, &tenant_wait, 0,
         "how long a request for a tenant this agent does not know yet waits for it to appear (default 1s)", 0},
        {"pull-wait-ms", API_FLAG_INT, &pull_wait_ms, 0, "replication long-poll length (default 1000)", 0},
        {"traffic-interval-ms", API_FLAG_INT, &traffic_interval_ms, 0,
         "how often write counts by client region are published for placement (default 10000)", 0},
        {"log-level", API_FLAG_STRING, &log_level, 0, "debug, info, warn or error", 0},
        {NULL, 0, NULL, 0, NULL, 0},
    };
    if ((rc = api_flags_parse(argc, argv, "shoal-agent", "Hosts tenant SQLite databases and serves them over Hrana.",
                              flags)) >= 0)
        return rc;
    if (api_node_name_check(cfg.node, strlen(cfg.node), &err) != API_OK ||
        api_region_check(cfg.region, strlen(cfg.region), &err) != API_OK) {
        fprintf(stderr, "shoal-agent: %s\n", err.msg);
        return 2;
    }
    if (cfg.lease_ttl_s < 2 || cfg.lease_ttl_s > 3600 || workers < 1 || workers > 256 || active_workers < 0 || active_workers > 256 || loops < 0 || loops > 64 || loop_spin_us < -1 || loop_spin_us > 100000 || worker_spin_us < -1 || worker_spin_us > 100000 || inline_reads < 0 || inline_reads > 1024 || max_open < 1 ||
        cache_kib < 16 || stmt_timeout_ms < 0 || max_lag_s < 1 || quorum_timeout_ms < 1 || pull_wait_ms < 10 ||
        pull_wait_ms > 60000 || traffic_interval_ms < 100 || traffic_interval_ms > 3600000 ||
        (cfg.log_keep_bytes != 0 && cfg.log_keep_bytes < 4096)) {
        fprintf(stderr, "shoal-agent: a numeric flag is out of range (see --help)\n");
        return 2;
    }
    cfg.workers = (size_t)workers;
    cfg.active_workers = (size_t)active_workers;
    cfg.inline_reads = (size_t)inline_reads;
    cfg.loops = (size_t)loops;
    cfg.loop_spin_us = loop_spin_us;
    cfg.worker_spin_us = worker_spin_us;
    cfg.max_open = (size_t)max_open;
    cfg.cache_kib = (int)cache_kib;
    cfg.stmt_timeout_ms = stmt_timeout_ms;
    cfg.max_lag_ms = max_lag_s * 1000;
    if (catchup != NULL && parse_duration_ms(catchup, &cfg.catchup_timeout_ms) != 0) {
        fprintf(stderr, "shoal-agent: --catchup-timeout takes a duration such as 2s or 500ms\n");
        return 2;
    }
    if (tenant_wait != NULL && parse_duration_ms(tenant_wait, &cfg.tenant_wait_ms) != 0) {
        fprintf(stderr, "shoal-agent: --tenant-wait takes a duration such as 1s or 500ms\n");
        return 2;
    }
    cfg.quorum_timeout_ms = quorum_timeout_ms;
    cfg.pull_wait_ms = pull_wait_ms;
    cfg.traffic_interval_ms = traffic_interval_ms;
    if (cfg.data_dir == NULL) {
        snprintf(data_dir, sizeof(data_dir), "./data/%s", cfg.node);
        cfg.data_dir = data_dir;
    }
    char comp[80];
    snprintf(comp, sizeof(comp), "agent %s", cfg.node);
    if ((rc = api_daemon_init("shoal-agent", comp, log_level)) >= 0)
        return rc;
    {
        /* Thousands of tenants: up to --max-open databases (each a file, a
         * WAL and a shared-memory file), as many replication logs, plus
         * sockets. Take the hard limit. */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
                log_warn("cannot raise the open-file limit to %llu", (unsigned long long)rl.rlim_max);
        }
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)(cfg.max_open * 4 + 256))
            log_warn("open-file limit %llu is low for --max-open %zu (each open tenant needs up to 4 files)",
                     (unsigned long long)rl.rlim_cur, cfg.max_open);
    }
    struct agent *agent;
    if (agent_new(&cfg, &agent, &err) != API_OK) {
        log_error("cannot start: %s", err.msg);
        api_daemon_fini();
        return 1;
    }
    api_daemon_on_stop(stop, agent);
    agent_run(agent);
    log_info("stopping");
    api_daemon_on_stop(NULL, NULL); /* a second signal must not reach what is freed next */
    agent_free(agent); /* before api_daemon_fini: it ends libcurl */
    api_daemon_fini();
    return 0;
}
