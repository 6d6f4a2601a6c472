/*
 * placement/place.h: pure placement logic. No I/O, no clock, no globals:
 * it takes facts (regions, latencies, nodes and their load) and returns
 * decisions, so it is tested exhaustively and benchmarked alone.
 *
 * What it decides:
 *   - where a new tenant's primary and replicas go (place_new_tenant, or
 *     place_index_new_tenant for many tenants in a row);
 *   - which node replaces a lost replica (place_replacement);
 *   - whether a tenant's primary should move nearer its writers, and where
 *     (place_move_decide). The caller brings the facts (write counts by
 *     region, the time of the last move, "now"); nothing here keeps time.
 * Every function is a pure function of its arguments and may be called from
 * any thread, except that a place_index (which holds state: the loads it was
 * told) is used by one thread at a time. The caller owns its arguments.
 *
 * Errors are this library's own small enum (STYLE.md); the orchestrator maps
 * them to API codes.
 */
#ifndef SHOAL_PLACEMENT_PLACE_H
#define SHOAL_PLACEMENT_PLACE_H

#include <stddef.h>
#include <stdint.h>

enum place_status {
    PLACE_OK = 0,
    PLACE_ENOCAPACITY,     /* not enough healthy nodes with room */
    PLACE_EUNKNOWN_REGION, /* a region code that is not in the topology */
    PLACE_EINVAL,          /* bad arguments or bad regions document */
    PLACE_ENOMEM,
};

#define PLACE_MAX_REGIONS 64 /* regions in one topology */
#define PLACE_REGION_MAX 8 /* "ams", "iad1": 3 letters, optional digit, NUL */

/* Regions and their round-trip latencies. Built by place_regions_parse. */
struct place_regions;

/* Parses a regions document (ops/regions.json):
 *   {"regions":[{"code":"ams","name":"Amsterdam"},...],
 *    "rtt_ms":{"ams":{"iad":80,"sin":160,...},...}}
 * The matrix must be complete for every pair (symmetric entries may be given
 * once; the diagonal is 0). On error, MSG (MSG_LEN bytes) says what is wrong. */
int place_regions_parse(const char *json, size_t len, struct place_regions **out, char *msg, size_t msg_len);
void place_regions_free(struct place_regions *r);

size_t place_regions_count(const struct place_regions *r);
/* Index of CODE, or -1. */
int place_region_index(const struct place_regions *r, const char *code);
const char *place_region_code(const struct place_regions *r, size_t i);
const char *place_region_name(const struct place_regions *r, size_t i);
/* Round trip in ms between regions A and B (indexes). */
uint32_t place_rtt_ms(const struct place_regions *r, size_t a, size_t b);

/* A node as the orchestrator sees it. */
struct place_node {
    const char *name;
    int region;          /* index into the regions */
    int healthy;         /* registered and alive */
    uint32_t tenants;    /* instances it holds now */
    uint32_t primaries;  /* primaries it holds now */
    uint32_t capacity;   /* max instances; 0 = unlimited */
};

struct place_request {
    int region;          /* wanted primary region, or -1 */
    int client_region;   /* the caller's region (router header), or -1 */
    uint32_t replicas;   /* replica count wanted */
};

struct place_decision {
    size_t primary;      /* index into nodes */
    size_t replicas[16]; /* indexes into nodes */
    size_t nreplicas;
};

/* Chooses nodes for a new tenant:
 * - primary: a healthy node with room in REQ->region if given (none there:
 *   PLACE_ENOCAPACITY); else in the region nearest REQ->client_region that has
 *   room; else the least loaded node overall. Within a region, the node with
 *   the fewest tenants (ties: fewest primaries, then lowest index).
 * - replicas: one instance per node, other regions first, ordered by RTT
 *   from the primary's region (nearest first), least loaded node within a
 *   region; only then other nodes of already used regions.
 * A node whose region is outside REGIONS is never chosen (its RTTs are
 * unknown). Fewer healthy nodes with room than 1 + replicas:
 * PLACE_ENOCAPACITY. O(nodes) per call; place_index_new_tenant gives the
 * same decision in O(regions + log nodes) for bulk placement. */
int place_new_tenant(const struct place_regions *regions, const struct place_node *nodes, size_t nnodes,
                     const struct place_request *req, struct place_decision *out);

/*
 * A placement index for many placements in a row (a bulk import, a
 * rebalance, the benchmark): one min-heap per region of the nodes with room,
 * ordered by load as place_new_tenant orders them, so that
 * place_index_new_tenant returns exactly place_new_tenant's decision for the
 * same facts in O(regions + log nodes) instead of O(nodes).
 *
 * The index copies the nodes' facts at creation (names are not kept: the
 * decisions are indexes into the caller's array, as with place_new_tenant)
 * and never reads the caller's array again: the caller reports each change
 * with place_index_update, or place_index_apply for a tenant it placed. It
 * borrows REGIONS, which must outlive it. Not thread-safe: one thread at a
 * time per index (reads included, as the caller applies between them).
 */
struct place_index;

/* Builds an index over NODES (indexes 0..NNODES-1 as in the array). Sets
 * *OUT, freed with place_index_free. PLACE_EINVAL, PLACE_ENOMEM. */
int place_index_new(const struct place_regions *regions, const struct place_node *nodes, size_t nnodes,
                    struct place_index **out);
/* Frees IX; NULL is a no-op. */
void place_index_free(struct place_index *ix);

/* Replaces what IX knows of node I (health, region, load, capacity) with
 * NODE's facts, e.g. when it registers, dies, fills up or loses a tenant.
 * O(log nodes). On error (PLACE_EINVAL, PLACE_ENOMEM) IX is unchanged. */
int place_index_update(struct place_index *ix, size_t i, const struct place_node *node);

/* Records a tenant placed as D: one more tenant on each of its nodes and one
 * more primary on its primary, as the caller's own counts would change.
 * O(instances * log nodes). PLACE_EINVAL for an index out of range (then
 * nothing is recorded). */
int place_index_apply(struct place_index *ix, const struct place_decision *d);

/* place_new_tenant's decision for REQ on the nodes as IX knows them (same
 * rules, same tie-breaks, same status codes). Does not record it: call
 * place_index_apply once the tenant is really placed. */
int place_index_new_tenant(const struct place_index *ix, const struct place_request *req, struct place_decision *out);

/* Chooses a node to take over from LOST, a replica of a tenant placed on
 * CURRENT (indexes into NODES, as place_new_tenant returned them or as the
 * tenant record says now), by the replica rule of place_new_tenant: a healthy
 * node with room that holds no instance of the tenant yet, in a region no
 * surviving instance uses if there is one, nearest to the primary's region
 * first, least loaded within a region. The lost node's own region counts as
 * free again, so a replacement in the same region is preferred when it is
 * the nearest. Sets *OUT to the node's index.
 * LOST must be one of CURRENT's replicas: a lost primary is failed over first
 * (a replica promoted), then its old node is replaced as a lost replica of
 * the new placement (PLACE_EINVAL otherwise). PLACE_ENOCAPACITY if no node
 * qualifies; PLACE_EUNKNOWN_REGION if the primary's node is in no known
 * region. O(nodes); pure; any thread. */
int place_replacement(const struct place_regions *regions, const struct place_node *nodes, size_t nnodes,
                      const struct place_decision *current, size_t lost, size_t *out);

/*
 * Moving a primary nearer its writers (DESIGN.md "Placement near users").
 *
 * A write costs one round trip between the writer's region and the
 * primary's, so the cost of a primary region C over a window is
 *     cost(C) = sum over regions r of writes[r] * rtt(C, r)
 * and the best region is the one with the least cost. Moving is not free (a
 * handover fences the tenant for a moment), and traffic is noisy, so a move
 * must pay for itself:
 *   - an idle tenant never moves: below policy->min_writes writes in the
 *     window the counts say nothing about where its users are;
 *   - the gain must be large: (cost(current) - cost(best)) / cost(current)
 *     must exceed policy->min_gain_permille / 1000 strictly. Moving back asks
 *     for the same gain the other way, so traffic that sits near the middle
 *     does not tip the tenant to and fro (hysteresis);
 *   - never twice within policy->min_dwell_ms, whatever the traffic does, so
 *     a tenant whose users alternate between regions moves at most once per
 *     dwell time;
 *   - only to a region that has a healthy node with room (the current region
 *     needs none: the tenant is already there).
 * Ties keep the current region, then go to the lower region index, so the
 * same facts always give the same answer.
 *
 * Costs are computed exactly in integers (the threshold is in permille for
 * that reason) and reported in ms per write, a write-weighted mean RTT.
 */

/* What place_move_decide concluded, for the caller's log line. */
enum place_move_reason {
    PLACE_MOVE_GO = 0, /* move: the gain exceeds the threshold and the dwell time has passed */
    PLACE_STAY_IDLE,   /* fewer than policy->min_writes writes in the window */
    PLACE_STAY_BEST,   /* no region with room is cheaper than the current one */
    PLACE_STAY_GAIN,   /* a cheaper region exists, but the gain is within the threshold */
    PLACE_STAY_DWELL,  /* the move would pay, but the last one was less than min_dwell_ms ago */
};

/* Total writes in one window above which place_move_decide refuses
 * (PLACE_EINVAL) rather than overflow its integer sums; only proportions
 * matter, so a caller with more scales its counts down. */
#define PLACE_MOVE_WRITES_MAX (UINT64_C(1) << 36)

struct place_move_policy {
    uint32_t min_gain_permille; /* relative gain to exceed, 0..1000 (200 = 20 %) */
    uint64_t min_writes;        /* fewer writes in the window: never move */
    uint64_t min_dwell_ms;      /* no move sooner than this after the last one */
};

/* The facts about one tenant. The arrays are indexed by region and borrowed
 * for the call only. */
struct place_move_facts {
    int current;               /* region of the primary now */
    const uint64_t *writes;    /* writes[r]: writes from clients in region r over the window */
    const unsigned char *room; /* room[r] != 0: region r has a healthy node with room */
    size_t nregions;           /* entries in writes and room; must be place_regions_count() */
    uint64_t last_move_ms;     /* when the primary last moved (or the tenant was created) */
    uint64_t now_ms;           /* the same clock as last_move_ms; the library reads none */
};

struct place_move {
    int move;                     /* 1: hand the primary over to .region; 0: stay */
    enum place_move_reason reason;
    int region;                   /* the target when moving, else the current region */
    int best;                     /* the cheapest region with room (may be the current one) */
    uint64_t writes;              /* total writes in the window */
    double current_ms;            /* cost of the current region, ms per write (0 if no writes) */
    double best_ms;               /* cost of .best, ms per write */
};

/* Defaults: 20 % gain, 100 writes per window, one hour of dwell time. */
void place_move_policy_init(struct place_move_policy *p);

/* Decides whether one tenant's primary should move, and where, by the rules
 * above. Fills OUT (only on PLACE_OK) with the decision, the best region and
 * both costs even when the answer is to stay, so the caller can log why.
 * Returns PLACE_EINVAL for NULL arguments, nregions not matching REGIONS, a
 * threshold above 1000 or more than PLACE_MOVE_WRITES_MAX writes;
 * PLACE_EUNKNOWN_REGION for a current region outside REGIONS. A now_ms
 * earlier than last_move_ms counts as within the dwell time (a clock that
 * stepped back must not cause a move). Pure; any thread. */
int place_move_decide(const struct place_regions *regions, const struct place_move_facts *facts,
                      const struct place_move_policy *policy, struct place_move *out);

/* "move", "idle", "best", "gain" or "dwell". */
const char *place_move_reason_str(enum place_move_reason reason);

/* Sets ROOM[r] (NREGIONS entries, place_regions_count()) to 1 where region r
 * has a healthy node with room, else 0: the room argument of
 * place_move_decide from the same node list place_new_tenant takes. */
int place_regions_with_room(const struct place_regions *regions, const struct place_node *nodes, size_t nnodes,
                            unsigned char *room, size_t nregions);

/* A sentence for a place_status code, for messages. */
const char *place_status_str(int status);

#endif
