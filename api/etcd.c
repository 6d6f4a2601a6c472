/*
 * api/etcd.c: the etcd v3 client over the JSON gateway (see etcd.h).
 *
 * Traps handled here, each observed on etcd 3.4.23 (../shared/ETCD.md):
 * - keys and values are standard base64 WITH padding;
 * - int64s come back as JSON strings (and are sent as strings: a C double
 *   would corrupt lease IDs near 2^61);
 * - zero values are omitted: an absent "succeeded" is false, an absent
 *   "TTL" in a keep-alive reply means the lease is gone, absent "kvs" is none;
 * - the gateway takes one message per HTTP/1.1 request body (etcd #8237), so
 *   a keep-alive is one POST, and a watch is one POST whose response streams
 *   newline-delimited {"result":...} objects.
 *
 * A watch resumes after the last event it delivered (mod_revision + 1), not
 * after a response's header revision, which may run ahead of the events a
 * slow watcher has been sent.
 */
#include "api/etcd.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <sodium.h>

#include "api/http.h"
#include "api/log.h"

struct api_etcd {
    char **endpoints;
    size_t nendpoints;
    atomic_size_t good; /* the endpoint that answered last */
    long timeout_ms;
    pthread_mutex_t mu;
    struct api_http_client **idle;
    size_t nidle, capidle;
};

struct api_etcd_watch {
    struct api_etcd *e;
    char *prefix;
    int64_t next_rev;
    api_etcd_watch_fn on_events;
    api_etcd_resync_fn on_resync;
    void *ud;
    atomic_int cancel;
    pthread_t tid;
    char *buf;
    size_t len, cap;
    int need_resync;
    int stream_error;
    int got_message;
};

/* ------------------------------------------------------------------ */
/* encoding helpers                                                    */

static json_t *b64_json(const void *data, size_t len)
{
    size_t cap = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
    char *s = malloc(cap);
    json_t *j;
    if (s == NULL)
        return NULL;
    sodium_bin2base64(s, cap, data, len, sodium_base64_VARIANT_ORIGINAL);
    j = json_string(s);
    free(s);
    return j;
}

/* Decodes a base64 JSON string into a malloc'd NUL-terminated buffer; an
 * absent value decodes to "". */
static int b64_decode(json_t *v, char **out, size_t *out_len)
{
    const char *s = json_string_value(v);
    size_t len = s ? strlen(s) : 0, n = 0;
    char *buf = malloc(len * 3 / 4 + 4);
    if (buf == NULL)
        return -1;
    if (len > 0 && sodium_base642bin((unsigned char *)buf, len * 3 / 4 + 3, s, len, NULL, &n, NULL,
                                     sodium_base64_VARIANT_ORIGINAL) != 0) {
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    if (out_len != NULL)
        *out_len = n;
    return 0;
}

static int64_t jint(json_t *v)
{
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return 0;
}

static json_t *int_json(int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%lld", (long long)v);
    return json_string(buf);
}

/* The first key after every key that starts with PREFIX. */
static char *prefix_end(const char *prefix, size_t *len)
{
    size_t n = strlen(prefix);
    char *end = malloc(n + 1);
    if (end == NULL)
        return NULL;
    memcpy(end, prefix, n + 1);
    while (n > 0) {
        if ((unsigned char)end[n - 1] < 0xff) {
            end[n - 1]++;
            *len = n;
            return end;
        }
        n--;
    }
    end[0] = '\0'; /* every key */
    *len = 1;
    return end;
}

static int parse_kv(json_t *j, struct api_etcd_kv *kv)
{
    memset(kv, 0, sizeof(*kv));
    if (b64_decode(json_object_get(j, "key"), &kv->key, NULL) != 0 ||
        b64_decode(json_object_get(j, "value"), &kv->value, &kv->value_len) != 0) {
        free(kv->key);
        kv->key = NULL;
        return -1;
    }
    kv->create_revision = jint(json_object_get(j, "create_revision"));
    kv->mod_revision = jint(json_object_get(j, "mod_revision"));
    kv->version = jint(json_object_get(j, "version"));
    kv->lease = jint(json_object_get(j, "lease"));
    return 0;
}

void api_etcd_kv_fini(struct api_etcd_kv *kv)
{
    if (kv == NULL)
        return;
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof(*kv));
}

void api_etcd_kvs_fini(struct api_etcd_kvs *kvs)
{
    if (kvs == NULL)
        return;
    for (size_t i = 0; i < kvs->n; i++)
        api_etcd_kv_fini(&kvs->kvs[i]);
    free(kvs->kvs);
    memset(kvs, 0, sizeof(*kvs));
}

static int parse_range(json_t *r, struct api_etcd_kvs *out)
{
    json_t *kvs = json_object_get(r, "kvs");
    size_t n = json_array_size(kvs);
    memset(out, 0, sizeof(*out));
    out->revision = jint(json_object_get(json_object_get(r, "header"), "revision"));
    out->more = json_is_true(json_object_get(r, "more"));
    if (n == 0)
        return 0;
    if ((out->kvs = calloc(n, sizeof(*out->kvs))) == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (parse_kv(json_array_get(kvs, i), &out->kvs[i]) != 0) {
            api_etcd_kvs_fini(out);
            return -1;
        }
        out->n++;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* client and calls                                                    */

int api_etcd_new(const char *endpoints, struct api_etcd **out, struct api_err *err)
{
    struct api_etcd *e = calloc(1, sizeof(*e));
    char *copy, *save = NULL;

    if (e == NULL || endpoints == NULL || (copy = strdup(endpoints)) == NULL) {
        free(e);
        return api_err_set(err, endpoints ? API_ENOMEM : API_EINVAL, "etcd client: %s",
                           endpoints ? "out of memory" : "no endpoints");
    }
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        size_t n = strlen(tok);
        while (n > 0 && (tok[n - 1] == '/' || tok[n - 1] == ' '))
            tok[--n] = '\0';
        if (n == 0)
            continue;
        if (strncmp(tok, "http://", 7) != 0 && strncmp(tok, "https://", 8) != 0) {
            /* the message quotes TOK, which lives in COPY: format it first */
            api_err_set(err, API_EINVAL, "etcd endpoint '%s' must start with http:// or https://", tok);
            free(copy);
            api_etcd_free(e);
            return API_EINVAL;
        }
        char **ne = realloc(e->endpoints, (e->nendpoints + 1) * sizeof(*ne));
        if (ne == NULL || (ne[e->nendpoints] = strdup(tok)) == NULL) {
            if (ne != NULL)
                e->endpoints = ne;
            free(copy);
            api_etcd_free(e);
            return api_err_set(err, API_ENOMEM, "etcd client: out of memory");
        }
        e->endpoints = ne;
        e->nendpoints++;
    }
    free(copy);
    if (e->nendpoints == 0) {
        api_etcd_free(e);
        return api_err_set(err, API_EINVAL, "no etcd endpoints in '%s'", endpoints);
    }
    e->timeout_ms = 5000;
    pthread_mutex_init(&e->mu, NULL);
    *out = e;
    return API_OK;
}

void api_etcd_free(struct api_etcd *e)
{
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->nendpoints; i++)
        free(e->endpoints[i]);
    free(e->endpoints);
    for (size_t i = 0; i < e->nidle; i++)
        api_http_client_free(e->idle[i]);
    free(e->idle);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

void api_etcd_set_timeout(struct api_etcd *e, long timeout_ms)
{
    e->timeout_ms = timeout_ms;
}

static struct api_http_client *take_client(struct api_etcd *e)
{
    struct api_http_client *c = NULL;
    pthread_mutex_lock(&e->mu);
    if (e->nidle > 0)
        c = e->idle[--e->nidle];
    pthread_mutex_unlock(&e->mu);
    return c ? c : api_http_client_new();
}

static void give_client(struct api_etcd *e, struct api_http_client *c)
{
    pthread_mutex_lock(&e->mu);
    if (e->nidle == e->capidle) {
        size_t ncap = e->capidle ? e->capidle * 2 : 8;
        void *ni = realloc(e->idle, ncap * sizeof(*e->idle));
        if (ni == NULL) {
            pthread_mutex_unlock(&e->mu);
            api_http_client_free(c);
            return;
        }
        e->idle = ni;
        e->capidle = ncap;
    }
    e->idle[e->nidle++] = c;
    pthread_mutex_unlock(&e->mu);
}

/* Maps an etcd error body ({"error","message","code"}) to our codes. */
static int etcd_error(json_t *resp, long status, const char *what, struct api_err *err)
{
    const char *msg = json_string_value(json_object_get(resp, "message"));
    int64_t code = jint(json_object_get(resp, "code"));
    if (msg == NULL)
        msg = json_string_value(json_object_get(resp, "error"));
    if (msg == NULL)
        msg = "no message";
    if (code == 5)
        return api_err_set(err, API_ENOTFOUND, "etcd %s: %s", what, msg);
    if (code == 11 && strstr(msg, "compacted") != NULL)
        return api_err_set(err, API_ECOMPACTED, "etcd %s: %s", what, msg);
    if (code == 3 || code == 11)
        return api_err_set(err, API_EINVAL, "etcd %s: %s", what, msg);
    return api_err_set(err, API_EETCD, "etcd %s: HTTP %ld: %s", what, status, msg);
}

/* POSTs REQ (stolen) to PATH and parses the JSON reply into *RESP. */
static int call(struct api_etcd *e, const char *path, json_t *req, json_t **resp, const char *what,
                struct api_err *err)
{
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    struct api_http_client *c;
    struct api_http_resp hr;
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    size_t start = atomic_load(&e->good);
    int rc = API_EETCD;

    json_decref(req);
    if (body == NULL)
        return api_err_set(err, API_ENOMEM, "etcd %s: out of memory", what);
    if ((c = take_client(e)) == NULL) {
        free(body);
        return api_err_set(err, API_ENOMEM, "etcd %s: out of memory", what);
    }
    api_err_set(err, API_EETCD, "etcd %s: no endpoint answered", what);
    for (size_t k = 0; k < e->nendpoints; k++) {
        size_t i = (start + k) % e->nendpoints;
        char url[512];
        struct api_err terr;
        snprintf(url, sizeof(url), "%s%s", e->endpoints[i], path);
        struct api_http_req rq = {.method = "POST", .url = url, .headers = headers, .body = body,
                                  .body_len = strlen(body), .timeout_ms = e->timeout_ms, .connect_timeout_ms = 1000};
        if (api_http_do(c, &rq, &hr, &terr) != API_OK) {
            api_err_set(err, API_EETCD, "etcd %s: %s", what, terr.msg);
            continue;
        }
        atomic_store(&e->good, i);
        json_error_t jerr;
        json_t *doc = json_loadb(hr.body, hr.body_len, 0, &jerr);
        if (doc == NULL || !json_is_object(doc)) {
            rc = api_err_set(err, API_EETCD, "etcd %s: HTTP %ld with a body that is not JSON", what, hr.status);
            json_decref(doc);
        } else if (hr.status != 200 || json_object_get(doc, "error") != NULL) {
            rc = etcd_error(doc, hr.status, what, err);
            json_decref(doc);
        } else {
            *resp = doc;
            rc = API_OK;
        }
        api_http_resp_fini(&hr);
        break;
    }
    give_client(e, c);
    free(body);
    return rc;
}

int api_etcd_get(struct api_etcd *e, const char *key, struct api_etcd_kv *out, int *found, int64_t *revision,
                 struct api_err *err)
{
    json_t *resp;
    struct api_etcd_kvs kvs;
    char what[300];
    int rc;

    snprintf(what, sizeof(what), "get %.256s", key);
    if ((rc = call(e, "/v3/kv/range", json_pack("{s:o}", "key", b64_json(key, strlen(key))), &resp, what, err)) !=
        API_OK)
        return rc;
    if (parse_range(resp, &kvs) != 0) {
        json_decref(resp);
        return api_err_set(err, API_EETCD, "etcd %s: bad response", what);
    }
    json_decref(resp);
    if (revision != NULL)
        *revision = kvs.revision;
    *found = kvs.n > 0;
    if (kvs.n > 0) {
        *out = kvs.kvs[0];
        memset(&kvs.kvs[0], 0, sizeof(kvs.kvs[0]));
    }
    api_etcd_kvs_fini(&kvs);
    return API_OK;
}

int api_etcd_range_prefix(struct api_etcd *e, const char *prefix, const char *start_after, int64_t limit,
                          struct api_etcd_kvs *out, struct api_err *err)
{
    size_t elen;
    char *end = prefix_end(prefix, &elen), what[300];
    json_t *req, *resp;
    int rc;

    if (end == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    if (start_after != NULL) {
        /* the smallest key after START_AFTER is START_AFTER + "\0" */
        size_t n = strlen(start_after);
        char *from = malloc(n + 1);
        if (from == NULL) {
            free(end);
            return api_err_set(err, API_ENOMEM, "out of memory");
        }
        memcpy(from, start_after, n);
        from[n] = '\0';
        req = json_pack("{s:o,s:o}", "key", b64_json(from, n + 1), "range_end", b64_json(end, elen));
        free(from);
    } else {
        req = json_pack("{s:o,s:o}", "key", b64_json(prefix, strlen(prefix)), "range_end", b64_json(end, elen));
    }
    free(end);
    if (req != NULL && limit > 0)
        json_object_set_new(req, "limit", int_json(limit));
    snprintf(what, sizeof(what), "range %.256s", prefix);
    if ((rc = call(e, "/v3/kv/range", req, &resp, what, err)) != API_OK)
        return rc;
    rc = parse_range(resp, out) == 0 ? API_OK : api_err_set(err, API_EETCD, "etcd %s: bad response", what);
    json_decref(resp);
    return rc;
}

int api_etcd_put(struct api_etcd *e, const char *key, const void *value, size_t value_len, int64_t lease,
                 int64_t *revision, struct api_err *err)
{
    json_t *req = json_pack("{s:o,s:o}", "key", b64_json(key, strlen(key)), "value", b64_json(value, value_len)),
           *resp;
    char what[300];
    int rc;

    if (req != NULL && lease != 0)
        json_object_set_new(req, "lease", int_json(lease));
    snprintf(what, sizeof(what), "put %.256s", key);
    if ((rc = call(e, "/v3/kv/put", req, &resp, what, err)) != API_OK)
        return rc;
    if (revision != NULL)
        *revision = jint(json_object_get(json_object_get(resp, "header"), "revision"));
    json_decref(resp);
    return API_OK;
}

int api_etcd_delete(struct api_etcd *e, const char *key, int prefix, int64_t *deleted, struct api_err *err)
{
    json_t *req = json_pack("{s:o}", "key", b64_json(key, strlen(key))), *resp;
    char what[300];
    int rc;

    if (req != NULL && prefix) {
        size_t elen;
        char *end = prefix_end(key, &elen);
        if (end == NULL) {
            json_decref(req);
            return api_err_set(err, API_ENOMEM, "out of memory");
        }
        json_object_set_new(req, "range_end", b64_json(end, elen));
        free(end);
    }
    snprintf(what, sizeof(what), "delete %.256s", key);
    if ((rc = call(e, "/v3/kv/deleterange", req, &resp, what, err)) != API_OK)
        return rc;
    if (deleted != NULL)
        *deleted = jint(json_object_get(resp, "deleted"));
    json_decref(resp);
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* txn                                                                 */

static const char *const target_names[] = {"VERSION", "CREATE", "MOD", "VALUE", "LEASE"};
static const char *const target_fields[] = {"version", "create_revision", "mod_revision", "value", "lease"};
static const char *const result_names[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};

static json_t *op_json(const struct api_etcd_op *op)
{
    json_t *inner = json_pack("{s:o}", "key", b64_json(op->key, strlen(op->key)));
    if (inner == NULL)
        return NULL;
    if (op->kind == API_ETCD_OP_PUT) {
        json_object_set_new(inner, "value", b64_json(op->value, op->value_len));
        if (op->lease != 0)
            json_object_set_new(inner, "lease", int_json(op->lease));
        return json_pack("{s:o}", "request_put", inner);
    }
    if (op->prefix) {
        size_t elen;
        char *end = prefix_end(op->key, &elen);
        if (end != NULL)
            json_object_set_new(inner, "range_end", b64_json(end, elen));
        free(end);
    }
    return json_pack("{s:o}", op->kind == API_ETCD_OP_GET ? "request_range" : "request_delete_range", inner);
}

int api_etcd_txn(struct api_etcd *e, const struct api_etcd_cmp *cmps, size_t ncmps, const struct api_etcd_op *success,
                 size_t nsuccess, const struct api_etcd_op *failure, size_t nfailure, struct api_etcd_txn_result *res,
                 struct api_err *err)
{
    json_t *jc = json_array(), *js = json_array(), *jf = json_array(), *resp;
    int rc;

    memset(res, 0, sizeof(*res));
    for (size_t i = 0; i < ncmps; i++) {
        const struct api_etcd_cmp *c = &cmps[i];
        json_t *o = json_pack("{s:o,s:s,s:s}", "key", b64_json(c->key, strlen(c->key)), "target",
                              target_names[c->target], "result", result_names[c->result]);
        if (c->target == API_ETCD_VALUE)
            json_object_set_new(o, target_fields[c->target], b64_json(c->value, c->value_len));
        else
            json_object_set_new(o, target_fields[c->target], int_json(c->number));
        json_array_append_new(jc, o);
    }
    for (size_t i = 0; i < nsuccess; i++)
        json_array_append_new(js, op_json(&success[i]));
    for (size_t i = 0; i < nfailure; i++)
        json_array_append_new(jf, op_json(&failure[i]));
    if ((rc = call(e, "/v3/kv/txn", json_pack("{s:o,s:o,s:o}", "compare", jc, "success", js, "failure", jf), &resp,
                   ncmps ? cmps[0].key : "txn", err)) != API_OK)
        return api_err_wrap(err, "txn");
    res->succeeded = json_is_true(json_object_get(resp, "succeeded"));
    res->revision = jint(json_object_get(json_object_get(resp, "header"), "revision"));
    json_t *responses = json_object_get(resp, "responses");
    size_t n = json_array_size(responses), ngets = 0;
    for (size_t i = 0; i < n; i++)
        if (json_object_get(json_array_get(responses, i), "response_range") != NULL)
            ngets++;
    if (ngets > 0 && (res->gets = calloc(ngets, sizeof(*res->gets))) == NULL) {
        json_decref(resp);
        return api_err_set(err, API_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *rr = json_object_get(json_array_get(responses, i), "response_range");
        if (rr != NULL && parse_range(rr, &res->gets[res->ngets]) == 0)
            res->ngets++;
    }
    json_decref(resp);
    return API_OK;
}

void api_etcd_txn_result_fini(struct api_etcd_txn_result *res)
{
    if (res == NULL)
        return;
    for (size_t i = 0; i < res->ngets; i++)
        api_etcd_kvs_fini(&res->gets[i]);
    free(res->gets);
    memset(res, 0, sizeof(*res));
}

/* ------------------------------------------------------------------ */
/* leases                                                              */

int api_etcd_lease_grant(struct api_etcd *e, int64_t ttl_s, int64_t *id, struct api_err *err)
{
    json_t *resp;
    int rc = call(e, "/v3/lease/grant", json_pack("{s:o}", "TTL", int_json(ttl_s)), &resp, "lease grant", err);
    if (rc != API_OK)
        return rc;
    *id = jint(json_object_get(resp, "ID"));
    json_decref(resp);
    if (*id == 0)
        return api_err_set(err, API_EETCD, "etcd lease grant: no lease ID in the reply");
    return API_OK;
}

int api_etcd_lease_keepalive(struct api_etcd *e, int64_t id, int64_t *ttl_left, struct api_err *err)
{
    json_t *resp;
    int rc = call(e, "/v3/lease/keepalive", json_pack("{s:o}", "ID", int_json(id)), &resp, "lease keepalive", err);
    if (rc != API_OK)
        return rc;
    /* {"result":{"ID","TTL"}}; TTL absent: the lease is gone. */
    *ttl_left = jint(json_object_get(json_object_get(resp, "result"), "TTL"));
    json_decref(resp);
    return API_OK;
}

int api_etcd_lease_revoke(struct api_etcd *e, int64_t id, struct api_err *err)
{
    json_t *resp;
    int rc = call(e, "/v3/lease/revoke", json_pack("{s:o}", "ID", int_json(id)), &resp, "lease revoke", err);
    if (rc != API_OK)
        return rc;
    json_decref(resp);
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* watch                                                               */

static void deliver(struct api_etcd_watch *w, json_t *result)
{
    json_t *events = json_object_get(result, "events");
    size_t n = json_array_size(events);
    struct api_etcd_event *evs;
    size_t got = 0;

    if (n == 0)
        return;
    if ((evs = calloc(n, sizeof(*evs))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        json_t *ev = json_array_get(events, i);
        const char *type = json_string_value(json_object_get(ev, "type"));
        evs[got].type = (type != NULL && strcmp(type, "DELETE") == 0) ? API_ETCD_DELETE : API_ETCD_PUT;
        if (parse_kv(json_object_get(ev, "kv"), &evs[got].kv) == 0)
            got++;
    }
    if (got > 0) {
        w->on_events(w->ud, evs, got, jint(json_object_get(json_object_get(result, "header"), "revision")));
        if (evs[got - 1].kv.mod_revision >= w->next_rev)
            w->next_rev = evs[got - 1].kv.mod_revision + 1;
    }
    for (size_t i = 0; i < got; i++)
        api_etcd_kv_fini(&evs[i].kv);
    free(evs);
}

/* Handles one newline-delimited message; returns non-zero to end the stream. */
static int handle_line(struct api_etcd_watch *w, const char *line, size_t len)
{
    json_t *doc = json_loadb(line, len, 0, NULL), *result;
    int stop = 0;

    if (doc == NULL)
        return 0;
    if ((result = json_object_get(doc, "result")) == NULL) {
        log_warn("etcd watch %s: %.200s", w->prefix, line);
        w->stream_error = 1;
        json_decref(doc);
        return 1;
    }
    w->got_message = 1;
    if (json_is_true(json_object_get(result, "canceled"))) {
        int64_t compact = jint(json_object_get(result, "compact_revision"));
        if (compact > 0) {
            log_warn("etcd watch %s: revision %lld compacted (now %lld); resyncing", w->prefix,
                     (long long)w->next_rev, (long long)compact);
            w->need_resync = 1;
        } else {
            log_warn("etcd watch %s canceled: %s", w->prefix,
                     json_string_value(json_object_get(result, "cancel_reason")) ?: "no reason");
            w->stream_error = 1;
        }
        stop = 1;
    } else {
        deliver(w, result);
    }
    json_decref(doc);
    return stop;
}

static int on_watch_chunk(void *ud, const char *data, size_t len)
{
    struct api_etcd_watch *w = ud;
    if (w->len + len + 1 > w->cap) {
        size_t ncap = w->cap ? w->cap : 65536;
        while (ncap < w->len + len + 1)
            ncap *= 2;
        char *nb = realloc(w->buf, ncap);
        if (nb == NULL)
            return 1;
        w->buf = nb;
        w->cap = ncap;
    }
    memcpy(w->buf + w->len, data, len);
    w->len += len;
    size_t start = 0;
    for (size_t i = 0; i < w->len; i++) {
        if (w->buf[i] != '\n')
            continue;
        if (i > start && handle_line(w, w->buf + start, i - start)) {
            w->len = 0;
            return 1;
        }
        start = i + 1;
    }
    memmove(w->buf, w->buf + start, w->len - start);
    w->len -= start;
    return atomic_load(&w->cancel) ? 1 : 0;
}

static void sleep_ms_cancellable(struct api_etcd_watch *w, long ms)
{
    while (ms > 0 && !atomic_load(&w->cancel)) {
        long step = ms < 50 ? ms : 50;
        struct timespec ts = {0, step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

static void *watch_main(void *arg)
{
    struct api_etcd_watch *w = arg;
    struct api_http_client *c = api_http_client_new();
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    long backoff = 100;

    while (c != NULL && !atomic_load(&w->cancel)) {
        size_t elen;
        char *end = prefix_end(w->prefix, &elen);
        json_t *req = json_pack("{s:{s:o,s:o,s:o,s:b}}", "create_request", "key",
                                b64_json(w->prefix, strlen(w->prefix)), "range_end", b64_json(end, elen),
                                "start_revision", int_json(w->next_rev), "progress_notify", 1);
        char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
        free(end);
        json_decref(req);
        if (body == NULL)
            break;
        size_t i = atomic_load(&w->e->good) % w->e->nendpoints;
        char url[512];
        snprintf(url, sizeof(url), "%s/v3/watch", w->e->endpoints[i]);
        struct api_http_req rq = {.method = "POST", .url = url, .headers = headers, .body = body,
                                  .body_len = strlen(body), .connect_timeout_ms = 1000, .cancel = &w->cancel};
        struct api_http_resp resp;
        struct api_err err;
        w->len = 0;
        w->need_resync = w->stream_error = w->got_message = 0;
        int rc = api_http_stream(c, &rq, on_watch_chunk, w, &resp, &err);
        free(body);
        if (rc == API_OK)
            api_http_resp_fini(&resp);
        if (atomic_load(&w->cancel))
            break;
        if (rc != API_OK) {
            /* try the next endpoint next time */
            atomic_store(&w->e->good, (i + 1) % w->e->nendpoints);
            log_warn("etcd watch %s: %s; reconnecting", w->prefix, err.msg);
        }
        if (w->need_resync) {
            struct api_etcd_kvs kvs;
            if (api_etcd_range_prefix(w->e, w->prefix, NULL, 0, &kvs, &err) == API_OK) {
                w->on_resync(w->ud, &kvs);
                w->next_rev = kvs.revision + 1;
                api_etcd_kvs_fini(&kvs);
                backoff = 100;
                continue;
            }
            log_warn("etcd watch %s: resync failed: %s", w->prefix, err.msg);
        }
        if (w->got_message && !w->stream_error)
            backoff = 100;
        sleep_ms_cancellable(w, backoff);
        backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
    }
    api_http_client_free(c);
    return NULL;
}

int api_etcd_watch_start(struct api_etcd *e, const char *prefix, int64_t start_revision, api_etcd_watch_fn on_events,
                         api_etcd_resync_fn on_resync, void *ud, struct api_etcd_watch **out, struct api_err *err)
{
    struct api_etcd_watch *w = calloc(1, sizeof(*w));
    if (w == NULL || (w->prefix = strdup(prefix)) == NULL) {
        free(w);
        return api_err_set(err, API_ENOMEM, "watch: out of memory");
    }
    w->e = e;
    w->next_rev = start_revision;
    w->on_events = on_events;
    w->on_resync = on_resync;
    w->ud = ud;
    atomic_init(&w->cancel, 0);
    if (pthread_create(&w->tid, NULL, watch_main, w) != 0) {
        free(w->prefix);
        free(w);
        return api_err_set(err, API_EINTERNAL, "watch %s: cannot start a thread", prefix);
    }
    *out = w;
    return API_OK;
}

void api_etcd_watch_stop(struct api_etcd_watch *w)
{
    if (w == NULL)
        return;
    atomic_store(&w->cancel, 1);
    pthread_join(w->tid, NULL);
    free(w->buf);
    free(w->prefix);
    free(w);
}
