/*
 * placement/place.h: pure placement logic. No I/O, no clock, no globals:
 * it takes facts (regions, latencies, nodes and their load) and returns
 * decisions, so it is tested exhaustively and benchmarked alone.
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
 * Fewer healthy nodes with room than 1 + replicas: PLACE_ENOCAPACITY. */
int place_new_tenant(const struct place_regions *regions, const struct place_node *nodes, size_t nnodes,
                     const struct place_request *req, struct place_decision *out);

const char *place_status_str(int status);

#endif
