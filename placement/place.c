/*
 * placement/place.c: pure placement (see place.h). No I/O, no clock, no
 * globals; deterministic for the same input.
 *
 * In order: the regions document, new tenants by scanning the nodes, the
 * replacement of a lost replica (same rule as new replicas), the placement
 * index (same decisions as the scan, without scanning), and the decision to
 * move a primary. Any change to the scan's order or tie-breaks must be made
 * in the index too: the unit tests compare the two decision for decision.
 */
#include "placement/place.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>


struct place_regions {
    size_t n;
    char code[PLACE_MAX_REGIONS][PLACE_REGION_MAX];
    char *name[PLACE_MAX_REGIONS];
    uint32_t rtt[PLACE_MAX_REGIONS][PLACE_MAX_REGIONS];
};

static int code_valid(const char *s)
{
    size_t len = strlen(s);
    if (len != 3 && len != 4)
        return 0;
    for (size_t i = 0; i < 3; i++)
        if (s[i] < 'a' || s[i] > 'z')
            return 0;
    return len == 3 || (s[3] >= '0' && s[3] <= '9');
}

void place_regions_free(struct place_regions *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++)
        free(r->name[i]);
    free(r);
}

int place_regions_parse(const char *json, size_t len, struct place_regions **out, char *msg, size_t msg_len)
{
    json_error_t jerr;
    json_t *doc = json_loadb(json, len, 0, &jerr), *regions, *rtt;
    struct place_regions *r = NULL;
    int have[PLACE_MAX_REGIONS][PLACE_MAX_REGIONS];
    int rc = PLACE_EINVAL;

    if (doc == NULL) {
        snprintf(msg, msg_len, "not JSON: %s (line %d)", jerr.text, jerr.line);
        return PLACE_EINVAL;
    }
    regions = json_object_get(doc, "regions");
    rtt = json_object_get(doc, "rtt_ms");
    if (!json_is_array(regions) || json_array_size(regions) == 0 || !json_is_object(rtt)) {
        snprintf(msg, msg_len, "needs a non-empty \"regions\" array and an \"rtt_ms\" object");
        goto out;
    }
    if (json_array_size(regions) > PLACE_MAX_REGIONS) {
        snprintf(msg, msg_len, "at most %d regions", PLACE_MAX_REGIONS);
        goto out;
    }
    if ((r = calloc(1, sizeof(*r))) == NULL) {
        rc = PLACE_ENOMEM;
        goto out;
    }
    memset(have, 0, sizeof(have));
    for (size_t i = 0; i < json_array_size(regions); i++) {
        json_t *reg = json_array_get(regions, i);
        const char *code = json_string_value(json_object_get(reg, "code"));
        const char *name = json_string_value(json_object_get(reg, "name"));
        if (code == NULL || !code_valid(code)) {
            snprintf(msg, msg_len, "region %zu has no valid \"code\" (three letters a-z, optional digit)", i);
            goto out;
        }
        for (size_t k = 0; k < r->n; k++)
            if (strcmp(r->code[k], code) == 0) {
                snprintf(msg, msg_len, "region '%s' is listed twice", code);
                goto out;
            }
        strcpy(r->code[r->n], code);
        if ((r->name[r->n] = strdup(name ? name : code)) == NULL) {
            rc = PLACE_ENOMEM;
            goto out;
        }
        r->n++;
    }
    const char *from;
    json_t *row;
    json_object_foreach(rtt, from, row) {
        int a = place_region_index(r, from);
        const char *to;
        json_t *v;
        if (a < 0) {
            snprintf(msg, msg_len, "rtt_ms names unknown region '%.8s'", from);
            goto out;
        }
        if (!json_is_object(row)) {
            snprintf(msg, msg_len, "rtt_ms.%s must be an object", from);
            goto out;
        }
        json_object_foreach(row, to, v) {
            int b = place_region_index(r, to);
            if (b < 0) {
                snprintf(msg, msg_len, "rtt_ms.%s names unknown region '%.8s'", from, to);
                goto out;
            }
            if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 10000) {
                snprintf(msg, msg_len, "rtt_ms.%s.%s must be a number of milliseconds from 0 to 10000", from, to);
                goto out;
            }
            uint32_t ms = (uint32_t)(json_number_value(v) + 0.5);
            if ((have[a][b] && r->rtt[a][b] != ms) || (have[b][a] && r->rtt[b][a] != ms)) {
                snprintf(msg, msg_len, "rtt_ms between %s and %s is given twice with different values", from, to);
                goto out;
            }
            r->rtt[a][b] = r->rtt[b][a] = ms;
            have[a][b] = have[b][a] = 1;
        }
    }
    for (size_t a = 0; a < r->n; a++)
        for (size_t b = 0; b < r->n; b++)
            if (a != b && !have[a][b]) {
                snprintf(msg, msg_len, "rtt_ms has no value between %s and %s", r->code[a], r->code[b]);
                goto out;
            }
    for (size_t a = 0; a < r->n; a++)
        r->rtt[a][a] = 0;
    *out = r;
    r = NULL;
    rc = PLACE_OK;
out:
    place_regions_free(r);
    json_decref(doc);
    return rc;
}

size_t place_regions_count(const struct place_regions *r)
{
    return r->n;
}

int place_region_index(const struct place_regions *r, const char *code)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->code[i], code) == 0)
            return (int)i;
    return -1;
}

const char *place_region_code(const struct place_regions *r, size_t i)
{
    return i < r->n ? r->code[i] : NULL;
}

const char *place_region_name(const struct place_regions *r, size_t i)
{
    return i < r->n ? r->name[i] : NULL;
}

uint32_t place_rtt_ms(const struct place_regions *r, size_t a, size_t b)
{
    return (a < r->n && b < r->n) ? r->rtt[a][b] : UINT32_MAX;
}

/* A node in a region the topology does not know is never chosen: its RTTs
 * are unknown. */
static int has_room(const struct place_regions *r, const struct place_node *n)
{
    return n->healthy && n->region >= 0 && (size_t)n->region < r->n && (n->capacity == 0 || n->tenants < n->capacity);
}

/* Fewer tenants first, then fewer primaries, then the lower index. */
static int less_loaded(const struct place_node *nodes, size_t a, size_t b)
{
    if (nodes[a].tenants != nodes[b].tenants)
        return nodes[a].tenants < nodes[b].tenants;
    if (nodes[a].primaries != nodes[b].primaries)
        return nodes[a].primaries < nodes[b].primaries;
    return a < b;
}

/* The least loaded node with room in REGION (or any region if -1) not in
 * USED; returns -1 if none. */
static long best_in_region(const struct place_regions *r, const struct place_node *nodes, size_t nnodes, int region,
                           const unsigned char *used)
{
    long best = -1;
    for (size_t i = 0; i < nnodes; i++) {
        if (used[i] || !has_room(r, &nodes[i]) || (region >= 0 && nodes[i].region != region))
            continue;
        if (best < 0 || less_loaded(nodes, i, (size_t)best))
            best = (long)i;
    }
    return best;
}

/* The next replica for a tenant whose primary is in region PR: a node with
 * room not in USED, in a region not in REGION_USED if there is one, else in
 * any region; nearest to PR first, then least loaded. -1 if none. The caller
 * marks the pick in USED and REGION_USED. */
static long pick_replica(const struct place_regions *regions, const struct place_node *nodes, size_t nnodes, int pr,
                         const unsigned char *used, const unsigned char *region_used)
{
    for (int pass = 0; pass < 2; pass++) {
        long pick = -1;
        uint32_t pick_rtt = UINT32_MAX;
        for (size_t i = 0; i < nnodes; i++) {
            if (used[i] || !has_room(regions, &nodes[i]) || (pass == 0 && region_used[nodes[i].region]))
                continue;
            uint32_t rtt = regions->rtt[pr][nodes[i].region];
            if (pick < 0 || rtt < pick_rtt || (rtt == pick_rtt && less_loaded(nodes, i, (size_t)pick))) {
                pick = (long)i;
                pick_rtt = rtt;
            }
        }
        if (pick >= 0)
            return pick;
    }
    return -1;
}

int place_new_tenant(const struct place_regions *regions, const struct place_node *nodes, size_t nnodes,
                     const struct place_request *req, struct place_decision *out)
{
    unsigned char *used;
    struct place_decision d;
    long primary = -1;

    if (regions == NULL || req == NULL || out == NULL || (nnodes > 0 && nodes == NULL) ||
        req->replicas > sizeof(d.replicas) / sizeof(d.replicas[0]))
        return PLACE_EINVAL;
    if ((req->region >= 0 && (size_t)req->region >= regions->n) ||
        (req->client_region >= 0 && (size_t)req->client_region >= regions->n))
        return PLACE_EUNKNOWN_REGION;
    if ((used = calloc(nnodes ? nnodes : 1, 1)) == NULL)
        return PLACE_ENOMEM;
    memset(&d, 0, sizeof(d));

    if (req->region >= 0) {
        primary = best_in_region(regions, nodes, nnodes, req->region, used);
    } else if (req->client_region >= 0) {
        /* the nearest region to the caller that has room */
        uint32_t best_rtt = UINT32_MAX;
        for (size_t i = 0; i < nnodes; i++) {
            if (!has_room(regions, &nodes[i]))
                continue;
            uint32_t rtt = regions->rtt[req->client_region][nodes[i].region];
            if (primary < 0 || rtt < best_rtt || (rtt == best_rtt && less_loaded(nodes, i, (size_t)primary))) {
                primary = (long)i;
                best_rtt = rtt;
            }
        }
    } else {
        primary = best_in_region(regions, nodes, nnodes, -1, used);
    }
    if (primary < 0) {
        free(used);
        return PLACE_ENOCAPACITY;
    }
    used[primary] = 1;
    d.primary = (size_t)primary;

    /* Replicas: other regions first, nearest to the primary first, one
     * instance per region in that pass; then any node left, nearest first. */
    unsigned char region_used[PLACE_MAX_REGIONS] = {0};
    region_used[nodes[primary].region] = 1;
    while (d.nreplicas < req->replicas) {
        long pick = pick_replica(regions, nodes, nnodes, nodes[primary].region, used, region_used);
        if (pick < 0)
            break;
        used[pick] = 1;
        region_used[nodes[pick].region] = 1;
        d.replicas[d.nreplicas++] = (size_t)pick;
    }
    free(used);
    if (d.nreplicas < req->replicas)
        return PLACE_ENOCAPACITY;
    *out = d;
    return PLACE_OK;
}

int place_replacement(const struct place_regions *regions, const struct place_node *nodes, size_t nnodes,
                      const struct place_decision *current, size_t lost, size_t *out)
{
    unsigned char *used, region_used[PLACE_MAX_REGIONS] = {0};
    int lost_listed = 0;
    long pick;

    if (regions == NULL || nodes == NULL || current == NULL || out == NULL || current->primary >= nnodes ||
        current->nreplicas > sizeof(current->replicas) / sizeof(current->replicas[0]) || lost == current->primary)
        return PLACE_EINVAL;
    for (size_t k = 0; k < current->nreplicas; k++) {
        if (current->replicas[k] >= nnodes)
            return PLACE_EINVAL;
        lost_listed |= current->replicas[k] == lost;
    }
    if (!lost_listed)
        return PLACE_EINVAL;
    int pr = nodes[current->primary].region;
    if (pr < 0 || (size_t)pr >= regions->n)
        return PLACE_EUNKNOWN_REGION;
    if ((used = calloc(nnodes, 1)) == NULL)
        return PLACE_ENOMEM;
    /* Every instance, the lost one included, is out of the running; only the
     * survivors' regions count as used, so the replacement may well land in
     * the lost node's region, which keeps the tenant's spread as it was. */
    used[current->primary] = used[lost] = 1;
    region_used[pr] = 1;
    for (size_t k = 0; k < current->nreplicas; k++) {
        size_t i = current->replicas[k];
        used[i] = 1;
        if (i != lost && nodes[i].region >= 0 && (size_t)nodes[i].region < regions->n)
            region_used[nodes[i].region] = 1;
    }
    pick = pick_replica(regions, nodes, nnodes, pr, used, region_used);
    free(used);
    if (pick < 0)
        return PLACE_ENOCAPACITY;
    *out = (size_t)pick;
    return PLACE_OK;
}

/*
 * The placement index: place_new_tenant's answers without its scans.
 *
 * place_new_tenant looks at every node for the primary and again for each
 * replica, which is fine for one tenant at a time and far too slow to place a
 * million (DESIGN.md: a million tenants on a thousand nodes in about a
 * second). Every choice it makes is "the least loaded node with room in some
 * region", possibly weighed against the RTT to that region, so the index
 * keeps one binary min-heap per region holding exactly the nodes with room,
 * ordered as less_loaded orders them (tenants, then primaries, then index).
 * A choice then looks at one heap top per region, and recording a placed
 * tenant moves three nodes down their heaps: O(regions + log nodes) instead
 * of O(nodes). The order and the tie-breaks are the same, so the index gives
 * exactly place_new_tenant's decision for the same loads (a unit test
 * compares the two over random clusters).
 *
 * The index keeps its own copy of each node's facts; it never looks at the
 * caller's array again, so the caller tells it about every change.
 */

#define IX_NONE UINT32_MAX /* not in any heap: no room, or no known region */
#define IX_MAX_CHOSEN 17   /* a primary and sizeof(place_decision.replicas) replicas */

struct ix_node {
    int region;
    int healthy;
    uint32_t tenants, primaries, capacity;
    uint32_t pos; /* slot in heap[region], or IX_NONE */
};

struct ix_heap {
    uint32_t *slot; /* node indexes; slot[0] is the least loaded */
    uint32_t n, cap;
};

struct place_index {
    const struct place_regions *regions; /* borrowed */
    size_t nnodes;
    struct ix_node *node;
    struct ix_heap heap[PLACE_MAX_REGIONS];
};

static int ix_room(const struct place_index *ix, const struct ix_node *n)
{
    return n->healthy && n->region >= 0 && (size_t)n->region < ix->regions->n &&
           (n->capacity == 0 || n->tenants < n->capacity);
}

/* less_loaded on the index's copy */
static int ix_less(const struct place_index *ix, uint32_t a, uint32_t b)
{
    const struct ix_node *x = &ix->node[a], *y = &ix->node[b];
    if (x->tenants != y->tenants)
        return x->tenants < y->tenants;
    if (x->primaries != y->primaries)
        return x->primaries < y->primaries;
    return a < b;
}

static void ix_put(struct place_index *ix, struct ix_heap *h, uint32_t pos, uint32_t node)
{
    h->slot[pos] = node;
    ix->node[node].pos = pos;
}

static void ix_sift_up(struct place_index *ix, struct ix_heap *h, uint32_t pos)
{
    uint32_t node = h->slot[pos];
    while (pos > 0) {
        uint32_t parent = (pos - 1) / 2;
        if (!ix_less(ix, node, h->slot[parent]))
            break;
        ix_put(ix, h, pos, h->slot[parent]);
        pos = parent;
    }
    ix_put(ix, h, pos, node);
}

static void ix_sift_down(struct place_index *ix, struct ix_heap *h, uint32_t pos)
{
    uint32_t node = h->slot[pos];
    for (;;) {
        uint32_t c = 2 * pos + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && ix_less(ix, h->slot[c + 1], h->slot[c]))
            c++;
        if (!ix_less(ix, h->slot[c], node))
            break;
        ix_put(ix, h, pos, h->slot[c]);
        pos = c;
    }
    ix_put(ix, h, pos, node);
}

/* Takes node I out of its heap, if it is in one. */
static void ix_remove(struct place_index *ix, uint32_t i)
{
    struct ix_node *n = &ix->node[i];
    struct ix_heap *h;
    uint32_t pos = n->pos;
    if (pos == IX_NONE)
        return;
    h = &ix->heap[n->region];
    n->pos = IX_NONE;
    if (pos == --h->n)
        return;
    ix_put(ix, h, pos, h->slot[h->n]);
    /* The node moved into the hole may belong above or below it. If it
     * rose, its old parent now at POS is no more loaded than anything below,
     * and the sift down is a no-op. */
    ix_sift_up(ix, h, pos);
    ix_sift_down(ix, h, pos);
}

/* Puts node I (not in any heap) into its region's heap if it has room. */
static int ix_insert(struct place_index *ix, uint32_t i)
{
    struct ix_node *n = &ix->node[i];
    if (!ix_room(ix, n))
        return PLACE_OK;
    struct ix_heap *h = &ix->heap[n->region];
    if (h->n == h->cap) {
        uint32_t cap = h->cap ? 2 * h->cap : 16;
        uint32_t *slot = realloc(h->slot, (size_t)cap * sizeof(*slot));
        if (slot == NULL)
            return PLACE_ENOMEM;
        h->slot = slot;
        h->cap = cap;
    }
    h->slot[h->n] = i;
    n->pos = h->n++;
    ix_sift_up(ix, h, n->pos);
    return PLACE_OK;
}

void place_index_free(struct place_index *ix)
{
    if (ix == NULL)
        return;
    for (size_t r = 0; r < PLACE_MAX_REGIONS; r++)
        free(ix->heap[r].slot);
    free(ix->node);
    free(ix);
}

int place_index_new(const struct place_regions *regions, const struct place_node *nodes, size_t nnodes,
                    struct place_index **out)
{
    struct place_index *ix;

    if (regions == NULL || out == NULL || (nnodes > 0 && nodes == NULL) || nnodes >= IX_NONE)
        return PLACE_EINVAL;
    if ((ix = calloc(1, sizeof(*ix))) == NULL || (ix->node = calloc(nnodes ? nnodes : 1, sizeof(*ix->node))) == NULL) {
        free(ix);
        return PLACE_ENOMEM;
    }
    ix->regions = regions;
    ix->nnodes = nnodes;
    for (size_t i = 0; i < nnodes; i++) {
        ix->node[i] = (struct ix_node){.region = nodes[i].region, .healthy = nodes[i].healthy,
                                       .tenants = nodes[i].tenants, .primaries = nodes[i].primaries,
                                       .capacity = nodes[i].capacity, .pos = IX_NONE};
        if (ix_insert(ix, (uint32_t)i) != PLACE_OK) {
            place_index_free(ix);
            return PLACE_ENOMEM;
        }
    }
    *out = ix;
    return PLACE_OK;
}

int place_index_update(struct place_index *ix, size_t i, const struct place_node *node)
{
    if (ix == NULL || node == NULL || i >= ix->nnodes)
        return PLACE_EINVAL;
    struct ix_node *n = &ix->node[i];
    struct ix_heap *h = NULL;
    /* Make sure the insert below cannot fail, so a failed update changes
     * nothing: grow the target heap first. */
    if (node->region >= 0 && (size_t)node->region < ix->regions->n)
        h = &ix->heap[node->region];
    if (h != NULL && h->n == h->cap) {
        uint32_t cap = h->cap ? 2 * h->cap : 16;
        uint32_t *slot = realloc(h->slot, (size_t)cap * sizeof(*slot));
        if (slot == NULL)
            return PLACE_ENOMEM;
        h->slot = slot;
        h->cap = cap;
    }
    ix_remove(ix, (uint32_t)i);
    n->region = node->region;
    n->healthy = node->healthy;
    n->tenants = node->tenants;
    n->primaries = node->primaries;
    n->capacity = node->capacity;
    return ix_insert(ix, (uint32_t)i);
}

/* One more instance (and primary, if PRIMARY) on node I. Its key only
 * grows, so it sinks in its heap, or leaves it when it is now full. */
static void ix_add(struct place_index *ix, size_t i, int primary)
{
    struct ix_node *n = &ix->node[i];
    if (n->tenants < UINT32_MAX)
        n->tenants++;
    if (primary && n->primaries < UINT32_MAX)
        n->primaries++;
    if (n->pos == IX_NONE)
        return;
    if (!ix_room(ix, n))
        ix_remove(ix, (uint32_t)i);
    else
        ix_sift_down(ix, &ix->heap[n->region], n->pos);
}

int place_index_apply(struct place_index *ix, const struct place_decision *d)
{
    if (ix == NULL || d == NULL || d->primary >= ix->nnodes ||
        d->nreplicas > sizeof(d->replicas) / sizeof(d->replicas[0]))
        return PLACE_EINVAL;
    for (size_t k = 0; k < d->nreplicas; k++)
        if (d->replicas[k] >= ix->nnodes)
            return PLACE_EINVAL;
    ix_add(ix, d->primary, 1);
    for (size_t k = 0; k < d->nreplicas; k++)
        ix_add(ix, d->replicas[k], 0);
    return PLACE_OK;
}

static int ix_chosen(const uint32_t *chosen, size_t nchosen, uint32_t node)
{
    for (size_t k = 0; k < nchosen; k++)
        if (chosen[k] == node)
            return 1;
    return 0;
}

/* The least loaded node of region R's heap that is not in CHOSEN, or
 * IX_NONE. The answer is the least loaded of the nodes whose ancestors are
 * all chosen (any other node has an unchosen ancestor that is less loaded),
 * so only the chosen nodes' children are visited: at most 2 * IX_MAX_CHOSEN
 * + 1 slots. */
static uint32_t ix_best_unchosen(const struct place_index *ix, int r, const uint32_t *chosen, size_t nchosen)
{
    const struct ix_heap *h = &ix->heap[r];
    uint32_t stack[2 * IX_MAX_CHOSEN + 1], best = IX_NONE;
    size_t top = 0;

    if (h->n > 0)
        stack[top++] = 0;
    while (top > 0) {
        uint32_t pos = stack[--top], node = h->slot[pos];
        if (!ix_chosen(chosen, nchosen, node)) {
            if (best == IX_NONE || ix_less(ix, node, best))
                best = node;
            continue;
        }
        for (uint32_t c = 2 * pos + 1; c <= 2 * pos + 2 && c < h->n; c++)
            stack[top++] = c;
    }
    return best;
}

/* The node place_new_tenant's scans would pick: least (RTT from region FROM,
 * or 0 if FROM < 0; then less_loaded) over unchosen nodes with room, in
 * regions not in SKIP (if given). SKIP, when given, must mark the region of
 * every chosen node. IX_NONE if none. */
static uint32_t ix_pick(const struct place_index *ix, int from, const unsigned char *skip, const uint32_t *chosen,
                        size_t nchosen)
{
    uint32_t pick = IX_NONE, pick_rtt = UINT32_MAX;
    for (size_t r = 0; r < ix->regions->n; r++) {
        if (skip != NULL && skip[r])
            continue;
        uint32_t node;
        /* The common case, kept cheap: no chosen node sits in a region not
         * yet used (SKIP marks every chosen node's region), so the top of
         * the heap is the answer. */
        if (nchosen == 0 || skip != NULL)
            node = ix->heap[r].n > 0 ? ix->heap[r].slot[0] : IX_NONE;
        else
            node = ix_best_unchosen(ix, (int)r, chosen, nchosen);
        if (node == IX_NONE)
            continue;
        uint32_t rtt = from >= 0 ? ix->regions->rtt[from][r] : 0;
        if (pick == IX_NONE || rtt < pick_rtt || (rtt == pick_rtt && ix_less(ix, node, pick))) {
            pick = node;
            pick_rtt = rtt;
        }
    }
    return pick;
}

int place_index_new_tenant(const struct place_index *ix, const struct place_request *req, struct place_decision *out)
{
    uint32_t chosen[IX_MAX_CHOSEN], primary;
    unsigned char region_used[PLACE_MAX_REGIONS] = {0};
    struct place_decision d;

    if (ix == NULL || req == NULL || out == NULL || req->replicas > sizeof(d.replicas) / sizeof(d.replicas[0]))
        return PLACE_EINVAL;
    if ((req->region >= 0 && (size_t)req->region >= ix->regions->n) ||
        (req->client_region >= 0 && (size_t)req->client_region >= ix->regions->n))
        return PLACE_EUNKNOWN_REGION;
    if (req->region >= 0)
        primary = ix_best_unchosen(ix, req->region, NULL, 0);
    else
        primary = ix_pick(ix, req->client_region, NULL, NULL, 0);
    if (primary == IX_NONE)
        return PLACE_ENOCAPACITY;
    memset(&d, 0, sizeof(d));
    d.primary = primary;
    chosen[0] = primary;
    int pr = ix->node[primary].region;
    region_used[pr] = 1;
    /* as pick_replica: unused regions first, then any */
    while (d.nreplicas < req->replicas) {
        uint32_t pick = ix_pick(ix, pr, region_used, chosen, 1 + d.nreplicas);
        if (pick == IX_NONE)
            pick = ix_pick(ix, pr, NULL, chosen, 1 + d.nreplicas);
        if (pick == IX_NONE)
            return PLACE_ENOCAPACITY;
        chosen[1 + d.nreplicas] = pick;
        region_used[ix->node[pick].region] = 1;
        d.replicas[d.nreplicas++] = pick;
    }
    *out = d;
    return PLACE_OK;
}

void place_move_policy_init(struct place_move_policy *p)
{
    p->min_gain_permille = 200;
    p->min_writes = 100;
    p->min_dwell_ms = 60 * 60 * 1000;
}

/* sum over r of writes[r] * rtt(c, r). Cannot overflow: the caller checked
 * that the writes total at most PLACE_MOVE_WRITES_MAX (2^36) and an RTT is at
 * most 10000 ms (< 2^14), so the sum stays below 2^50. */
static uint64_t write_cost(const struct place_regions *regions, const uint64_t *writes, size_t c)
{
    uint64_t sum = 0;
    for (size_t r = 0; r < regions->n; r++)
        sum += writes[r] * regions->rtt[c][r];
    return sum;
}

int place_move_decide(const struct place_regions *regions, const struct place_move_facts *facts,
                      const struct place_move_policy *policy, struct place_move *out)
{
    struct place_move m;
    uint64_t total = 0, cur_cost, best_cost;
    size_t cur, best;

    if (regions == NULL || facts == NULL || policy == NULL || out == NULL || facts->writes == NULL ||
        facts->room == NULL || facts->nregions != regions->n || policy->min_gain_permille > 1000)
        return PLACE_EINVAL;
    if (facts->current < 0 || (size_t)facts->current >= regions->n)
        return PLACE_EUNKNOWN_REGION;
    for (size_t r = 0; r < regions->n; r++) {
        /* checked term by term so that the total itself cannot wrap */
        if (facts->writes[r] > PLACE_MOVE_WRITES_MAX || total + facts->writes[r] > PLACE_MOVE_WRITES_MAX)
            return PLACE_EINVAL;
        total += facts->writes[r];
    }
    cur = (size_t)facts->current;
    cur_cost = best_cost = write_cost(regions, facts->writes, cur);
    best = cur;
    /* Strictly cheaper only, in index order: a tie keeps the current region,
     * and among other regions of equal cost the lower index comes first. */
    for (size_t r = 0; r < regions->n; r++) {
        if (r == cur || !facts->room[r])
            continue;
        uint64_t c = write_cost(regions, facts->writes, r);
        if (c < best_cost) {
            best_cost = c;
            best = r;
        }
    }
    memset(&m, 0, sizeof(m));
    m.region = (int)cur;
    m.best = (int)best;
    m.writes = total;
    m.current_ms = total ? (double)cur_cost / (double)total : 0.0;
    m.best_ms = total ? (double)best_cost / (double)total : 0.0;
    if (total < policy->min_writes)
        m.reason = PLACE_STAY_IDLE;
    else if (best == cur)
        m.reason = PLACE_STAY_BEST;
    /* gain / cur_cost > permille / 1000, kept in integers so that a gain of
     * exactly the threshold never moves on a rounding error; below 2^60 */
    else if ((cur_cost - best_cost) * 1000 <= (uint64_t)policy->min_gain_permille * cur_cost)
        m.reason = PLACE_STAY_GAIN;
    /* checked after the gain so the log says a move is wanted but held back */
    else if (facts->now_ms < facts->last_move_ms || facts->now_ms - facts->last_move_ms < policy->min_dwell_ms)
        m.reason = PLACE_STAY_DWELL;
    else {
        m.reason = PLACE_MOVE_GO;
        m.move = 1;
        m.region = (int)best;
    }
    *out = m;
    return PLACE_OK;
}

const char *place_move_reason_str(enum place_move_reason reason)
{
    switch (reason) {
    case PLACE_MOVE_GO: return "move";
    case PLACE_STAY_IDLE: return "idle";
    case PLACE_STAY_BEST: return "best";
    case PLACE_STAY_GAIN: return "gain";
    case PLACE_STAY_DWELL: return "dwell";
    }
    return "unknown";
}

int place_regions_with_room(const struct place_regions *regions, const struct place_node *nodes, size_t nnodes,
                            unsigned char *room, size_t nregions)
{
    if (regions == NULL || room == NULL || nregions != regions->n || (nnodes > 0 && nodes == NULL))
        return PLACE_EINVAL;
    memset(room, 0, nregions);
    for (size_t i = 0; i < nnodes; i++)
        if (has_room(regions, &nodes[i]))
            room[nodes[i].region] = 1;
    return PLACE_OK;
}

const char *place_status_str(int status)
{
    switch (status) {
    case PLACE_OK: return "ok";
    case PLACE_ENOCAPACITY: return "not enough healthy nodes with room";
    case PLACE_EUNKNOWN_REGION: return "unknown region";
    case PLACE_EINVAL: return "invalid arguments";
    case PLACE_ENOMEM: return "out of memory";
    default: return "unknown placement error";
    }
}
