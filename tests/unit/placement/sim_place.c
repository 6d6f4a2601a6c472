/*
 * sim_place: what moving primaries near their writers buys, on a synthetic
 * trace replayed through placement/ alone (no daemons, no clock: simulated
 * time). Not a test: run by ops/bench/placement-sim, it prints figures.
 *   sim_place [TENANTS] [HOURS] [SEED] [REGIONS_JSON]
 *   (defaults 10000, 48, 24301 and the repository's ops/regions.json)
 *
 * The trace. Each tenant writes a number of times per 15-minute window (its
 * rate: 100 to 400 writes an hour, drawn per tenant, each window between
 * half and one and a half times that), and each write comes from a region
 * drawn from the tenant's profile at that time. Home regions are uniform over
 * the regions of the document. Kinds of tenant:
 *   local        50 %  90 % of writes from one home region, the rest spread
 *   two regions  20 %  60 % from one region, 40 % from another
 *   movers       15 %  local, then from a random point between a quarter and
 *                      three quarters of the trace local to another region
 *   alternating  10 %  local to region A, then to region B, switching every
 *                      4, 8 or 12 hours (follow-the-sun office hours)
 *   idle          5 %  local, but only 2 to 20 writes an hour
 *
 * The policies, all fed the same writes:
 *   (a)  static: every primary in the first region of the document;
 *   (a') static: each primary in a random region;
 *   (b)  at creation: the primary where the tenant's first write came from
 *        (place_index_new_tenant with that client region), never moved;
 *   (c)  automatic: as (b), then at the end of every window
 *        place_move_decide over the writes of the last hour with the default
 *        policy (place_move_policy_init); a move takes effect at once for the
 *        next window (the handover's own pause is not modelled).
 * Every region has nodes with room (3 per region, no capacity limit), so
 * room never constrains a move here; the unit tests cover that.
 *
 * A write's round trip is rtt(primary's region at that time, writer's
 * region) from the latency matrix, 0 within a region. The figures are over
 * every write of the trace, exact (a histogram per policy of whole ms).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement/place.h"

#define WINDOW_MS (15 * 60 * 1000ULL)
#define WINDOWS_PER_DECISION 4 /* decisions look at the last hour */
#define MAX_RTT 10000          /* place_regions_parse's bound */
#define NODES_PER_REGION 3

enum kind { LOCAL, TWO, MOVER, ALTERNATING, IDLE, NKINDS };
static const char *kind_name[NKINDS] = {"local", "two regions", "movers", "alternating", "idle"};

enum policy { STATIC_FIRST, STATIC_RANDOM, CREATION, AUTO, NPOLICIES };
static const char *policy_name[NPOLICIES] = {
    "(a)  static: all primaries in the first region",
    "(a') static: a random region per tenant",
    "(b)  at creation: region of the first write",
    "(c)  automatic: place_move_decide",
};

struct tenant {
    enum kind kind;
    int a, b;              /* home region, and the second one (two, mover, alternating) */
    uint32_t rate;         /* mean writes per window */
    uint32_t switch_at;    /* mover: first window local to b; alternating: period in windows */
    int primary[NPOLICIES];
    uint64_t last_move_ms; /* for AUTO */
    uint32_t moves;
    uint32_t *recent;      /* WINDOWS_PER_DECISION x nregions counts, a ring */
};

static uint64_t rng_state;

static uint32_t rnd(uint32_t n) /* xorshift64*, 0..n-1 */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * UINT64_C(2685821657736338717)) >> 32) % n;
}

static int other_region(int not, size_t nr)
{
    int r = (int)rnd((uint32_t)nr - 1);
    return r >= not ? r + 1 : r;
}

/* The writers' profile of tenant T in window W: weights per region. */
static void profile(const struct tenant *t, uint32_t w, size_t nr, uint32_t *weight)
{
    int home = t->a;
    for (size_t r = 0; r < nr; r++)
        weight[r] = 0;
    switch (t->kind) {
    case TWO:
        weight[t->a] = 60;
        weight[t->b] = 40;
        return;
    case MOVER: home = w >= t->switch_at ? t->b : t->a; break;
    case ALTERNATING: home = (w / t->switch_at) % 2 ? t->b : t->a; break;
    default: break;
    }
    /* 90 % home, the other 10 % spread evenly over the other regions */
    for (size_t r = 0; r < nr; r++)
        weight[r] = (int)r == home ? (uint32_t)(90 * (nr - 1)) : 10;
}

/* Nearest-rank percentile P (0..100] of a histogram of whole ms. */
static uint32_t percentile(const uint64_t *hist, uint64_t total, double p)
{
    uint64_t rank = (uint64_t)((double)total * p / 100.0 + 0.999999), seen = 0;
    if (rank == 0)
        rank = 1;
    for (uint32_t ms = 0; ms <= MAX_RTT; ms++) {
        seen += hist[ms];
        if (seen >= rank)
            return ms;
    }
    return MAX_RTT;
}

int main(int argc, char **argv)
{
    size_t ntenants = argc > 1 ? strtoul(argv[1], NULL, 10) : 10000;
    uint32_t hours = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 48;
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 0) : 24301;
    const char *path = argc > 4 ? argv[4] : REGIONS_JSON;
    static char doc[1 << 16];
    static uint64_t hist[NPOLICIES][MAX_RTT + 1];
    static uint64_t hist_kind[NKINDS][2][MAX_RTT + 1]; /* (b) and (c) by kind of tenant */
    char msg[256];
    struct place_regions *regions;
    struct place_index *ix;
    struct place_move_policy policy;
    FILE *f;
    size_t len;

    if (ntenants == 0 || hours == 0 || seed == 0) {
        fprintf(stderr, "usage: sim_place [TENANTS] [HOURS] [SEED (not 0)] [REGIONS_JSON]\n");
        return 2;
    }
    if ((f = fopen(path, "rb")) == NULL) {
        perror(path);
        return 1;
    }
    len = fread(doc, 1, sizeof(doc), f);
    fclose(f);
    if (place_regions_parse(doc, len, &regions, msg, sizeof(msg)) != PLACE_OK) {
        fprintf(stderr, "%s: %s\n", path, msg);
        return 1;
    }
    size_t nr = place_regions_count(regions), nn = nr * NODES_PER_REGION;
    uint32_t nwindows = hours * 4;
    struct place_node *nodes = calloc(nn, sizeof(*nodes));
    struct tenant *ten = calloc(ntenants, sizeof(*ten));
    uint32_t *ring = calloc(ntenants * WINDOWS_PER_DECISION * nr, sizeof(*ring));
    unsigned char *room = calloc(nr, 1);
    uint64_t *writes = calloc(nr, sizeof(*writes));
    uint32_t *weight = calloc(nr, sizeof(*weight)), *count = calloc(nr, sizeof(*count));
    uint64_t ntenants_kind[NKINDS] = {0}, moves_kind[NKINDS] = {0}, moved_kind[NKINDS] = {0};
    uint64_t reasons[PLACE_STAY_DWELL + 1] = {0}, total = 0;
    if (!nodes || !ten || !ring || !room || !writes || !weight || !count) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < nn; i++)
        nodes[i] = (struct place_node){.name = "n", .region = (int)(i % nr), .healthy = 1};
    if (place_index_new(regions, nodes, nn, &ix) != PLACE_OK ||
        place_regions_with_room(regions, nodes, nn, room, nr) != PLACE_OK) {
        fprintf(stderr, "placement setup failed\n");
        return 1;
    }
    place_move_policy_init(&policy);

    rng_state = seed;
    for (size_t i = 0; i < ntenants; i++) {
        struct tenant *t = &ten[i];
        uint32_t k = rnd(100);
        t->kind = k < 50 ? LOCAL : k < 70 ? TWO : k < 85 ? MOVER : k < 95 ? ALTERNATING : IDLE;
        t->a = (int)rnd((uint32_t)nr);
        t->b = other_region(t->a, nr);
        t->rate = t->kind == IDLE ? (2 + rnd(19) + 3) / 4 : (100 + rnd(301)) / 4;
        if (t->kind == MOVER)
            t->switch_at = nwindows / 4 + rnd(nwindows / 2 + 1);
        if (t->kind == ALTERNATING)
            t->switch_at = 16 * (1 + rnd(3)); /* 4, 8 or 12 hours */
        t->primary[STATIC_FIRST] = 0;
        t->primary[STATIC_RANDOM] = (int)rnd((uint32_t)nr);
        t->primary[CREATION] = t->primary[AUTO] = -1; /* at the first write */
        t->recent = ring + i * WINDOWS_PER_DECISION * nr;
        ntenants_kind[t->kind]++;
    }

    for (uint32_t w = 0; w < nwindows; w++) {
        uint64_t now_ms = (uint64_t)(w + 1) * WINDOW_MS; /* the end of window w */
        for (size_t i = 0; i < ntenants; i++) {
            struct tenant *t = &ten[i];
            uint32_t sum = 0, n = t->rate / 2 + rnd(t->rate + 1);
            profile(t, w, nr, weight);
            for (size_t r = 0; r < nr; r++)
                sum += weight[r], count[r] = 0;
            for (uint32_t k = 0; k < n; k++) {
                uint32_t x = rnd(sum);
                size_t r = 0;
                while (x >= weight[r])
                    x -= weight[r++];
                if (t->primary[CREATION] < 0) {
                    /* created by its first writer, near them */
                    struct place_request req = {.region = -1, .client_region = (int)r, .replicas = 0};
                    struct place_decision d;
                    if (place_index_new_tenant(ix, &req, &d) != PLACE_OK || place_index_apply(ix, &d) != PLACE_OK) {
                        fprintf(stderr, "placing tenant %zu failed\n", i);
                        return 1;
                    }
                    t->primary[CREATION] = t->primary[AUTO] = nodes[d.primary].region;
                }
                count[r]++;
            }
            for (size_t r = 0; r < nr; r++) {
                if (count[r] == 0)
                    continue;
                for (int p = 0; p < NPOLICIES; p++)
                    if (t->primary[p] >= 0)
                        hist[p][place_rtt_ms(regions, (size_t)t->primary[p], r)] += count[r];
                hist_kind[t->kind][0][place_rtt_ms(regions, (size_t)t->primary[CREATION], r)] += count[r];
                hist_kind[t->kind][1][place_rtt_ms(regions, (size_t)t->primary[AUTO], r)] += count[r];
                total += count[r];
            }
            /* the last hour's writes, window w replacing window w - 4 */
            uint32_t *slot = t->recent + (w % WINDOWS_PER_DECISION) * nr;
            memcpy(slot, count, nr * sizeof(*count));
            if (t->primary[AUTO] < 0)
                continue; /* not written to yet, so not created yet */
            for (size_t r = 0; r < nr; r++) {
                writes[r] = 0;
                for (int k = 0; k < WINDOWS_PER_DECISION; k++)
                    writes[r] += t->recent[k * nr + r];
            }
            struct place_move_facts facts = {.current = t->primary[AUTO], .writes = writes, .room = room,
                                             .nregions = nr, .last_move_ms = t->last_move_ms, .now_ms = now_ms};
            struct place_move m;
            if (place_move_decide(regions, &facts, &policy, &m) != PLACE_OK) {
                fprintf(stderr, "place_move_decide failed for tenant %zu\n", i);
                return 1;
            }
            reasons[m.reason]++;
            if (m.move) {
                t->primary[AUTO] = m.region;
                t->last_move_ms = now_ms;
                if (t->moves++ == 0)
                    moved_kind[t->kind]++;
                moves_kind[t->kind]++;
            }
        }
    }

    printf("placement-sim: %zu tenants, %u h in 15-min windows, %llu writes, %zu regions, seed %llu\n", ntenants, hours,
           (unsigned long long)total, nr, (unsigned long long)seed);
    printf("(c) moves when the last hour's write-weighted RTT gains > %u.%u %%, with >= %llu writes, "
           "at most once per %llu min\n\n",
           policy.min_gain_permille / 10, policy.min_gain_permille % 10, (unsigned long long)policy.min_writes,
           (unsigned long long)(policy.min_dwell_ms / 60000));
    printf("%-48s %10s %10s %10s %8s\n", "write round trip, every write of the trace", "median ms", "p99 ms",
           "mean ms", "moves");
    uint64_t moves = 0;
    for (int k = 0; k < NKINDS; k++)
        moves += moves_kind[k];
    for (int p = 0; p < NPOLICIES; p++) {
        uint64_t n = 0, sum = 0;
        for (uint32_t ms = 0; ms <= MAX_RTT; ms++)
            n += hist[p][ms], sum += hist[p][ms] * ms;
        printf("%-48s %10u %10u %10.1f %8llu\n", policy_name[p], percentile(hist[p], n, 50),
               percentile(hist[p], n, 99), n ? (double)sum / (double)n : 0.0,
               (unsigned long long)(p == AUTO ? moves : 0));
    }
    printf("\nby kind of tenant: (b) at creation vs (c) automatic, and the moves in (c)\n");
    printf("  %-12s %8s %11s %11s %11s %11s %8s %8s %9s\n", "kind", "tenants", "(b) median", "(b) p99",
           "(c) median", "(c) p99", "moves", "moved", "moves/day");
    for (int k = 0; k < NKINDS; k++) {
        uint64_t nb = 0, nc = 0;
        for (uint32_t ms = 0; ms <= MAX_RTT; ms++)
            nb += hist_kind[k][0][ms], nc += hist_kind[k][1][ms];
        printf("  %-12s %8llu %11u %11u %11u %11u %8llu %8llu %9.2f\n", kind_name[k],
               (unsigned long long)ntenants_kind[k], percentile(hist_kind[k][0], nb, 50),
               percentile(hist_kind[k][0], nb, 99), percentile(hist_kind[k][1], nc, 50),
               percentile(hist_kind[k][1], nc, 99), (unsigned long long)moves_kind[k],
               (unsigned long long)moved_kind[k],
               ntenants_kind[k] ? (double)moves_kind[k] / (double)ntenants_kind[k] / (hours / 24.0) : 0.0);
    }
    printf("  (moves/day: per tenant of the kind; moved: tenants that moved at least once)\n");
    printf("decisions in (c): move %llu, idle %llu, best %llu, gain %llu, dwell %llu\n",
           (unsigned long long)reasons[PLACE_MOVE_GO], (unsigned long long)reasons[PLACE_STAY_IDLE],
           (unsigned long long)reasons[PLACE_STAY_BEST], (unsigned long long)reasons[PLACE_STAY_GAIN],
           (unsigned long long)reasons[PLACE_STAY_DWELL]);

    place_index_free(ix);
    place_regions_free(regions);
    free(nodes);
    free(ten);
    free(ring);
    free(room);
    free(writes);
    free(weight);
    free(count);
    return 0;
}
