/*
 * orchestrator/orch.c: the admin API (see orch.h).
 *
 * Every /v1 request needs the admin bearer token. Validation happens on the
 * loop thread (cheap, and bad input never reaches etcd); anything that
 * blocks runs on a worker and answers through a deferred reply.
 *
 * Creating a tenant: placement chooses nodes from the live view, one txn
 * writes the record only if the key was never created (409 otherwise), and
 * the request then waits, event-driven on the view, until the primary's
 * agent holds the tenant's lease, so the caller can use the tenant at once.
 */
#include "orchestrator/orch.h"
#include "orchestrator/orch_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "api/cluster.h"
#include "api/etcd.h"
#include "api/failpoint.h"
#include "api/http.h"
#include "api/jsonutil.h"
#include "api/log.h"
#include "api/names.h"
#include "api/server.h"
#include "api/token.h"
#include "api/workq.h"
#include "placement/place.h"

#define ORCH_MAX_LIST 1000
#define ORCH_DEFAULT_LIST 100


static __thread struct api_http_client *tl_http;

static void worker_exit(void)
{
    api_http_client_free(tl_http);
    tl_http = NULL;
    orch_handover_thread_exit();
}

void orch_config_init(struct orch_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen = "127.0.0.1:7400";
    cfg->etcd = "http://127.0.0.1:2379";
    cfg->regions_path = "ops/regions.json";
    cfg->signing_key = "run/secrets/cluster.key";
    cfg->admin_token_file = "run/secrets/admin.token";
    cfg->workers = 16;
    cfg->create_wait_ms = 5000;
    cfg->leader_ttl_s = 5;
    cfg->placement_window_ms = 60000;
    cfg->placement_dwell_ms = 3600000;
    cfg->placement_threshold_permille = 200;
    cfg->placement_min_writes = 100;
    cfg->repair_grace_ms = 300000;
}

/* ------------------------------------------------------------------ */
/* helpers                                                             */

int orch_holder_is(void *ud, struct api_cluster *c)
{
    struct orch_holder_is *h = ud;
    struct api_cluster_tenant t;
    return api_cluster_tenant_locked(c, h->tenant, &t) && t.leased && strcmp(t.holder, h->node) == 0;
}

int orch_check_admin(struct orch *o, struct api_req *r)
{
    size_t len, tlen;
    const char *v = api_req_header(r, "authorization", &len), *tok;

    if (v == NULL) {
        api_reply_errorf(r, API_EUNAUTHORIZED, "missing Authorization: Bearer <admin token>");
        return 0;
    }
    if (api_bearer_token(v, len, &tok, &tlen) != 0 || !api_admin_token_equal(o->admin_token, tok, tlen)) {
        api_reply_errorf(r, API_EUNAUTHORIZED, "the admin token is not valid");
        return 0;
    }
    return 1;
}

/* The {id} path parameter, validated, into OUT. Replies 400 and returns 0 if bad. */
int orch_tenant_param(struct api_req *r, char *out)
{
    size_t len;
    const char *v = api_req_param(r, "id", &len);
    struct api_err err;

    if (api_tenant_id_check(v ? v : "", v ? len : 0, &err) != API_OK) {
        api_reply_error(r, &err);
        return 0;
    }
    memcpy(out, v, len);
    out[len] = '\0';
    return 1;
}

static json_t *str_or_null(const char *s)
{
    return s && s[0] ? json_string(s) : json_null();
}

/* The node's region from the view, or "" */
void orch_node_region(struct orch *o, const char *node, char *region, char *url)
{
    struct api_cluster_node n;
    region[0] = url[0] = '\0';
    if (api_cluster_node(o->view, node, &n)) {
        strcpy(region, n.region);
        strcpy(url, n.url);
    }
}

/* The contract's tenant shape. INSTANCES (may be NULL) replaces the
 * instance list built from the record. */
static json_t *tenant_json(struct orch *o, const struct api_cluster_tenant *t, json_t *instances)
{
    char created[21], region[8], url[API_URL_MAX];
    json_t *primary;

    api_time_format(t->created_at, created);
    if (t->leased) {
        orch_node_region(o, t->holder, region, url);
        primary = json_pack("{s:s,s:o,s:s,s:I}", "node", t->holder, "region", str_or_null(region), "url",
                            t->holder_url, "epoch", (json_int_t)t->epoch);
    } else {
        primary = json_null();
    }
    if (instances == NULL) {
        instances = json_array();
        for (size_t i = 0; i < t->nnodes; i++) {
            orch_node_region(o, t->nodes[i], region, url);
            int is_primary = t->leased ? strcmp(t->holder, t->nodes[i]) == 0 : strcmp(t->primary, t->nodes[i]) == 0;
            json_array_append_new(instances,
                                  json_pack("{s:s,s:o,s:o,s:s,s:n,s:n,s:n}", "node", t->nodes[i], "region",
                                            str_or_null(region), "url", str_or_null(url), "role",
                                            is_primary ? "primary" : "replica", "txid", "checksum", "lag_ms"));
        }
    }
    json_t *failover = json_null();
    if (t->failover_at > 0) {
        char at[21];
        api_time_format(t->failover_at, at);
        failover = json_pack("{s:s,s:s,s:I}", "at", at, "from", t->failover_from, "lost_txids",
                             (json_int_t)t->failover_lost_txids);
    }
    json_t *doc = json_pack("{s:s,s:s,s:s,s:s,s:i,s:o,s:o,s:s}", "id", t->id, "region", t->region, "placement",
                     t->placement, "durability", t->durability, "replicas", t->replicas, "primary", primary,
                     "instances", instances, "created_at", created);
    if (doc != NULL)
        json_object_set_new(doc, "last_failover", failover);
    else
        json_decref(failover);
    return doc;
}

/* ------------------------------------------------------------------ */
/* POST /v1/tenants                                                    */

struct create_job {
    struct orch *o;
    struct api_pending *p;
    struct api_cluster_tenant want; /* id, placement, durability, replicas filled */
    char region[8];                 /* asked, or "" */
    char client_region[8];          /* from shoal-client-region, or "" */
};

static int lease_ready(void *ud, struct api_cluster *c)
{
    struct create_job *j = ud;
    struct api_cluster_tenant t;
    /* held by the primary named in the record: not some key left over */
    return api_cluster_tenant_locked(c, j->want.id, &t) && t.leased && strcmp(t.holder, t.primary) == 0;
}

/* Writes tenant T's record at KEY (JSON TEXT) if the key was never
 * created; *CREATED says whether it was. The same txn writes the lease key
 * for the primary on the primary agent's session lease ("born leased"): the
 * agent adopts that key (its epoch is this txn's revision) instead of
 * acquiring it with a txn of its own, so a create is one etcd write and one
 * round of watch events. If the agent's session lease has just ended (etcd
 * refuses the whole txn), or a lease key is left from an earlier tenant of
 * the same name, the record alone is written and the agent acquires. */
static int create_record(struct orch *o, const struct api_cluster_tenant *t, const struct api_cluster_node *primary,
                         const char *key, const char *text, int *created, struct api_err *err)
{
    struct api_etcd_cmp cmps[2] = {{.key = key, .target = API_ETCD_CREATE, .result = API_ETCD_EQUAL, .number = 0}};
    struct api_etcd_op puts[2] = {{.kind = API_ETCD_OP_PUT, .key = key, .value = text, .value_len = strlen(text)}};
    struct api_etcd_txn_result res;
    char lkey[256];
    char *lval = NULL;
    int rc;

    if (primary->lease != 0 && (lval = api_cluster_lease_value(primary->node, primary->url)) != NULL) {
        /* the fault test's stand-in for a session lease that ended after the view saw it */
        int64_t lease = api_failpoint_error("create-lease-gone") ? primary->lease ^ 0x5a5a5a5a : primary->lease;
        snprintf(lkey, sizeof(lkey), "%s%s", API_CLUSTER_LEASES, t->id);
        cmps[1] = (struct api_etcd_cmp){.key = lkey, .target = API_ETCD_CREATE, .result = API_ETCD_EQUAL, .number = 0};
        puts[1] = (struct api_etcd_op){.kind = API_ETCD_OP_PUT, .key = lkey, .value = lval,
                                       .value_len = strlen(lval), .lease = lease};
        rc = api_etcd_txn(o->etcd, cmps, 2, puts, 2, NULL, 0, &res, err);
        free(lval);
        if (rc == API_OK && res.succeeded) {
            api_etcd_txn_result_fini(&res);
            *created = 1;
            return API_OK;
        }
        if (rc == API_OK)
            api_etcd_txn_result_fini(&res);
        else if (rc != API_ENOTFOUND) /* not a refusal: the txn may have happened */
            return rc;
        log_debug("tenant=%s not born leased (%s): writing the record alone", t->id,
                  rc == API_OK ? "a lease key exists" : "the primary's session lease is gone");
    }
    if ((rc = api_etcd_txn(o->etcd, cmps, 1, puts, 1, NULL, 0, &res, err)) != API_OK)
        return rc;
    *created = res.succeeded;
    api_etcd_txn_result_fini(&res);
    return API_OK;
}

static void create_job(void *arg)
{
    struct create_job *j = arg;
    struct orch *o = j->o;
    struct api_cluster_node *nodes = NULL;
    struct place_node *pn = NULL;
    struct place_decision d;
    struct api_err err;
    struct api_resp *resp = NULL;
    size_t nn = api_cluster_nodes(o->view, &nodes);
    struct place_request req = {.region = -1, .client_region = -1, .replicas = (uint32_t)j->want.replicas};
    int rc;

    if (j->region[0])
        req.region = place_region_index(o->regions, j->region);
    if (j->client_region[0])
        req.client_region = place_region_index(o->regions, j->client_region);
    if (nn > 0 && (pn = calloc(nn, sizeof(*pn))) == NULL) {
        api_err_set(&err, API_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < nn; i++) {
        pn[i].name = nodes[i].node;
        pn[i].region = place_region_index(o->regions, nodes[i].region);
        pn[i].healthy = pn[i].region >= 0; /* a node in a region we do not know cannot be placed on */
        api_cluster_node_load(o->view, nodes[i].node, &pn[i].tenants, &pn[i].primaries);
    }
    rc = place_new_tenant(o->regions, pn, nn, &req, &d);
    if (rc != PLACE_OK) {
        if (rc == PLACE_ENOCAPACITY)
            api_err_set(&err, API_ENOCAPACITY, "no room for tenant '%s' with %d replica(s)%s%s: %zu node(s) registered",
                        j->want.id, j->want.replicas, j->region[0] ? " and its primary in " : "", j->region, nn);
        else
            api_err_set(&err, API_EINVAL, "placing tenant '%s': %s", j->want.id, place_status_str(rc));
        goto fail;
    }
    {
        struct api_cluster_tenant t = j->want;
        char key[256];
        snprintf(t.primary, sizeof(t.primary), "%s", nodes[d.primary].node);
        snprintf(t.region, sizeof(t.region), "%s", nodes[d.primary].region);
        t.nnodes = 0;
        snprintf(t.nodes[t.nnodes++], API_NAME_MAX, "%s", nodes[d.primary].node);
        for (size_t i = 0; i < d.nreplicas && t.nnodes < API_CLUSTER_MAX_INSTANCES; i++)
            snprintf(t.nodes[t.nnodes++], API_NAME_MAX, "%s", nodes[d.replicas[i]].node);
        t.generation = 1;
        t.created_at = api_unix_now();
        json_t *rec = api_cluster_tenant_record_json(&t);
        char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
        json_decref(rec);
        if (text == NULL) {
            api_err_set(&err, API_ENOMEM, "out of memory");
            goto fail;
        }
        snprintf(key, sizeof(key), "%s%s", API_CLUSTER_TENANTS, t.id);
        int created = 0;
        rc = create_record(o, &t, &nodes[d.primary], key, text, &created, &err);
        free(text);
        if (rc != API_OK) {
            api_err_wrap(&err, "creating tenant '%s'", t.id);
            goto fail;
        }
        if (!created) {
            api_err_set(&err, API_ETENANTEXISTS, "tenant '%s' already exists", t.id);
            goto fail;
        }
        atomic_fetch_add(&o->tenants_created, 1);
        log_info("tenant created tenant=%s primary=%s nodes=%zu", t.id, t.primary, t.nnodes);
        /* Wait (event-driven) until the primary holds the lease. */
        api_cluster_wait(o->view, j->want.id, lease_ready, j, api_now_ms() + o->cfg.create_wait_ms);
        struct api_cluster_tenant now;
        if (!api_cluster_tenant(o->view, t.id, &now))
            now = t; /* the view has not caught up: answer with what we wrote */
        resp = api_resp_new(201);
        if (resp != NULL)
            api_resp_set_json(resp, 201, tenant_json(o, &now, NULL));
    }
    free(pn);
    free(nodes);
    api_pending_finish(j->p, resp);
    free(j);
    return;
fail:
    free(pn);
    free(nodes);
    api_pending_finish(j->p, api_resp_error(&err));
    free(j);
}

static void on_create_tenant(struct api_req *r, void *ud)
{
    static const char *const fields[] = {"id", "region", "replicas", "placement", "durability", NULL};
    struct orch *o = ud;
    struct create_job *j;
    struct api_err err;
    json_t *body = NULL;
    const char *id, *region, *placement, *durability;
    int64_t replicas = 2;
    size_t len;

    if (!orch_check_admin(o, r))
        return;
    if (api_req_json_object(r, &body, &err) != API_OK || api_json_only_keys(body, fields, "tenant", &err) != API_OK ||
        api_json_opt_string(body, "id", &id, &err) != API_OK ||
        api_json_opt_string(body, "region", &region, &err) != API_OK ||
        api_json_opt_string(body, "placement", &placement, &err) != API_OK ||
        api_json_opt_string(body, "durability", &durability, &err) != API_OK ||
        api_json_opt_int(body, "replicas", 0, API_CLUSTER_MAX_INSTANCES - 1, &replicas, &err) != API_OK)
        goto bad;
    if (id == NULL) {
        api_err_set(&err, API_EBADTENANT, "field 'id' is required");
        goto bad;
    }
    if (api_tenant_id_check(id, strlen(id), &err) != API_OK)
        goto bad;
    if (region != NULL && api_region_check(region, strlen(region), &err) != API_OK)
        goto bad;
    if (region != NULL && place_region_index(o->regions, region) < 0) {
        api_err_set(&err, API_EINVAL, "unknown region '%s' (GET /v1/regions lists them)", region);
        goto bad;
    }
    if (placement != NULL && strcmp(placement, "auto") != 0 && strcmp(placement, "pinned") != 0) {
        api_err_set(&err, API_EINVAL, "field 'placement' must be \"auto\" or \"pinned\"");
        goto bad;
    }
    if (durability != NULL && strcmp(durability, "async") != 0 && strcmp(durability, "quorum") != 0) {
        api_err_set(&err, API_EINVAL, "field 'durability' must be \"async\" or \"quorum\"");
        goto bad;
    }
    if ((j = calloc(1, sizeof(*j))) == NULL) {
        api_err_set(&err, API_ENOMEM, "out of memory");
        goto bad;
    }
    j->o = o;
    snprintf(j->want.id, sizeof(j->want.id), "%s", id);
    snprintf(j->want.placement, sizeof(j->want.placement), "%s", placement ? placement : "auto");
    snprintf(j->want.durability, sizeof(j->want.durability), "%s", durability ? durability : "async");
    j->want.replicas = (int)replicas;
    if (region != NULL)
        snprintf(j->region, sizeof(j->region), "%s", region);
    const char *cr = api_req_header(r, "shoal-client-region", &len);
    if (cr != NULL && len < sizeof(j->client_region) && api_region_valid(cr, len))
        snprintf(j->client_region, sizeof(j->client_region), "%.*s", (int)len, cr);
    json_decref(body);
    j->p = api_req_defer(r);
    api_workq_submit(o->workers, atomic_fetch_add(&o->job_seq, 1), create_job, j);
    return;
bad:
    json_decref(body);
    api_reply_error(r, &err);
}

/* ------------------------------------------------------------------ */
/* GET /v1/tenants/{id}: the record plus each instance's own report     */

struct show_job {
    struct orch *o;
    struct api_pending *p;
    struct api_cluster_tenant t;
};

json_t *orch_agent_status(struct orch *o, const char *url, const char *tenant)
{
    char full[API_URL_MAX + 128], auth[1024], *tok = NULL;
    const char *hdrs[2] = {auth, NULL};
    struct api_http_resp resp;
    struct api_err err;
    json_t *rep = NULL;

    if (tl_http == NULL)
        tl_http = api_http_client_new();
    int64_t now = api_unix_now();
    if (tl_http == NULL || api_token_sign(o->sk, tenant, API_ACCESS_RO, now, now + 60, &tok, &err) != API_OK)
        return NULL;
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", tok);
    snprintf(full, sizeof(full), "%s/internal/tenants/%s", url, tenant);
    struct api_http_req rq = {.method = "GET", .url = full, .headers = hdrs, .timeout_ms = 2000};
    if (api_http_do(tl_http, &rq, &resp, &err) == API_OK) {
        if (resp.status == 200)
            rep = json_loadb(resp.body, resp.body_len, 0, NULL);
        api_http_resp_fini(&resp);
    }
    free(tok);
    return rep;
}

static json_t *instance_report(struct orch *o, const struct api_cluster_tenant *t, const char *node)
{
    char region[8], url[API_URL_MAX];
    int is_primary = t->leased ? strcmp(t->holder, node) == 0 : strcmp(t->primary, node) == 0;
    json_t *inst, *rep = NULL;

    orch_node_region(o, node, region, url);
    inst = json_pack("{s:s,s:o,s:o,s:s,s:n,s:n,s:n}", "node", node, "region", str_or_null(region), "url",
                     str_or_null(url), "role", is_primary ? "primary" : "replica", "txid", "checksum", "lag_ms");
    if (url[0] == '\0') {
        json_object_set_new(inst, "state", json_string("down"));
        return inst;
    }
    rep = orch_agent_status(o, url, t->id);
    if (rep == NULL) {
        json_object_set_new(inst, "state", json_string("unreachable"));
        return inst;
    }
    const char *state = json_string_value(json_object_get(rep, "state"));
    json_object_set_new(inst, "state", json_string(state ? state : "unknown"));
    json_object_set(inst, "bytes", json_object_get(rep, "bytes") ? json_object_get(rep, "bytes") : json_null());
    static const char *const copied[] = {"txid", "checksum", "lag_ms", "head_txid", "epoch"};
    for (size_t i = 0; i < sizeof(copied) / sizeof(copied[0]); i++) {
        json_t *v = json_object_get(rep, copied[i]);
        if (v != NULL)
            json_object_set(inst, copied[i], v);
    }
    json_decref(rep);
    return inst;
}

static void show_job(void *arg)
{
    struct show_job *j = arg;
    json_t *instances = json_array();
    for (size_t i = 0; i < j->t.nnodes; i++)
        json_array_append_new(instances, instance_report(j->o, &j->t, j->t.nodes[i]));
    struct api_resp *resp = api_resp_new(200);
    if (resp != NULL)
        api_resp_set_json(resp, 200, tenant_json(j->o, &j->t, instances));
    else
        json_decref(instances);
    api_pending_finish(j->p, resp);
    free(j);
}

static void on_show_tenant(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    char id[API_NAME_MAX];
    struct show_job *j;

    if (!orch_check_admin(o, r) || !orch_tenant_param(r, id))
        return;
    if ((j = calloc(1, sizeof(*j))) == NULL) {
        api_reply_errorf(r, API_ENOMEM, "out of memory");
        return;
    }
    if (!api_cluster_tenant(o->view, id, &j->t)) {
        free(j);
        api_reply_errorf(r, API_ENOTENANT, "tenant '%s' does not exist", id);
        return;
    }
    j->o = o;
    j->p = api_req_defer(r);
    api_workq_submit(o->workers, atomic_fetch_add(&o->job_seq, 1), show_job, j);
}

/* ------------------------------------------------------------------ */
/* GET /v1/tenants                                                     */

static void on_list_tenants(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    char limit_s[16], cursor[API_NAME_MAX + 1], region[16];
    long limit = ORCH_DEFAULT_LIST;
    struct api_cluster_tenant *page;
    struct api_err err;
    int more, q;

    if (!orch_check_admin(o, r))
        return;
    if ((q = api_req_query(r, "limit", limit_s, sizeof(limit_s))) != 0) {
        char *end;
        limit = q > 0 ? strtol(limit_s, &end, 10) : -1;
        if (q < 0 || *end != '\0' || limit < 1 || limit > ORCH_MAX_LIST) {
            api_reply_errorf(r, API_EINVAL, "limit must be a number from 1 to %d", ORCH_MAX_LIST);
            return;
        }
    }
    if ((q = api_req_query(r, "cursor", cursor, sizeof(cursor))) < 0 ||
        (q > 0 && api_tenant_id_check(cursor, strlen(cursor), &err) != API_OK)) {
        api_reply_errorf(r, API_EINVAL, "cursor is not one this API returned");
        return;
    }
    const char *after = q > 0 ? cursor : NULL;
    if ((q = api_req_query(r, "region", region, sizeof(region))) < 0 ||
        (q > 0 && !api_region_valid(region, strlen(region)))) {
        api_reply_errorf(r, API_EINVAL, "region must be a region code such as 'ams'");
        return;
    }
    size_t n = api_cluster_tenant_page(o->view, after, (size_t)limit, q > 0 ? region : NULL, &page, &more);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, tenant_json(o, &page[i], NULL));
    json_t *next = (more && n > 0) ? json_string(page[n - 1].id) : json_null();
    free(page);
    api_reply_json(r, 200, json_pack("{s:o,s:o}", "tenants", arr, "next_cursor", next));
}

/* ------------------------------------------------------------------ */
/* DELETE /v1/tenants/{id}                                             */

struct delete_job {
    struct orch *o;
    struct api_pending *p;
    char id[API_NAME_MAX];
};

static int tenant_gone(void *ud, struct api_cluster *c)
{
    struct api_cluster_tenant t;
    return !api_cluster_tenant_locked(c, ((struct delete_job *)ud)->id, &t);
}

static void delete_job(void *arg)
{
    struct delete_job *j = arg;
    char key[256];
    int64_t deleted = 0;
    struct api_err err;
    struct api_resp *resp;

    snprintf(key, sizeof(key), "%s%s", API_CLUSTER_TENANTS, j->id);
    if (api_etcd_delete(j->o->etcd, key, 0, &deleted, &err) != API_OK) {
        api_err_wrap(&err, "deleting tenant '%s'", j->id);
        resp = api_resp_error(&err);
    } else if (deleted == 0) {
        api_err_set(&err, API_ENOTENANT, "tenant '%s' does not exist", j->id);
        resp = api_resp_error(&err);
    } else {
        /* Agents see the record go, release the lease and remove files. The
         * lease key is removed here too so nothing routes to it meanwhile. */
        snprintf(key, sizeof(key), "%s%s", API_CLUSTER_LEASES, j->id);
        if (api_etcd_delete(j->o->etcd, key, 0, NULL, &err) != API_OK)
            log_warn("tenant=%s lease key not removed: %s", j->id, err.msg);
        atomic_fetch_add(&j->o->tenants_deleted, 1);
        log_info("tenant deleted tenant=%s", j->id);
        /* answer once this orchestrator's own view has seen it go, so a GET
         * right after the 204 says 404 (event-driven, bounded) */
        api_cluster_wait(j->o->view, j->id, tenant_gone, j, api_now_ms() + j->o->cfg.create_wait_ms);
        resp = api_resp_new(204);
    }
    api_pending_finish(j->p, resp);
    free(j);
}

static void on_delete_tenant(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    struct delete_job *j;
    char id[API_NAME_MAX];

    if (!orch_check_admin(o, r) || !orch_tenant_param(r, id))
        return;
    if ((j = calloc(1, sizeof(*j))) == NULL) {
        api_reply_errorf(r, API_ENOMEM, "out of memory");
        return;
    }
    j->o = o;
    snprintf(j->id, sizeof(j->id), "%s", id);
    j->p = api_req_defer(r);
    api_workq_submit(o->workers, api_hash_str(id, strlen(id)), delete_job, j);
}

/* ------------------------------------------------------------------ */
/* POST /v1/tenants/{id}/tokens                                        */

static void on_token(struct api_req *r, void *ud)
{
    static const char *const fields[] = {"access", "ttl_s", NULL};
    struct orch *o = ud;
    char id[API_NAME_MAX], expires[21];
    struct api_cluster_tenant t;
    struct api_err err;
    json_t *body = NULL;
    const char *access = NULL;
    int64_t ttl = 3600;
    char *tok = NULL;
    size_t blen;

    if (!orch_check_admin(o, r) || !orch_tenant_param(r, id))
        return;
    api_req_body(r, &blen);
    if (blen > 0 && (api_req_json_object(r, &body, &err) != API_OK ||
                     api_json_only_keys(body, fields, "token request", &err) != API_OK ||
                     api_json_opt_string(body, "access", &access, &err) != API_OK ||
                     api_json_opt_int(body, "ttl_s", 1, 366LL * 24 * 3600, &ttl, &err) != API_OK))
        goto bad;
    if (access != NULL && strcmp(access, "rw") != 0 && strcmp(access, "ro") != 0) {
        api_err_set(&err, API_EINVAL, "field 'access' must be \"rw\" or \"ro\"");
        goto bad;
    }
    if (!api_cluster_tenant(o->view, id, &t)) {
        api_err_set(&err, API_ENOTENANT, "tenant '%s' does not exist", id);
        goto bad;
    }
    enum api_access acc = (access != NULL && strcmp(access, "ro") == 0) ? API_ACCESS_RO : API_ACCESS_RW;
    int64_t now = api_unix_now();
    if (api_token_sign(o->sk, id, acc, now, now + ttl, &tok, &err) != API_OK)
        goto bad;
    api_time_format(now + ttl, expires);
    atomic_fetch_add(&o->tokens_issued, 1);
    api_reply_json(r, 201, json_pack("{s:s,s:s,s:s,s:s}", "token", tok, "tenant", id, "access",
                                     acc == API_ACCESS_RO ? "ro" : "rw", "expires_at", expires));
    free(tok);
    json_decref(body);
    return;
bad:
    json_decref(body);
    api_reply_error(r, &err);
}

/* ------------------------------------------------------------------ */
/* nodes, regions, health, metrics                                     */

static json_t *node_json(struct orch *o, const struct api_cluster_node *n)
{
    uint32_t tenants, primaries;
    api_cluster_node_load(o->view, n->node, &tenants, &primaries);
    return json_pack("{s:s,s:s,s:s,s:s,s:I,s:I}", "node", n->node, "region", n->region, "url", n->url, "health",
                     "up", "tenants", (json_int_t)tenants, "primaries", (json_int_t)primaries);
}

static void on_list_nodes(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    struct api_cluster_node *nodes;
    if (!orch_check_admin(o, r))
        return;
    size_t n = api_cluster_nodes(o->view, &nodes);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, node_json(o, &nodes[i]));
    free(nodes);
    api_reply_json(r, 200, json_pack("{s:o}", "nodes", arr));
}

static void on_show_node(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    struct api_cluster_node n;
    struct api_err err;
    size_t len;
    const char *v = api_req_param(r, "node", &len);
    char name[API_NAME_MAX];

    if (!orch_check_admin(o, r))
        return;
    if (api_node_name_check(v, len, &err) != API_OK) {
        api_reply_error(r, &err);
        return;
    }
    snprintf(name, sizeof(name), "%.*s", (int)len, v);
    if (!api_cluster_node(o->view, name, &n)) {
        api_reply_errorf(r, API_ENONODE, "node '%s' is not registered", name);
        return;
    }
    api_reply_json(r, 200, node_json(o, &n));
}

static void on_regions(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    struct api_cluster_node *nodes;
    if (!orch_check_admin(o, r))
        return;
    size_t nn = api_cluster_nodes(o->view, &nodes), nr = place_regions_count(o->regions);
    json_t *regions = json_array(), *rtt = json_object();
    for (size_t i = 0; i < nr; i++) {
        const char *code = place_region_code(o->regions, i);
        json_int_t count = 0;
        json_t *row = json_object();
        for (size_t k = 0; k < nn; k++)
            if (strcmp(nodes[k].region, code) == 0)
                count++;
        for (size_t k = 0; k < nr; k++)
            json_object_set_new(row, place_region_code(o->regions, k),
                                json_integer(place_rtt_ms(o->regions, i, k)));
        json_array_append_new(regions, json_pack("{s:s,s:s,s:I}", "code", code, "name",
                                                 place_region_name(o->regions, i), "nodes", count));
        json_object_set_new(rtt, code, row);
    }
    free(nodes);
    api_reply_json(r, 200, json_pack("{s:o,s:o}", "regions", regions, "rtt_ms", rtt));
}

static void on_healthz(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    struct api_cluster_node *nodes;
    size_t nn = api_cluster_nodes(o->view, &nodes);
    free(nodes);
    api_reply_json(r, 200, json_pack("{s:s,s:s,s:I,s:I,s:I}", "status", "ok", "role",
                                     orch_is_leader(o) ? "leader" : "standby", "etcd_revision",
                                     (json_int_t)api_cluster_revision(o->view), "tenants",
                                     (json_int_t)api_cluster_tenant_count(o->view), "nodes", (json_int_t)nn));
}

/* GET /v1/openapi.json: the API described (orchestrator/openapi.json, built in). */
extern const char orch_openapi_json[];
extern const size_t orch_openapi_json_len;

static void on_openapi(struct api_req *r, void *ud)
{
    if (!orch_check_admin(ud, r))
        return;
    api_reply_text(r, 200, "application/json", orch_openapi_json, orch_openapi_json_len);
}

static void on_metrics(struct api_req *r, void *ud)
{
    struct orch *o = ud;
    char buf[4096];
    size_t len = 0;
    api_server_metrics(o->server, "shoal_orchestrator", buf, sizeof(buf), &len);
    int n = snprintf(buf + len, sizeof(buf) - len,
                     "# TYPE shoal_orchestrator_tenants gauge\nshoal_orchestrator_tenants %zu\n"
                     "# TYPE shoal_orchestrator_tenants_created_total counter\n"
                     "shoal_orchestrator_tenants_created_total %llu\n"
                     "# TYPE shoal_orchestrator_tenants_deleted_total counter\n"
                     "shoal_orchestrator_tenants_deleted_total %llu\n"
                     "# TYPE shoal_orchestrator_tokens_issued_total counter\n"
                     "shoal_orchestrator_tokens_issued_total %llu\n"
                     "# TYPE shoal_orchestrator_placement_moves_total counter\n"
                     "shoal_orchestrator_placement_moves_total %llu\n"
                     "# TYPE shoal_orchestrator_replicas_repaired_total counter\n"
                     "shoal_orchestrator_replicas_repaired_total %llu\n",
                     api_cluster_tenant_count(o->view), (unsigned long long)atomic_load(&o->tenants_created),
                     (unsigned long long)atomic_load(&o->tenants_deleted),
                     (unsigned long long)atomic_load(&o->tokens_issued),
                     (unsigned long long)atomic_load(&o->placement_moves),
                     (unsigned long long)atomic_load(&o->repairs));
    if (n > 0 && (size_t)n < sizeof(buf) - len)
        len += (size_t)n;
    api_reply_text(r, 200, "text/plain; version=0.0.4", buf, len);
}

/* ------------------------------------------------------------------ */
/* lifecycle                                                           */

static int load_regions(struct orch *o, struct api_err *err)
{
    char *text, msg[256];
    size_t len;
    int rc = api_read_file(o->cfg.regions_path, 1 << 20, &text, &len, err);
    if (rc != API_OK)
        return api_err_wrap(err, "loading regions");
    rc = place_regions_parse(text, len, &o->regions, msg, sizeof(msg));
    free(text);
    if (rc != PLACE_OK)
        return api_err_set(err, API_EINVAL, "regions file '%s': %s", o->cfg.regions_path, msg);
    return API_OK;
}

/* The token agents want on /internal/.../fence: --internal-token, else
 * internal.token beside the signing key. */
static int load_internal_token(struct orch *o, struct api_err *err)
{
    if (api_token_load_beside(o->cfg.internal_token, o->cfg.signing_key, "internal.token", &o->internal_token, err) !=
        API_OK)
        return api_err_wrap(err, "internal token (--internal-token)");
    return API_OK;
}

int orch_new(const struct orch_config *cfg, struct orch **out, struct api_err *err)
{
    struct orch *o = calloc(1, sizeof(*o));
    struct api_server_config scfg = {.listen = cfg->listen, .max_body = 1 << 20};
    int rc;

    if (o == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    o->cfg = *cfg;
    pthread_mutex_init(&o->failover_mu, NULL);
    if ((rc = load_regions(o, err)) != API_OK ||
        (rc = api_token_load_secret(cfg->signing_key, o->sk, err)) != API_OK ||
        (rc = api_token_load_admin(cfg->admin_token_file, &o->admin_token, err)) != API_OK ||
        (rc = load_internal_token(o, err)) != API_OK ||
        (rc = orch_ops_new(&o->ops) == 0 ? API_OK : api_err_set(err, API_ENOMEM, "out of memory")) != API_OK ||
        (rc = api_etcd_new(cfg->etcd, &o->etcd, err)) != API_OK ||
        (rc = api_workq_new(cfg->workers, 0, worker_exit, &o->workers, err)) != API_OK ||
        (rc = api_cluster_open(o->etcd, orch_failover_on_change, o, &o->view, err)) != API_OK ||
        (rc = api_server_new(&scfg, &o->server, err)) != API_OK)
        goto fail;
    rc = 0;
    rc |= api_server_route(o->server, "POST", "/v1/tenants", on_create_tenant, o);
    rc |= api_server_route(o->server, "GET", "/v1/tenants", on_list_tenants, o);
    rc |= api_server_route(o->server, "GET", "/v1/tenants/{id}", on_show_tenant, o);
    rc |= api_server_route(o->server, "DELETE", "/v1/tenants/{id}", on_delete_tenant, o);
    rc |= api_server_route(o->server, "POST", "/v1/tenants/{id}/tokens", on_token, o);
    rc |= api_server_route(o->server, "GET", "/v1/nodes", on_list_nodes, o);
    rc |= api_server_route(o->server, "GET", "/v1/nodes/{node}", on_show_node, o);
    rc |= api_server_route(o->server, "GET", "/v1/regions", on_regions, o);
    rc |= api_server_route(o->server, "GET", "/v1/openapi.json", on_openapi, o);
    rc |= api_server_route(o->server, "GET", "/healthz", on_healthz, o);
    rc |= api_server_route(o->server, "GET", "/metrics", on_metrics, o);
    rc |= orch_handover_routes(o);
    if (rc != 0) {
        rc = api_err_set(err, API_ENOMEM, "registering routes: out of memory");
        goto fail;
    }
    atomic_store(&o->failover_ready, 1);
    if (orch_leader_start(o, &o->election) != 0) {
        rc = api_err_set(err, API_EINTERNAL, "cannot start the leader election thread");
        goto fail;
    }
    if ((rc = orch_placer_start(o, &o->placer, err)) != API_OK)
        goto fail;
    log_info("listening on %s", api_server_url(o->server));
    *out = o;
    return API_OK;
fail:
    orch_free(o);
    return rc;
}

int orch_run(struct orch *o)
{
    return api_server_run(o->server);
}

void orch_stop(struct orch *o)
{
    api_server_stop(o->server);
}

void orch_free(struct orch *o)
{
    if (o == NULL)
        return;
    orch_placer_stop(o->placer);
    orch_leader_stop(o->election); /* a standby takes over at once */
    pthread_mutex_lock(&o->failover_mu);
    atomic_store(&o->failover_ready, 0); /* the view hands no more work to the workers */
    pthread_mutex_unlock(&o->failover_mu);
    api_workq_free(o->workers);
    api_server_free(o->server);
    api_cluster_close(o->view);
    api_etcd_free(o->etcd);
    place_regions_free(o->regions);
    orch_ops_free(o->ops);
    free(o->admin_token);
    free(o->internal_token);
    sodium_memzero(o->sk, sizeof(o->sk));
    pthread_mutex_destroy(&o->failover_mu);
    free(o);
}
