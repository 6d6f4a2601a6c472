/*
 * orchestrator/failover.c: unplanned failover of tenants whose primary died.
 *
 * A tenant's lease key lives on its holder's session lease, so when an agent
 * dies etcd deletes all its keys at once after the TTL. The view reports each
 * deletion; a worker then checks the tenant: if its desired primary's node
 * is gone too, the replica with the highest TXID (the tenant's region first
 * on a tie) is named the desired primary in one etcd txn (record unchanged,
 * lease key still absent), and that agent acquires the key and promotes
 * itself. Under `async` the dead primary may have committed TXIDs no replica
 * holds: the highest TXID any replica had heard of, minus the chosen one's,
 * is recorded on the tenant as lost. Under `quorum` every acknowledged write
 * is on some replica, so the chosen one has it.
 *
 * A deposed primary that comes back finds another node named primary, turns
 * into a replica, and the new primary's snapshot replaces its divergent tail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/log.h"
#include "orchestrator/orch_int.h"

#define PROMOTE_MS 5000

struct fo_job {
    struct orch *o;
    char tenant[API_NAME_MAX]; /* "" = check every tenant without a lease */
};

struct candidate {
    char node[API_NAME_MAX];
    char region[8];
    uint64_t txid, head;
};


static void fail_over(struct orch *o, const char *id)
{
    struct api_cluster_tenant t;
    struct api_cluster_node n;
    struct candidate best = {0}, c;
    uint64_t head = 0;
    int have = 0;
    char url[API_URL_MAX];

    if (!orch_is_leader(o) || !api_cluster_tenant(o->view, id, &t) || t.leased || orch_op_running(o, id))
        return;
    if (api_cluster_node(o->view, t.primary, &n)) {
        /* its primary's agent is alive: it takes the lease back itself,
         * unless it gave the lease up because the tenant's database is
         * unhealthy there */
        char pregion[8], purl[API_URL_MAX];
        orch_node_region(o, t.primary, pregion, purl);
        json_t *st = purl[0] ? orch_agent_status(o, purl, id) : NULL;
        const char *state = json_string_value(json_object_get(st, "state"));
        int unhealthy = state != NULL && strcmp(state, "unhealthy") == 0;
        json_decref(st);
        if (!unhealthy)
            return;
    }
    int64_t detected = api_now_ms();
    for (size_t i = 0; i < t.nnodes; i++) {
        if (strcmp(t.nodes[i], t.primary) == 0 || !api_cluster_node(o->view, t.nodes[i], &n))
            continue;
        orch_node_region(o, t.nodes[i], c.region, url);
        json_t *rep = orch_agent_status(o, url, id);
        const char *tx = json_string_value(json_object_get(rep, "txid"));
        const char *hd = json_string_value(json_object_get(rep, "head_txid"));
        const char *state = json_string_value(json_object_get(rep, "state"));
        if (tx != NULL && state != NULL && strcmp(state, "bootstrapping") != 0) {
            snprintf(c.node, sizeof(c.node), "%s", t.nodes[i]);
            c.txid = strtoull(tx, NULL, 16);
            c.head = hd ? strtoull(hd, NULL, 16) : c.txid;
            if (c.head > head)
                head = c.head;
            if (!have || c.txid > best.txid ||
                (c.txid == best.txid && strcmp(c.region, t.region) == 0 && strcmp(best.region, t.region) != 0)) {
                best = c;
                have = 1;
            }
        }
        json_decref(rep);
    }
    if (!have) {
        log_warn("failover tenant=%s: primary %s is gone and no replica can take over", id, t.primary);
        return;
    }
    char busy[40];
    int oom;
    struct op *op = orch_op_start(o, "failover", id, t.primary, best.node, busy, &oom);
    if (op == NULL)
        return;
    uint64_t lost = head > best.txid ? head - best.txid : 0;
    orch_op_step(o, op, "detected", "lease of %s is gone and node %s cannot lead it (gone, or the database is unhealthy there)",
                 id, t.primary);
    orch_op_step(o, op, "chosen", "%s at txid %016llx (highest of the replicas; %llu txid(s) only the old primary had)",
                 best.node, (unsigned long long)best.txid, (unsigned long long)lost);
    /* name it the desired primary: record unchanged, lease key still absent */
    char tkey[256], lkey[256];
    struct api_etcd_kv kv;
    struct api_cluster_tenant rec;
    struct api_err err;
    int found = 0;
    snprintf(tkey, sizeof(tkey), "%s%s", API_CLUSTER_TENANTS, id);
    snprintf(lkey, sizeof(lkey), "%s%s", API_CLUSTER_LEASES, id);
    if (api_etcd_get(o->etcd, tkey, &kv, &found, NULL, &err) != API_OK || !found) {
        orch_op_finish(o, op, "failed", found ? err.msg : "the tenant was deleted");
        return;
    }
    int64_t rec_mod = kv.mod_revision;
    int rc = api_cluster_tenant_record_parse(kv.value, kv.value_len, &rec, &err);
    api_etcd_kv_fini(&kv);
    if (rc != API_OK) {
        orch_op_finish(o, op, "failed", err.msg);
        return;
    }
    char nodes[API_CLUSTER_MAX_INSTANCES][API_NAME_MAX];
    size_t nn = 0;
    snprintf(nodes[nn++], API_NAME_MAX, "%s", best.node);
    for (size_t i = 0; i < rec.nnodes && nn < API_CLUSTER_MAX_INSTANCES; i++)
        if (strcmp(rec.nodes[i], best.node) != 0)
            snprintf(nodes[nn++], API_NAME_MAX, "%s", rec.nodes[i]);
    memcpy(rec.nodes, nodes, sizeof(nodes));
    rec.nnodes = nn;
    snprintf(rec.primary, sizeof(rec.primary), "%s", best.node);
    snprintf(rec.region, sizeof(rec.region), "%s", best.region);
    rec.generation++;
    rec.failover_at = api_unix_now();
    snprintf(rec.failover_from, sizeof(rec.failover_from), "%s", t.primary);
    rec.failover_lost_txids = (int64_t)lost;
    json_t *doc = api_cluster_tenant_record_json(&rec);
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (text == NULL) {
        orch_op_finish(o, op, "failed", "out of memory");
        return;
    }
    struct api_etcd_cmp cmps[2] = {
        {.key = tkey, .target = API_ETCD_MOD, .result = API_ETCD_EQUAL, .number = rec_mod},
        {.key = lkey, .target = API_ETCD_CREATE, .result = API_ETCD_EQUAL, .number = 0},
    };
    struct api_etcd_op put = {.kind = API_ETCD_OP_PUT, .key = tkey, .value = text, .value_len = strlen(text)};
    struct api_etcd_txn_result res;
    rc = api_etcd_txn(o->etcd, cmps, 2, &put, 1, NULL, 0, &res, &err);
    free(text);
    if (rc != API_OK) {
        orch_op_finish(o, op, "failed", err.msg);
        return;
    }
    int ok = res.succeeded;
    api_etcd_txn_result_fini(&res);
    if (!ok) {
        orch_op_finish(o, op, "failed", "the record or the lease changed meanwhile (someone else acted)");
        return;
    }
    orch_op_step(o, op, "record", "%s named primary", best.node);
    struct orch_holder_is h = {id, best.node};
    if (!api_cluster_wait(o->view, h.tenant, orch_holder_is, &h, api_now_ms() + PROMOTE_MS)) {
        orch_op_finish(o, op, "failed", "the chosen replica did not take the lease in time");
        return;
    }
    char final[17];
    snprintf(final, sizeof(final), "%016llx", (unsigned long long)best.txid);
    orch_op_step(o, op, "promoted", "%s holds the lease", best.node);
    orch_op_result(o, op, api_now_ms() - detected, final, json_pack("{s:I}", "lost_txids", (json_int_t)lost));
    orch_op_finish(o, op, "done", NULL);
    log_warn("failover tenant=%s from=%s to=%s txid=%s lost_txids=%llu", id, t.primary, best.node, final,
             (unsigned long long)lost);
}

static void fo_job(void *arg)
{
    struct fo_job *j = arg;
    if (j->tenant[0]) {
        fail_over(j->o, j->tenant);
    } else {
        struct api_cluster_tenant *page;
        int more;
        size_t n = api_cluster_tenant_page(j->o->view, NULL, 1u << 30, NULL, &page, &more);
        for (size_t i = 0; i < n; i++)
            if (!page[i].leased)
                fail_over(j->o, page[i].id);
        free(page);
    }
    free(j);
}

/* Queues a failover check of TENANT ("" = every tenant without a lease),
 * unless this orchestrator is a standby or shutting down. */
static void queue_check(struct orch *o, const char *tenant)
{
    struct fo_job *j;
    if (!orch_is_leader(o) || (j = calloc(1, sizeof(*j))) == NULL)
        return;
    j->o = o;
    snprintf(j->tenant, sizeof(j->tenant), "%s", tenant);
    pthread_mutex_lock(&o->failover_mu);
    if (atomic_load(&o->failover_ready))
        api_workq_submit(o->workers, atomic_fetch_add(&o->job_seq, 1), fo_job, j);
    else
        free(j);
    pthread_mutex_unlock(&o->failover_mu);
}

void orch_failover_check(struct orch *o, const char *tenant)
{
    queue_check(o, tenant);
}

void orch_failover_on_change(void *ud, enum api_cluster_change kind, const char *id, int deleted)
{
    if (kind == API_CLUSTER_LEASE && deleted)
        queue_check(ud, id);
    else if (kind == API_CLUSTER_ALL || (kind == API_CLUSTER_NODE && deleted))
        queue_check(ud, "");
}
