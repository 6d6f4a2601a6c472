/*
 * orchestrator/handover.c: planned handover of one tenant's primary, and
 * the operations that report it (POST /v1/tenants/{id}/handover,
 * GET /v1/operations/{op}).
 *
 * Steps (DESIGN.md): the target catches up; the primary fences the tenant
 * (requests wait there, in-flight ones finish) and reports its final TXID
 * and checksum; the target confirms it holds exactly that position; one etcd
 * txn, comparing the lease key's mod revision (the epoch) and the record's,
 * deletes the old primary's lease key and names the target as the desired
 * primary; the target acquires the key (a new epoch) and promotes itself;
 * the old primary sees the record, demotes itself and sends what its fence
 * held to the target. Any failure before the txn lifts the fence: the old
 * primary resumes. A fence the orchestrator never lifts (it died) expires on
 * the agent, which resumes only if the lease is still its own in etcd.
 *
 * Operations live in memory: a restarted orchestrator forgets them (the
 * handover itself either happened in etcd or did not).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "api/failpoint.h"
#include "api/http.h"
#include "api/jsonutil.h"
#include "api/log.h"
#include "api/map.h"
#include "api/names.h"
#include "orchestrator/orch_int.h"

#define CATCHUP_MS 10000
#define CATCHUP_TXIDS 4 /* close enough to fence: the rest arrives while fenced, so the stall stays short */
#define CONFIRM_MS 3000
#define PROMOTE_MS 5000
#define FENCE_TTL_MS 5000

struct op {
    char kind[16];
    json_t *extra; /* more fields of the operation (failover: lost_txids) */
    char id[33];
    char tenant[API_NAME_MAX];
    char from[API_NAME_MAX], to[API_NAME_MAX];
    char state[8];
    json_t *steps;
    int64_t t0;
    int64_t stall_ms; /* -1 until known */
    char final_txid[17];
    char error[512];
    struct api_pending *waiter; /* ?wait=1 */
};

struct orch_ops {
    pthread_mutex_t mu;
    struct api_map *by_id;     /* id -> struct op* */
    struct api_map *running;   /* tenant -> struct op* */
};

static __thread struct api_http_client *tl_http;

void orch_handover_thread_exit(void)
{
    api_http_client_free(tl_http);
    tl_http = NULL;
}

int orch_ops_new(struct orch_ops **out)
{
    struct orch_ops *ops = calloc(1, sizeof(*ops));
    if (ops == NULL || (ops->by_id = api_map_new()) == NULL || (ops->running = api_map_new()) == NULL) {
        if (ops)
            api_map_free(ops->by_id, NULL);
        free(ops);
        return -1;
    }
    pthread_mutex_init(&ops->mu, NULL);
    *out = ops;
    return 0;
}

static void op_free(void *p)
{
    struct op *op = p;
    json_decref(op->steps);
    json_decref(op->extra);
    free(op);
}

void orch_ops_free(struct orch_ops *ops)
{
    if (ops == NULL)
        return;
    api_map_free(ops->running, NULL);
    api_map_free(ops->by_id, op_free);
    pthread_mutex_destroy(&ops->mu);
    free(ops);
}

/* The contract's operation shape. Call with ops->mu held. */
static json_t *op_json(const struct op *op)
{
    json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:O}", "id", op->id, "kind", op->kind, "tenant", op->tenant,
                          "from", op->from, "to", op->to, "state", op->state, "steps", op->steps);
    json_object_set_new(j, "stall_ms", op->stall_ms >= 0 ? json_integer(op->stall_ms) : json_null());
    json_object_set_new(j, "final_txid", op->final_txid[0] ? json_string(op->final_txid) : json_null());
    if (op->error[0])
        json_object_set_new(j, "error", json_string(op->error));
    if (op->extra != NULL)
        json_object_update(j, op->extra);
    return j;
}

static void op_step(struct orch *o, struct op *op, const char *step, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

void orch_op_step(struct orch *o, struct op *op, const char *step, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    op_step(o, op, step, "%s", detail);
}

static void op_step(struct orch *o, struct op *op, const char *step, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&o->ops->mu);
    json_array_append_new(op->steps, json_pack("{s:I,s:s,s:s}", "at_ms", (json_int_t)(api_now_ms() - op->t0), "step",
                                               step, "detail", detail));
    pthread_mutex_unlock(&o->ops->mu);
    log_info("handover op=%s tenant=%s step=%s %s", op->id, op->tenant, step, detail);
}

static void op_finish(struct orch *o, struct op *op, const char *state, const char *error);

void orch_op_finish(struct orch *o, struct op *op, const char *state, const char *error)
{
    op_finish(o, op, state, error);
}

static void op_finish(struct orch *o, struct op *op, const char *state, const char *error)
{
    struct api_pending *w;
    json_t *doc;
    pthread_mutex_lock(&o->ops->mu);
    snprintf(op->state, sizeof(op->state), "%s", state);
    if (error != NULL)
        snprintf(op->error, sizeof(op->error), "%s", error);
    api_map_del(o->ops->running, op->tenant);
    w = op->waiter;
    op->waiter = NULL;
    doc = op_json(op);
    pthread_mutex_unlock(&o->ops->mu);
    atomic_fetch_add(strcmp(state, "done") == 0 ? &o->handovers_done : &o->handovers_failed, 1);
    if (w != NULL) {
        struct api_resp *resp = api_resp_new(200);
        if (resp != NULL)
            api_resp_set_json(resp, 200, doc);
        else
            json_decref(doc);
        api_pending_finish(w, resp);
    } else {
        json_decref(doc);
    }
}

/* ------------------------------------------------------------------ */
/* talking to agents                                                   */

/* The instance's position from its status report: 0 and OUT set, or -1. */
static int position_of(struct orch *o, const char *url, const char *tenant, char txid[17], char ck[17])
{
    json_t *rep = orch_agent_status(o, url, tenant);
    const char *t = json_string_value(json_object_get(rep, "txid")), *c = json_string_value(json_object_get(rep, "checksum"));
    int rc = -1;
    if (t != NULL && c != NULL && strlen(t) == 16 && strlen(c) == 16) {
        memcpy(txid, t, 17);
        memcpy(ck, c, 17);
        rc = 0;
    }
    json_decref(rep);
    return rc;
}

/* METHOD URL/internal/tenants/{tenant}/fence with the internal token. */
static int fence_call(struct orch *o, const char *method, const char *url, const char *tenant, json_t **out,
                      struct api_err *err)
{
    char full[API_URL_MAX + 128], auth[600];
    const char *hdrs[] = {auth, "content-type: application/json", NULL};
    const char *body = "{\"ttl_ms\":" "5000" "}";
    struct api_http_resp resp;
    int rc;

    if (tl_http == NULL && (tl_http = api_http_client_new()) == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o->internal_token);
    snprintf(full, sizeof(full), "%s/internal/tenants/%s/fence", url, tenant);
    struct api_http_req rq = {.method = method, .url = full, .headers = hdrs, .body = body,
                              .body_len = strcmp(method, "POST") == 0 ? strlen(body) : 0, .timeout_ms = 5000};
    if ((rc = api_http_do(tl_http, &rq, &resp, err)) != API_OK)
        return rc;
    if (resp.status != 200 && resp.status != 204) {
        rc = api_err_set(err, API_EUPSTREAM, "%s fence on %s: HTTP %ld %.300s", method, url, resp.status, resp.body);
    } else if (out != NULL && (*out = json_loadb(resp.body, resp.body_len, 0, NULL)) == NULL) {
        rc = api_err_set(err, API_EUPSTREAM, "fence on %s: the answer is not JSON", url);
    }
    api_http_resp_fini(&resp);
    return rc;
}


/* The one etcd txn: delete the old primary's key (it must still be at
 * EPOCH) and make TO the desired primary (the record must be unchanged). */
static int move_lease(struct orch *o, const char *tenant, int64_t epoch, const char *to, struct api_err *err)
{
    char lkey[256], tkey[256];
    struct api_etcd_kv kv;
    struct api_cluster_tenant rec;
    int found = 0, rc;

    snprintf(lkey, sizeof(lkey), "%s%s", API_CLUSTER_LEASES, tenant);
    snprintf(tkey, sizeof(tkey), "%s%s", API_CLUSTER_TENANTS, tenant);
    if ((rc = api_etcd_get(o->etcd, tkey, &kv, &found, NULL, err)) != API_OK)
        return rc;
    if (!found)
        return api_err_set(err, API_ENOTENANT, "tenant '%s' was deleted", tenant);
    rc = api_cluster_tenant_record_parse(kv.value, kv.value_len, &rec, err);
    int64_t rec_mod = kv.mod_revision;
    api_etcd_kv_fini(&kv);
    if (rc != API_OK)
        return rc;
    /* the target first, then the others in their order */
    char nodes[API_CLUSTER_MAX_INSTANCES][API_NAME_MAX];
    size_t n = 0;
    snprintf(nodes[n++], API_NAME_MAX, "%s", to);
    for (size_t i = 0; i < rec.nnodes && n < API_CLUSTER_MAX_INSTANCES; i++)
        if (strcmp(rec.nodes[i], to) != 0)
            snprintf(nodes[n++], API_NAME_MAX, "%s", rec.nodes[i]);
    memcpy(rec.nodes, nodes, sizeof(nodes));
    rec.nnodes = n;
    snprintf(rec.primary, sizeof(rec.primary), "%s", to);
    struct api_cluster_node tn;
    if (api_cluster_node(o->view, to, &tn))
        snprintf(rec.region, sizeof(rec.region), "%s", tn.region); /* the tenant's region is its primary's */
    rec.generation++;
    json_t *doc = api_cluster_tenant_record_json(&rec);
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (text == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    struct api_etcd_cmp cmps[2] = {
        {.key = lkey, .target = API_ETCD_MOD, .result = API_ETCD_EQUAL, .number = epoch},
        {.key = tkey, .target = API_ETCD_MOD, .result = API_ETCD_EQUAL, .number = rec_mod},
    };
    struct api_etcd_op ops[2] = {
        {.kind = API_ETCD_OP_DELETE, .key = lkey},
        {.kind = API_ETCD_OP_PUT, .key = tkey, .value = text, .value_len = strlen(text)},
    };
    struct api_etcd_txn_result res;
    rc = api_etcd_txn(o->etcd, cmps, 2, ops, 2, NULL, 0, &res, err);
    free(text);
    if (rc != API_OK)
        return rc;
    int ok = res.succeeded;
    api_etcd_txn_result_fini(&res);
    if (!ok)
        return api_err_set(err, API_ECONFLICT, "tenant '%s': the lease or the record changed during the handover",
                           tenant);
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* the handover                                                        */

struct handover_job {
    struct orch *o;
    struct op *op;
};

static void run_handover(struct orch *o, struct op *op);

static void handover_job(void *arg)
{
    struct handover_job *j = arg;
    struct orch *o = j->o;
    struct op *op = j->op;
    free(j);
    run_handover(o, op);
}

/* Runs the steps of OP and finishes it. Blocks (a worker thread). */
static void run_handover(struct orch *o, struct op *op)
{
    struct api_cluster_tenant t;
    char region[8], from_url[API_URL_MAX], to_url[API_URL_MAX], err_msg[600];
    char ptxid[17], pck[17], ttxid[17], tck[17];
    struct api_err err;
    json_t *fin = NULL;
    int64_t deadline, fenced_at;

    if (!api_cluster_tenant(o->view, op->tenant, &t) || !t.leased || strcmp(t.holder, op->from) != 0) {
        op_finish(o, op, "failed", "the tenant's primary changed before the handover started");
        return;
    }
    int64_t epoch = t.epoch;
    orch_node_region(o, op->from, region, from_url);
    orch_node_region(o, op->to, region, to_url);
    if (!from_url[0] || !to_url[0]) {
        op_finish(o, op, "failed", "a node of the handover is not registered (down?)");
        return;
    }
    /* 1. catch-up: the target is close enough that the fence will be short */
    deadline = api_now_ms() + CATCHUP_MS;
    for (;;) {
        if (position_of(o, from_url, op->tenant, ptxid, pck) == 0 && position_of(o, to_url, op->tenant, ttxid, tck) == 0 &&
            strtoull(ttxid, NULL, 16) + CATCHUP_TXIDS >= strtoull(ptxid, NULL, 16))
            break;
        if (api_now_ms() > deadline) {
            snprintf(err_msg, sizeof(err_msg), "target %s is lagging: at txid %s, the primary at %s", op->to,
                     ttxid[0] ? ttxid : "?", ptxid[0] ? ptxid : "?");
            op_finish(o, op, "failed", err_msg);
            return;
        }
        usleep(20000);
        ttxid[0] = ptxid[0] = '\0';
    }
    op_step(o, op, "catch-up", "%s at txid %s", op->to, ttxid);
    /* 2. fence */
    fenced_at = api_now_ms();
    if (fence_call(o, "POST", from_url, op->tenant, &fin, &err) != API_OK) {
        snprintf(err_msg, sizeof(err_msg), "fencing %s failed: %s", op->from, err.msg);
        fence_call(o, "DELETE", from_url, op->tenant, NULL, &err);
        op_finish(o, op, "failed", err_msg);
        return;
    }
    snprintf(ptxid, sizeof(ptxid), "%s", json_string_value(json_object_get(fin, "txid")) ?: "");
    snprintf(pck, sizeof(pck), "%s", json_string_value(json_object_get(fin, "checksum")) ?: "");
    json_decref(fin);
    op_step(o, op, "fence", "%s stopped taking writes at txid %s checksum %s", op->from, ptxid, pck);
    api_failpoint("handover-after-fence");
    /* 3. the target holds exactly the final position */
    deadline = api_now_ms() + CONFIRM_MS;
    for (;;) {
        if (position_of(o, to_url, op->tenant, ttxid, tck) == 0 && strcmp(ttxid, ptxid) == 0 && strcmp(tck, pck) == 0)
            break;
        if (api_now_ms() > deadline) {
            snprintf(err_msg, sizeof(err_msg), "target %s did not reach txid %s checksum %s (it is at %s %s)",
                     op->to, ptxid, pck, ttxid, tck);
            fence_call(o, "DELETE", from_url, op->tenant, NULL, &err);
            op_finish(o, op, "failed", err_msg);
            return;
        }
        usleep(2000);
    }
    op_step(o, op, "confirm", "%s holds txid %s checksum %s", op->to, ttxid, tck);
    api_failpoint("handover-after-confirm");
    /* 4. the lease moves in one txn */
    if (move_lease(o, op->tenant, epoch, op->to, &err) != API_OK) {
        snprintf(err_msg, sizeof(err_msg), "moving the lease failed: %s", err.msg);
        fence_call(o, "DELETE", from_url, op->tenant, NULL, &err);
        op_finish(o, op, "failed", err_msg);
        return;
    }
    op_step(o, op, "lease moved", "record names %s; %s's key (epoch %lld) deleted", op->to, op->from, (long long)epoch);
    api_failpoint("handover-after-move");
    /* 5. the target takes the key and promotes itself */
    struct orch_holder_is h = {op->tenant, op->to};
    if (!api_cluster_wait(o->view, h.tenant, orch_holder_is, &h, api_now_ms() + PROMOTE_MS)) {
        snprintf(err_msg, sizeof(err_msg), "%s did not take the lease within %d ms", op->to, PROMOTE_MS);
        op_finish(o, op, "failed", err_msg);
        /* the record names a target that may be dead: if its node is gone
         * (now or when its session expires), failover picks a replica */
        orch_failover_check(o, op->tenant);
        return;
    }
    int64_t stall = api_now_ms() - fenced_at;
    struct api_cluster_tenant now;
    api_cluster_tenant(o->view, op->tenant, &now);
    op_step(o, op, "promoted", "%s holds the lease (epoch %lld); %s follows it", op->to, (long long)now.epoch, op->from);
    pthread_mutex_lock(&o->ops->mu);
    op->stall_ms = stall;
    snprintf(op->final_txid, sizeof(op->final_txid), "%s", ptxid);
    pthread_mutex_unlock(&o->ops->mu);
    op_finish(o, op, "done", NULL);
}

int orch_handover_begin(struct orch *o, const char *tenant, const char *from, const char *to, const char *kind,
                        const char *why, char op_id[40])
{
    int oom = 0;
    struct handover_job *j = calloc(1, sizeof(*j));
    struct op *op = j ? orch_op_start(o, kind, tenant, from, to, op_id, &oom) : NULL;
    if (op == NULL) {
        free(j);
        return -1;
    }
    snprintf(op_id, 40, "%s", op->id);
    op_step(o, op, kind, "%s", why);
    j->o = o;
    j->op = op;
    api_workq_submit(o->workers, atomic_fetch_add(&o->job_seq, 1), handover_job, j);
    return 0;
}

struct op *orch_op_start(struct orch *o, const char *kind, const char *tenant, const char *from, const char *to,
                         char busy_id[40], int *oom)
{
    struct op *op = calloc(1, sizeof(*op));
    unsigned char rnd[8];
    *oom = 0;
    busy_id[0] = '\0';
    if (op == NULL || (op->steps = json_array()) == NULL) {
        free(op);
        *oom = 1;
        return NULL;
    }
    randombytes_buf(rnd, sizeof(rnd));
    memcpy(op->id, "op-", 3);
    sodium_bin2hex(op->id + 3, sizeof(op->id) - 3, rnd, sizeof(rnd));
    snprintf(op->kind, sizeof(op->kind), "%s", kind);
    snprintf(op->tenant, sizeof(op->tenant), "%s", tenant);
    snprintf(op->from, sizeof(op->from), "%s", from);
    snprintf(op->to, sizeof(op->to), "%s", to);
    snprintf(op->state, sizeof(op->state), "running");
    op->stall_ms = -1;
    op->t0 = api_now_ms();
    pthread_mutex_lock(&o->ops->mu);
    struct op *busy = api_map_get(o->ops->running, tenant);
    if (busy == NULL) {
        api_map_put(o->ops->running, op->tenant, op, oom);
        if (!*oom)
            api_map_put(o->ops->by_id, op->id, op, oom);
        if (*oom)
            api_map_del(o->ops->running, op->tenant);
    } else {
        snprintf(busy_id, 40, "%s", busy->id);
    }
    pthread_mutex_unlock(&o->ops->mu);
    if (busy != NULL || *oom) {
        op_free(op);
        return NULL;
    }
    return op;
}

void orch_op_result(struct orch *o, struct op *op, int64_t stall_ms, const char *final_txid, json_t *extra)
{
    pthread_mutex_lock(&o->ops->mu);
    op->stall_ms = stall_ms;
    snprintf(op->final_txid, sizeof(op->final_txid), "%s", final_txid ? final_txid : "");
    json_decref(op->extra);
    op->extra = extra;
    pthread_mutex_unlock(&o->ops->mu);
}

int orch_op_running(struct orch *o, const char *tenant)
{
    pthread_mutex_lock(&o->ops->mu);
    int busy = api_map_get(o->ops->running, tenant) != NULL;
    pthread_mutex_unlock(&o->ops->mu);
    return busy;
}

/* ------------------------------------------------------------------ */
/* HTTP                                                                */

static void on_handover(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    char id[API_NAME_MAX], wait[8];
    struct api_cluster_tenant t;
    struct api_cluster_node n;
    struct api_err err;
    json_t *body = NULL;
    const char *key, *to = NULL;
    json_t *v;

    if (!orch_check_admin(o, r) || !orch_tenant_param(r, id))
        return;
    if (api_req_json_object(r, &body, &err) != API_OK) {
        api_reply_error(r, &err);
        return;
    }
    const char *to_region = NULL, *to_node = NULL;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "to_region") == 0 && json_is_string(v))
            to_region = json_string_value(v);
        else if (strcmp(key, "to_node") == 0 && json_is_string(v))
            to_node = json_string_value(v);
        else {
            api_err_set(&err, API_EINVAL, "unknown or mistyped field '%.64s' (handover takes \"to_region\" or \"to_node\")",
                        key);
            goto bad;
        }
    }
    if (!!to_region == !!to_node) {
        api_err_set(&err, API_EINVAL, "give exactly one of \"to_region\" and \"to_node\"");
        goto bad;
    }
    if ((to_node && api_node_name_check(to_node, strlen(to_node), &err) != API_OK) ||
        (to_region && api_region_check(to_region, strlen(to_region), &err) != API_OK))
        goto bad;
    if (!api_cluster_tenant(o->view, id, &t)) {
        api_err_set(&err, API_ENOTENANT, "tenant '%s' does not exist", id);
        goto bad;
    }
    if (!t.leased) {
        api_err_set(&err, API_EUNAVAILABLE, "tenant '%s' has no primary right now; retry shortly", id);
        goto bad;
    }
    for (size_t i = 0; i < t.nnodes && to == NULL; i++) {
        if (strcmp(t.nodes[i], t.holder) == 0)
            continue;
        if (to_node && strcmp(t.nodes[i], to_node) == 0)
            to = t.nodes[i];
        if (to_region && api_cluster_node(o->view, t.nodes[i], &n) && strcmp(n.region, to_region) == 0)
            to = t.nodes[i];
    }
    if (to == NULL) {
        if ((to_node && strcmp(to_node, t.holder) == 0) ||
            (to_region && api_cluster_node(o->view, t.holder, &n) && strcmp(n.region, to_region) == 0))
            api_err_set(&err, API_ECONFLICT, "tenant '%s': %s %s already holds the primary", id,
                        to_node ? "node" : "region", to_node ? to_node : to_region);
        else
            api_err_set(&err, API_ECONFLICT, "tenant '%s' has no replica on %s %s to hand over to", id,
                        to_node ? "node" : "region", to_node ? to_node : to_region);
        goto bad;
    }
    json_decref(body);
    body = NULL;

    char busy_id[40] = "";
    int oom = 0;
    struct handover_job *j = calloc(1, sizeof(*j));
    struct op *op = j ? orch_op_start(o, "handover", id, t.holder, to, busy_id, &oom) : NULL;
    if (op == NULL) {
        free(j);
        if (busy_id[0])
            api_reply_errorf(r, API_ECONFLICT, "tenant '%s' is already being handed over (operation %s)", id, busy_id);
        else
            api_reply_errorf(r, API_ENOMEM, "out of memory");
        return;
    }
    log_info("handover requested op=%s tenant=%s from=%s to=%s", op->id, id, op->from, op->to);
    j->o = o;
    j->op = op;
    if (api_req_query(r, "wait", wait, sizeof(wait)) == 1 && strcmp(wait, "0") != 0) {
        pthread_mutex_lock(&o->ops->mu);
        op->waiter = api_req_defer(r);
        pthread_mutex_unlock(&o->ops->mu);
    } else {
        pthread_mutex_lock(&o->ops->mu);
        json_t *doc = op_json(op);
        pthread_mutex_unlock(&o->ops->mu);
        api_reply_json(r, 202, doc);
    }
    api_workq_submit(o->workers, atomic_fetch_add(&o->job_seq, 1), handover_job, j);
    return;
bad:
    json_decref(body);
    api_reply_error(r, &err);
}

static void on_operation(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    size_t len;
    const char *id = api_req_param(r, "op", &len);
    char key[64];
    if (!orch_check_admin(o, r))
        return;
    if (len == 0 || len >= sizeof(key)) {
        api_reply_errorf(r, API_ENOOP, "operation '%.*s' does not exist", (int)(len > 64 ? 64 : len), id);
        return;
    }
    snprintf(key, sizeof(key), "%.*s", (int)len, id);
    pthread_mutex_lock(&o->ops->mu);
    struct op *op = api_map_get(o->ops->by_id, key);
    json_t *doc = op ? op_json(op) : NULL;
    pthread_mutex_unlock(&o->ops->mu);
    if (doc == NULL) {
        api_reply_errorf(r, API_ENOOP, "operation '%s' does not exist", key);
        return;
    }
    api_reply_json(r, 200, doc);
}

/* ------------------------------------------------------------------ */
/* drain: hand over every primary on a node                            */

#define DRAIN_CONCURRENCY 4

struct drain {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t running, done, failed;
};

struct drain_item {
    struct orch *o;
    struct drain *d;
    struct op *op;
};

static void drain_item_job(void *arg)
{
    struct drain_item *it = arg;
    run_handover(it->o, it->op);
    pthread_mutex_lock(&it->o->ops->mu);
    int ok = strcmp(it->op->state, "done") == 0;
    pthread_mutex_unlock(&it->o->ops->mu);
    pthread_mutex_lock(&it->d->mu);
    it->d->running--;
    if (ok)
        it->d->done++;
    else
        it->d->failed++;
    pthread_cond_signal(&it->d->cv);
    pthread_mutex_unlock(&it->d->mu);
    free(it);
}

/* A replica of T to take its primary: alive, not NODE; the tenant's own
 * region first. */
static const char *drain_target(struct orch *o, const struct api_cluster_tenant *t, const char *node)
{
    struct api_cluster_node n;
    const char *any = NULL;
    for (size_t i = 0; i < t->nnodes; i++) {
        if (strcmp(t->nodes[i], node) == 0 || !api_cluster_node(o->view, t->nodes[i], &n))
            continue;
        if (strcmp(n.region, t->region) == 0)
            return t->nodes[i];
        if (any == NULL)
            any = t->nodes[i];
    }
    return any;
}

struct drain_job {
    struct orch *o;
    struct op *op;
};

/* Hands over every tenant the node leads, DRAIN_CONCURRENCY at a time;
 * each is its own handover operation, listed as a step of the drain. */
static void drain_job(void *arg)
{
    struct drain_job *j = arg;
    struct orch *o = j->o;
    struct op *op = j->op;
    struct drain d = {.running = 0};
    struct api_cluster_tenant *page;
    int more;
    size_t total = 0, skipped = 0;
    free(j);
    pthread_mutex_init(&d.mu, NULL);
    pthread_cond_init(&d.cv, NULL);
    size_t n = api_cluster_tenant_page(o->view, NULL, 1u << 30, NULL, &page, &more);
    for (size_t i = 0; i < n; i++) {
        if (!page[i].leased || strcmp(page[i].holder, op->from) != 0)
            continue;
        total++;
        const char *to = drain_target(o, &page[i], op->from);
        char busy[40];
        int oom;
        struct op *sub = to ? orch_op_start(o, "handover", page[i].id, op->from, to, busy, &oom) : NULL;
        struct drain_item *it = sub ? calloc(1, sizeof(*it)) : NULL;
        if (it == NULL) {
            if (sub != NULL)
                op_finish(o, sub, "failed", "out of memory");
            skipped++;
            op_step(o, op, "skipped", "%s: %s", page[i].id, to == NULL ? "no live replica to take it" : "busy");
            continue;
        }
        op_step(o, op, "handover", "%s -> %s (operation %s)", page[i].id, to, sub->id);
        it->o = o;
        it->d = &d;
        it->op = sub;
        pthread_mutex_lock(&d.mu);
        while (d.running >= DRAIN_CONCURRENCY)
            pthread_cond_wait(&d.cv, &d.mu);
        d.running++;
        pthread_mutex_unlock(&d.mu);
        api_workq_submit(o->workers, atomic_fetch_add(&o->job_seq, 1), drain_item_job, it);
    }
    free(page);
    pthread_mutex_lock(&d.mu);
    while (d.running > 0)
        pthread_cond_wait(&d.cv, &d.mu);
    size_t done = d.done, failed = d.failed + skipped;
    pthread_mutex_unlock(&d.mu);
    pthread_mutex_destroy(&d.mu);
    pthread_cond_destroy(&d.cv);
    orch_op_result(o, op, -1, NULL,
                   json_pack("{s:I,s:I,s:I}", "total", (json_int_t)total, "moved", (json_int_t)done, "failed",
                             (json_int_t)failed));
    op_step(o, op, "drained", "%zu of %zu primaries moved off %s, %zu failed", done, total, op->from, failed);
    if (failed > 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "%zu of %zu handovers failed", failed, total);
        op_finish(o, op, "failed", msg);
    } else {
        op_finish(o, op, "done", NULL);
    }
}

static void on_drain(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    struct api_cluster_node n;
    struct api_err err;
    size_t len;
    char node[API_NAME_MAX], key[API_NAME_MAX + 8], busy[40], wait[8];
    int oom;
    const char *v = api_req_param(r, "node", &len);

    if (!orch_check_admin(o, r))
        return;
    if (api_node_name_check(v, len, &err) != API_OK) {
        api_reply_error(r, &err);
        return;
    }
    snprintf(node, sizeof(node), "%.*s", (int)len, v);
    if (!api_cluster_node(o->view, node, &n)) {
        api_reply_errorf(r, API_ENONODE, "node '%s' is not registered", node);
        return;
    }
    /* one drain per node at a time: the running map is keyed by "node:<name>" */
    snprintf(key, sizeof(key), "node:%s", node);
    struct drain_job *j = calloc(1, sizeof(*j));
    struct op *op = j ? orch_op_start(o, "drain", key, node, "*", busy, &oom) : NULL;
    if (op == NULL) {
        free(j);
        if (busy[0])
            api_reply_errorf(r, API_ECONFLICT, "node '%s' is already being drained (operation %s)", node, busy);
        else
            api_reply_errorf(r, API_ENOMEM, "out of memory");
        return;
    }
    j->o = o;
    j->op = op;
    log_info("drain requested op=%s node=%s", op->id, node);
    if (api_req_query(r, "wait", wait, sizeof(wait)) == 1 && strcmp(wait, "0") != 0) {
        pthread_mutex_lock(&o->ops->mu);
        op->waiter = api_req_defer(r);
        pthread_mutex_unlock(&o->ops->mu);
    } else {
        pthread_mutex_lock(&o->ops->mu);
        json_t *doc = op_json(op);
        pthread_mutex_unlock(&o->ops->mu);
        api_reply_json(r, 202, doc);
    }
    api_workq_submit(o->workers, atomic_fetch_add(&o->job_seq, 1), drain_job, j);
}

int orch_handover_routes(struct orch *o)
{
    return api_server_route(o->server, "POST", "/v1/tenants/{id}/handover", on_handover, o) |
           api_server_route(o->server, "POST", "/v1/nodes/{node}/drain", on_drain, o) |
           api_server_route(o->server, "GET", "/v1/operations/{op}", on_operation, o);
}
