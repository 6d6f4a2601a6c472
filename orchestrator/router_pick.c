/*
 * orchestrator/router_pick.c: where a request may go (see router.c's file
 * comment for the order of the rules): the candidates of a tenant or an
 * app, their health, and the nearest of them by the latency matrix.
 *
 * Health has two sources. Passive: an instance that refused a connection
 * is marked down for --down-ms (an agent killed outright keeps its etcd
 * node key until its session lease expires). Active: router_health.c
 * probes every agent's /healthz once a second; a replica that reports a
 * tenant as lagging is not chosen for that tenant's reads.
 *
 * Loop thread only: the down marks need no lock.
 */
#include <stdio.h>
#include <string.h>

#include "api/log.h"
#include "orchestrator/router_int.h"
#include "placement/place.h"

int router_is_down(struct orch_router *r, const char *url)
{
    int64_t now;
    if (r->down_until_max == 0)
        return 0;
    if ((now = api_now_ms()) >= r->down_until_max) {
        r->down_until_max = 0;
        return 0;
    }
    for (size_t i = 0; i < ROUTER_DOWN_SLOTS; i++)
        if (r->down[i].until_ms > now && strcmp(r->down[i].url, url) == 0)
            return 1;
    return 0;
}

void router_mark_down(struct orch_router *r, const char *url)
{
    int64_t now = api_now_ms();
    size_t slot = 0;
    for (size_t i = 0; i < ROUTER_DOWN_SLOTS; i++) {
        if (strcmp(r->down[i].url, url) == 0) {
            slot = i;
            break;
        }
        if (r->down[i].until_ms < r->down[slot].until_ms)
            slot = i; /* the slot that expires first */
    }
    snprintf(r->down[slot].url, sizeof(r->down[slot].url), "%s", url);
    r->down[slot].until_ms = now + r->cfg.down_ms;
    if (r->down[slot].until_ms > r->down_until_max)
        r->down_until_max = r->down[slot].until_ms;
    log_warn("upstream down url=%s for_ms=%ld", url, r->cfg.down_ms);
}

void router_mark_up(struct orch_router *r, const char *url)
{
    for (size_t i = 0; i < ROUTER_DOWN_SLOTS; i++)
        if (strcmp(r->down[i].url, url) == 0)
            r->down[i].until_ms = 0;
}

static uint32_t rtt_to(struct orch_router *r, const char *region)
{
    int i = place_region_index(r->regions, region);
    return i < 0 ? ROUTER_UNKNOWN_RTT : place_rtt_ms(r->regions, (size_t)r->self_region, (size_t)i);
}

static void cand_from_node(const struct api_cluster_node *n, int primary, struct cand *c)
{
    router_copy(c->id, sizeof(c->id), n->node);
    router_copy(c->region, sizeof(c->region), n->region);
    router_copy(c->url, sizeof(c->url), n->url);
    c->primary = primary;
}

int router_tenant_cands(struct orch_router *r, const char *id, struct cands *out)
{
    struct api_cluster_tenant t;
    struct api_cluster_node n;
    out->n = 0;
    if (!api_cluster_tenant(r->view, id, &t))
        return 0;
    if (t.leased && api_cluster_node(r->view, t.holder, &n))
        cand_from_node(&n, 1, &out->v[out->n++]);
    for (size_t i = 0; i < t.nnodes && out->n < API_CLUSTER_MAX_INSTANCES + 1; i++) {
        if (t.leased && strcmp(t.nodes[i], t.holder) == 0)
            continue;
        if (!api_cluster_node(r->view, t.nodes[i], &n))
            continue;
        cand_from_node(&n, 0, &out->v[out->n++]);
    }
    return 1;
}

void router_app_cands(const struct orch_app *a, struct cands *out)
{
    out->n = 0;
    for (size_t i = 0; i < a->n && i < API_CLUSTER_MAX_INSTANCES + 1; i++) {
        struct cand *c = &out->v[out->n++];
        router_copy(c->id, sizeof(c->id), a->inst[i].id);
        router_copy(c->region, sizeof(c->region), a->inst[i].region);
        router_copy(c->url, sizeof(c->url), a->inst[i].url);
        c->primary = 0;
    }
}

int router_pick_nearest(struct orch_router *r, const struct cands *cs, const char *region, const char *exclude,
                        int any_health, const char *reads_of, struct cand *out)
{
    const struct cand *best = NULL;
    uint32_t best_rtt = 0;
    for (size_t i = 0; i < cs->n; i++) {
        const struct cand *c = &cs->v[i];
        if ((region != NULL && strcmp(c->region, region) != 0) || (exclude != NULL && strcmp(c->id, exclude) == 0))
            continue;
        if (!any_health && router_is_down(r, c->url))
            continue;
        if (!any_health && reads_of != NULL && !c->primary && r->health != NULL &&
            router_health_lagging(r->health, c->url, reads_of)) {
            r->n.lagging_skipped++;
            continue;
        }
        uint32_t rtt = rtt_to(r, c->region);
        if (best == NULL || rtt < best_rtt || (rtt == best_rtt && c->primary && !best->primary)) {
            best = c;
            best_rtt = rtt;
        }
    }
    if (best == NULL)
        return 0;
    *out = *best;
    return 1;
}

const struct cand *router_find_cand(const struct cands *cs, const char *id)
{
    for (size_t i = 0; i < cs->n; i++)
        if (strcmp(cs->v[i].id, id) == 0)
            return &cs->v[i];
    return NULL;
}

int router_node_cand(struct orch_router *r, const char *name, struct cand *out)
{
    struct api_cluster_node n;
    if (!api_cluster_node(r->view, name, &n))
        return 0;
    cand_from_node(&n, 0, out);
    return 1;
}
