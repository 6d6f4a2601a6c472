/* nodeagent/session.c: session lease and tenant lease keys (see session.h). */
#include "nodeagent/session.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/cluster.h"
#include "api/log.h"

/* Stop writing this long before the session could expire: covers clock
 * granularity and the time a write takes to commit after the check. */
#define SESSION_MARGIN_MS 1000

struct agent_session {
    struct api_etcd *etcd;
    char node[API_NAME_MAX];
    char url[API_URL_MAX];
    char *node_json;
    char *lease_value; /* {"holder","url"}: what every tenant key of ours holds */
    int64_t ttl_s;
    atomic_llong lease_id;
    atomic_llong writable_until_ms;
};

static int register_node(struct agent_session *s, int64_t lease, struct api_err *err)
{
    char key[256];
    snprintf(key, sizeof(key), "%s%s", API_CLUSTER_NODES, s->node);
    return api_etcd_put(s->etcd, key, s->node_json, strlen(s->node_json), lease, NULL, err);
}

static int grant(struct agent_session *s, struct api_err *err)
{
    int64_t id, sent = api_now_ms();
    int rc;

    if ((rc = api_etcd_lease_grant(s->etcd, s->ttl_s, &id, err)) != API_OK)
        return api_err_wrap(err, "granting the session lease of node '%s'", s->node);
    if ((rc = register_node(s, id, err)) != API_OK) {
        api_etcd_lease_revoke(s->etcd, id, NULL);
        return api_err_wrap(err, "registering node '%s'", s->node);
    }
    atomic_store(&s->lease_id, id);
    atomic_store(&s->writable_until_ms, sent + s->ttl_s * 1000 - SESSION_MARGIN_MS);
    log_info("session lease granted node=%s lease=%llx ttl=%llds", s->node, (unsigned long long)id,
             (long long)s->ttl_s);
    return API_OK;
}

int agent_session_new(struct api_etcd *etcd, const char *node, const char *url, const char *node_json,
                      int64_t ttl_s, struct agent_session **out, struct api_err *err)
{
    struct agent_session *s = calloc(1, sizeof(*s));
    int rc;

    if (s == NULL)
        return api_err_set(err, API_ENOMEM, "session: out of memory");
    s->etcd = etcd;
    snprintf(s->node, sizeof(s->node), "%s", node);
    snprintf(s->url, sizeof(s->url), "%s", url);
    s->ttl_s = ttl_s;
    s->node_json = strdup(node_json);
    s->lease_value = api_cluster_lease_value(node, url);
    if (s->node_json == NULL || s->lease_value == NULL) {
        agent_session_free(s, 0);
        return api_err_set(err, API_ENOMEM, "session: out of memory");
    }
    if ((rc = grant(s, err)) != API_OK) {
        agent_session_free(s, 0);
        return rc;
    }
    *out = s;
    return API_OK;
}

void agent_session_free(struct agent_session *s, int revoke)
{
    if (s == NULL)
        return;
    if (revoke && atomic_load(&s->lease_id) != 0) {
        struct api_err err;
        atomic_store(&s->writable_until_ms, 0);
        if (api_etcd_lease_revoke(s->etcd, atomic_load(&s->lease_id), &err) != API_OK)
            log_warn("revoking the session lease failed: %s", err.msg);
    }
    free(s->node_json);
    free(s->lease_value);
    free(s);
}

int agent_session_keepalive(struct agent_session *s, struct api_err *err)
{
    int64_t sent = api_now_ms(), ttl = 0;
    int rc = api_etcd_lease_keepalive(s->etcd, atomic_load(&s->lease_id), &ttl, err);

    if (rc != API_OK)
        return api_err_wrap(err, "keeping the session of node '%s' alive", s->node);
    if (ttl <= 0) {
        atomic_store(&s->writable_until_ms, 0);
        return api_err_set(err, API_EUNAVAILABLE, "the session lease of node '%s' has expired", s->node);
    }
    atomic_store(&s->writable_until_ms, sent + ttl * 1000 - SESSION_MARGIN_MS);
    return API_OK;
}

int agent_session_regrant(struct agent_session *s, struct api_err *err)
{
    atomic_store(&s->writable_until_ms, 0);
    return grant(s, err);
}

int64_t agent_session_lease_id(const struct agent_session *s)
{
    return atomic_load(&s->lease_id);
}

int64_t agent_session_ttl_s(const struct agent_session *s)
{
    return s->ttl_s;
}

int agent_session_writable(const struct agent_session *s)
{
    return api_now_ms() < atomic_load(&s->writable_until_ms);
}

int agent_session_acquire(struct agent_session *s, const char *id, int64_t *epoch, char *holder,
                          struct api_err *err)
{
    char key[256];
    int64_t lease = atomic_load(&s->lease_id);
    struct api_etcd_cmp cmp = {.key = key, .target = API_ETCD_CREATE, .result = API_ETCD_EQUAL, .number = 0};
    struct api_etcd_op put = {.kind = API_ETCD_OP_PUT, .key = key, .value = s->lease_value,
                              .value_len = strlen(s->lease_value), .lease = lease};
    struct api_etcd_op get = {.kind = API_ETCD_OP_GET, .key = key};
    struct api_etcd_txn_result res;
    int rc;

    snprintf(key, sizeof(key), "%s%s", API_CLUSTER_LEASES, id);
    if ((rc = api_etcd_txn(s->etcd, &cmp, 1, &put, 1, &get, 1, &res, err)) != API_OK)
        return api_err_wrap(err, "acquiring the lease of tenant '%s'", id);
    if (res.succeeded) {
        *epoch = res.revision;
        api_etcd_txn_result_fini(&res);
        return API_OK;
    }
    /* Held. If it holds our own value, it is this node's key from a session
     * that ended (a restart): take it over with a compare on its revision. */
    if (res.ngets == 1 && res.gets[0].n == 1) {
        const struct api_etcd_kv *kv = &res.gets[0].kvs[0];
        json_t *v = json_loadb(kv->value, kv->value_len, 0, NULL);
        const char *h = json_string_value(json_object_get(v, "holder"));
        snprintf(holder, API_NAME_MAX, "%s", h ? h : "?");
        int mine = kv->value_len == strlen(s->lease_value) && memcmp(kv->value, s->lease_value, kv->value_len) == 0;
        int64_t mod = kv->mod_revision;
        json_decref(v);
        api_etcd_txn_result_fini(&res);
        if (mine) {
            struct api_etcd_cmp cmod = {.key = key, .target = API_ETCD_MOD, .result = API_ETCD_EQUAL, .number = mod};
            if ((rc = api_etcd_txn(s->etcd, &cmod, 1, &put, 1, NULL, 0, &res, err)) != API_OK)
                return api_err_wrap(err, "taking back the lease of tenant '%s'", id);
            int ok = res.succeeded;
            *epoch = res.revision;
            api_etcd_txn_result_fini(&res);
            if (ok)
                return API_OK;
            return api_err_set(err, API_ECONFLICT, "tenant '%s': lease changed while taking it back", id);
        }
        return api_err_set(err, API_ECONFLICT, "tenant '%s': lease held by %s", id, holder);
    }
    api_etcd_txn_result_fini(&res);
    snprintf(holder, API_NAME_MAX, "?");
    return api_err_set(err, API_ECONFLICT, "tenant '%s': lease held by another node", id);
}

int agent_session_release(struct agent_session *s, const char *id, struct api_err *err)
{
    char key[256];
    struct api_etcd_cmp cmps[2] = {
        {.key = key, .target = API_ETCD_VALUE, .result = API_ETCD_EQUAL, .value = s->lease_value,
         .value_len = strlen(s->lease_value)},
        {.key = key, .target = API_ETCD_LEASE, .result = API_ETCD_EQUAL, .number = atomic_load(&s->lease_id)},
    };
    struct api_etcd_op del = {.kind = API_ETCD_OP_DELETE, .key = key};
    struct api_etcd_txn_result res;
    int rc;

    snprintf(key, sizeof(key), "%s%s", API_CLUSTER_LEASES, id);
    if ((rc = api_etcd_txn(s->etcd, cmps, 2, &del, 1, NULL, 0, &res, err)) != API_OK)
        return api_err_wrap(err, "releasing the lease of tenant '%s'", id);
    api_etcd_txn_result_fini(&res);
    return API_OK;
}
