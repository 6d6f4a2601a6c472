/*
 * orchestrator/router_health.c: active health of the agents a router
 * sends to.
 *
 * Every --health-ms (default 1 s) the router sends `GET /healthz` to each
 * registered agent, on its loop, through the same keep-alive pool as the
 * data plane (at most one probe per agent in flight). An agent answers 200,
 * or 503 with {"status":"degraded","session":...,"lagging":[{"tenant",
 * "lag_ms"}...]} (nodeagent/agent.c): the tenants it replicates that have
 * been behind their primary longer than its --max-lag. The router then
 * skips that replica for those tenants' reads (router_pick.c), so a reader
 * is not served data seconds old while a caught-up instance exists; writes
 * never go to replicas anyway. A probe that cannot connect marks the agent
 * down exactly like a refused data-plane connection; one that answers marks
 * it up. What a probe learned is trusted for three periods, then forgotten
 * (an agent that stops answering probes is not held lagging forever).
 *
 * Loop thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/log.h"
#include "orchestrator/router_int.h"

#define HEALTH_MAX_LAGGING 4096

struct probe {
    struct router_health *h;
    char node[API_NAME_MAX];
    char url[API_URL_MAX];
    struct api_aclient_call *call; /* in flight, or NULL */
    int64_t answered_ms;           /* when the last answer came, 0 never */
    char **lagging;                /* sorted tenant ids */
    size_t nlagging;
    int seen; /* registered at the last round */
};

struct router_health {
    struct orch_router *r;
    long period_ms;
    struct api_timer *timer;
    struct probe **v;
    size_t n;
    uint64_t probes, failures;
};

static void lagging_clear(struct probe *p)
{
    for (size_t i = 0; i < p->nlagging; i++)
        free(p->lagging[i]);
    free(p->lagging);
    p->lagging = NULL;
    p->nlagging = 0;
}

static void probe_free(struct probe *p)
{
    if (p->call != NULL)
        api_aclient_cancel(p->call);
    lagging_clear(p);
    free(p);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Takes the "lagging" list of a 503 body. */
static void lagging_parse(struct probe *p, const char *body, size_t len)
{
    json_t *doc = json_loadb(body, len, 0, NULL), *it;
    const json_t *arr = json_object_get(doc, "lagging");
    size_t i, n = json_array_size(arr);

    if (n > HEALTH_MAX_LAGGING)
        n = HEALTH_MAX_LAGGING;
    if (n > 0 && (p->lagging = calloc(n, sizeof(*p->lagging))) != NULL) {
        json_array_foreach(arr, i, it)
        {
            const char *t = json_string_value(json_object_get(it, "tenant"));
            if (i >= n)
                break;
            if (t != NULL && (p->lagging[p->nlagging] = strdup(t)) != NULL)
                p->nlagging++;
        }
        qsort(p->lagging, p->nlagging, sizeof(*p->lagging), cmp_str);
    }
    json_decref(doc);
}

static void on_probe_answer(void *ud, int rc, struct api_aclient_resp *resp, const struct api_err *err, int not_sent)
{
    struct probe *p = ud;
    struct router_health *h = p->h;

    p->call = NULL;
    if (rc != API_OK) {
        h->failures++;
        if (not_sent && !router_is_down(h->r, p->url))
            router_mark_down(h->r, p->url);
        log_debug("health probe failed node=%s: %s", p->node, err->msg);
        return;
    }
    p->answered_ms = api_now_ms();
    if (router_is_down(h->r, p->url))
        router_mark_up(h->r, p->url);
    size_t before = p->nlagging;
    lagging_clear(p);
    if (resp->status == 503)
        lagging_parse(p, resp->body, resp->body_len);
    if (p->nlagging != before)
        log_info("health node=%s lagging_tenants=%zu", p->node, p->nlagging);
}

static struct probe *probe_find(struct router_health *h, const char *node)
{
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->v[i]->node, node) == 0)
            return h->v[i];
    return NULL;
}

/* One round: probe every registered agent, forget the ones that left. */
static void on_round(void *ud)
{
    struct router_health *h = ud;
    struct api_cluster_node *nodes = NULL;
    size_t nn = api_cluster_nodes(h->r->view, &nodes);

    for (size_t i = 0; i < h->n; i++)
        h->v[i]->seen = 0;
    for (size_t i = 0; i < nn; i++) {
        struct probe *p = probe_find(h, nodes[i].node);
        if (p == NULL) {
            struct probe **v = realloc(h->v, (h->n + 1) * sizeof(*v));
            if (v == NULL || (p = calloc(1, sizeof(*p))) == NULL) {
                if (v != NULL)
                    h->v = v;
                continue;
            }
            h->v = v;
            h->v[h->n++] = p;
            p->h = h;
            snprintf(p->node, sizeof(p->node), "%s", nodes[i].node);
        }
        p->seen = 1;
        if (strcmp(p->url, nodes[i].url) != 0) {
            /* the agent came back elsewhere: what we knew is about the old one */
            snprintf(p->url, sizeof(p->url), "%s", nodes[i].url);
            lagging_clear(p);
            p->answered_ms = 0;
        }
        if (p->call == NULL) {
            struct api_aclient_req rq = {.method = "GET", .url = p->url, .path = "/healthz"};
            h->probes++;
            p->call = api_aclient_send(h->r->client, &rq, on_probe_answer, p);
        }
    }
    for (size_t i = 0; i < h->n;) {
        if (!h->v[i]->seen) {
            probe_free(h->v[i]);
            h->v[i] = h->v[--h->n];
        } else {
            i++;
        }
    }
    free(nodes);
    api_timer_start(h->timer, (uint32_t)h->period_ms);
}

int router_health_new(struct orch_router *r, long period_ms, struct router_health **out, struct api_err *err)
{
    struct router_health *h = calloc(1, sizeof(*h));
    if (h == NULL || (h->timer = api_timer_new(r->server, on_round, h)) == NULL) {
        free(h);
        return api_err_set(err, API_ENOMEM, "out of memory");
    }
    h->r = r;
    h->period_ms = period_ms;
    api_timer_start(h->timer, (uint32_t)period_ms);
    *out = h;
    return API_OK;
}

void router_health_free(struct router_health *h)
{
    if (h == NULL)
        return;
    api_timer_free(h->timer);
    for (size_t i = 0; i < h->n; i++)
        probe_free(h->v[i]);
    free(h->v);
    free(h);
}

int router_health_lagging(const struct router_health *h, const char *url, const char *tenant)
{
    for (size_t i = 0; i < h->n; i++) {
        const struct probe *p = h->v[i];
        if (p->nlagging == 0 || strcmp(p->url, url) != 0)
            continue;
        if (api_now_ms() - p->answered_ms > 3 * h->period_ms)
            return 0; /* stale: the agent stopped answering probes */
        return bsearch(&tenant, p->lagging, p->nlagging, sizeof(*p->lagging), cmp_str) != NULL;
    }
    return 0;
}

void router_health_metrics(const struct router_health *h, char *buf, size_t cap, size_t *len)
{
    size_t lagging = 0;
    for (size_t i = 0; i < h->n; i++)
        lagging += h->v[i]->nlagging;
    int n = snprintf(buf + *len, *len < cap ? cap - *len : 0,
                     "# TYPE shoal_router_health_probes_total counter\nshoal_router_health_probes_total %llu\n"
                     "# TYPE shoal_router_health_probe_failures_total counter\n"
                     "shoal_router_health_probe_failures_total %llu\n"
                     "# TYPE shoal_router_health_lagging_replicas gauge\nshoal_router_health_lagging_replicas %zu\n",
                     (unsigned long long)h->probes, (unsigned long long)h->failures, lagging);
    if (n > 0 && *len + (size_t)n < cap)
        *len += (size_t)n;
}
