/*
 * placement/place.c: pure placement (see place.h). No I/O, no clock, no
 * globals; deterministic for the same input.
 */
#include "placement/place.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define PLACE_MAX_REGIONS 64

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
