/*
 * orchestrator/leader.c: one orchestrator acts, others stand by.
 *
 * Each orchestrator holds an etcd lease (TTL --leader-ttl, default 5 s,
 * kept alive every TTL/3) and tries to create /shoal/orchestrator/leader
 * on it (compare create_revision == 0). The one that succeeds runs the
 * control loops (failover); the others retry twice a second, so when the
 * leader dies its key vanishes with its lease and a standby takes over
 * within about TTL + 0.5 s. A clean stop revokes the lease at once.
 * Handovers and drains may be started on any orchestrator: their etcd txns
 * compare revisions, so they never conflict with the leader's work.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/log.h"
#include "orchestrator/orch_int.h"

#define LEADER_KEY "/shoal/orchestrator/leader"

struct orch_leader {
    struct orch *o;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping, started;
    int64_t lease;
    char value[256];
};

int orch_is_leader(struct orch *o)
{
    return atomic_load(&o->leader) == 1;
}

static void set_leader(struct orch *o, int on)
{
    if (atomic_exchange(&o->leader, on) != on) {
        log_info("orchestrator is now %s", on ? "the leader" : "a standby");
        if (on) /* tenants whose primary died while nobody led */
            orch_failover_on_change(o, API_CLUSTER_ALL, "", 0);
    }
}

static int sleep_or_stop(struct orch_leader *l, int64_t ms)
{
    struct timespec ts;
    api_deadline_after_ms(&ts, ms);
    pthread_mutex_lock(&l->mu);
    if (!l->stopping)
        pthread_cond_timedwait(&l->cv, &l->mu, &ts);
    int stop = l->stopping;
    pthread_mutex_unlock(&l->mu);
    return stop;
}

static void *leader_main(void *arg)
{
    struct orch_leader *l = arg;
    struct orch *o = l->o;
    struct api_err err;
    int64_t ttl = o->cfg.leader_ttl_s > 0 ? o->cfg.leader_ttl_s : 5, next_keepalive = 0;

    for (;;) {
        if (l->lease == 0) {
            if (api_etcd_lease_grant(o->etcd, ttl, &l->lease, &err) != API_OK) {
                log_warn("leader election: %s", err.msg);
                l->lease = 0;
                if (sleep_or_stop(l, 500))
                    break;
                continue;
            }
            next_keepalive = api_now_ms() + ttl * 1000 / 3;
        }
        if (api_now_ms() >= next_keepalive) {
            int64_t left = 0;
            if (api_etcd_lease_keepalive(o->etcd, l->lease, &left, &err) != API_OK || left == 0) {
                set_leader(o, 0);
                l->lease = 0;
                continue;
            }
            next_keepalive = api_now_ms() + ttl * 1000 / 3;
        }
        if (!orch_is_leader(o)) {
            struct api_etcd_cmp cmp = {.key = LEADER_KEY, .target = API_ETCD_CREATE, .result = API_ETCD_EQUAL,
                                       .number = 0};
            struct api_etcd_op put = {.kind = API_ETCD_OP_PUT, .key = LEADER_KEY, .value = l->value,
                                      .value_len = strlen(l->value), .lease = l->lease};
            struct api_etcd_txn_result res;
            if (api_etcd_txn(o->etcd, &cmp, 1, &put, 1, NULL, 0, &res, &err) == API_OK) {
                int won = res.succeeded;
                api_etcd_txn_result_fini(&res);
                if (won)
                    set_leader(o, 1);
            }
        }
        if (sleep_or_stop(l, orch_is_leader(o) ? (next_keepalive - api_now_ms() > 0 ? next_keepalive - api_now_ms() : 1)
                                               : 500))
            break;
    }
    if (l->lease != 0)
        api_etcd_lease_revoke(o->etcd, l->lease, NULL); /* a standby takes over now */
    set_leader(o, 0);
    return NULL;
}

int orch_leader_start(struct orch *o, struct orch_leader **out)
{
    struct orch_leader *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return -1;
    l->o = o;
    snprintf(l->value, sizeof(l->value), "{\"url\":\"%s\",\"pid\":%ld}", api_server_url(o->server), (long)getpid());
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    if (pthread_create(&l->thread, NULL, leader_main, l) != 0) {
        free(l);
        return -1;
    }
    l->started = 1;
    *out = l;
    return 0;
}

void orch_leader_stop(struct orch_leader *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    l->stopping = 1;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    if (l->started)
        pthread_join(l->thread, NULL);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l);
}
