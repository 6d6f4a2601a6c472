/*
 * bench_place: how fast placement/ places tenants in bulk. Not a test: run by
 * ops/bench/placement, it prints figures.
 *   bench_place [TENANTS] [NODES] [SCAN_TENANTS] [REGIONS_JSON]
 *   (defaults 1000000, 1000, 100000 and the repository's ops/regions.json)
 *
 * NODES nodes are spread round-robin over the regions, healthy, without a
 * capacity limit. Every tenant asks for 2 replicas; a third of the requests
 * name a primary region, a third only give the caller's region, a third give
 * neither (all drawn from one seeded generator, so every run places the same
 * tenants). Each placed tenant is recorded before the next is placed, as a
 * bulk import would do (every loop also counts it in its own node array, as
 * a caller would). Three loops, timed in the same run:
 *   - baseline: draws the same requests and puts each instance on a random
 *     node, the least any placement can cost;
 *   - place_index: builds the index, then place_index_new_tenant and
 *     place_index_apply per tenant;
 *   - place_new_tenant, the O(nodes) scan, on the first SCAN_TENANTS tenants
 *     only (it is much slower); its rate is extrapolated to TENANTS.
 * The baseline and the index report the best of 3 runs. Times are CPU
 * seconds of this process (the machine may be busy with other work), with
 * the wall-clock seconds of the same run beside them. The scan's decisions
 * are compared with the index's for the tenants both placed: they must agree.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "placement/place.h"

#define REPLICAS 2
#define RUNS 3

static uint64_t rng_state;

static uint32_t rnd(uint32_t n) /* xorshift64*, 0..n-1 */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * UINT64_C(2685821657736338717)) >> 32) % n;
}

static struct place_request next_request(uint32_t nregions)
{
    struct place_request req = {.region = -1, .client_region = -1, .replicas = REPLICAS};
    switch (rnd(3)) {
    case 0: req.region = (int)rnd(nregions); break;
    case 1: req.client_region = (int)rnd(nregions); break;
    }
    return req;
}

/* CPU time of this (single-threaded) process: the figure that does not
 * depend on what else the machine runs. Wall time is printed beside it. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fresh_nodes(struct place_node *nodes, size_t nn, size_t nregions)
{
    for (size_t i = 0; i < nn; i++)
        nodes[i] = (struct place_node){.name = "n", .region = (int)(i % nregions), .healthy = 1};
}

static void record(struct place_node *nodes, const struct place_decision *d)
{
    nodes[d->primary].tenants++;
    nodes[d->primary].primaries++;
    for (size_t k = 0; k < d->nreplicas; k++)
        nodes[d->replicas[k]].tenants++;
}

static void rate(char *buf, size_t len, double per_s)
{
    if (per_s >= 1e6)
        snprintf(buf, len, "%.2f M tenants/s", per_s / 1e6);
    else
        snprintf(buf, len, "%.1f k tenants/s", per_s / 1e3);
}

int main(int argc, char **argv)
{
    size_t ntenants = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
    size_t nn = argc > 2 ? strtoul(argv[2], NULL, 10) : 1000;
    size_t nscan = argc > 3 ? strtoul(argv[3], NULL, 10) : 100000;
    const char *path = argc > 4 ? argv[4] : REGIONS_JSON;
    static char doc[1 << 16];
    char msg[256], r1[64];
    struct place_regions *regions;
    FILE *f;
    size_t len;

    if (ntenants == 0 || nn == 0) {
        fprintf(stderr, "usage: bench_place [TENANTS] [NODES] [SCAN_TENANTS] [REGIONS_JSON]\n");
        return 2;
    }
    if (nscan > ntenants)
        nscan = ntenants;
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
    uint32_t nr = (uint32_t)place_regions_count(regions);
    struct place_node *nodes = calloc(nn, sizeof(*nodes));
    struct place_decision *seen = calloc(nscan ? nscan : 1, sizeof(*seen));
    if (nodes == NULL || seen == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    printf("placement bench: %zu tenants (%d replicas each) on %zu nodes in %u regions; best of %d runs\n", ntenants,
           REPLICAS, nn, nr, RUNS);

    /* baseline: same requests, random nodes */
    double base = 1e99, base_wall = 0;
    for (int run = 0; run < RUNS; run++) {
        fresh_nodes(nodes, nn, nr);
        rng_state = 0x5eed;
        double t0 = cpu_s(), w0 = wall_s();
        for (size_t t = 0; t < ntenants; t++) {
            struct place_request req = next_request(nr);
            struct place_decision d = {.primary = rnd((uint32_t)nn), .nreplicas = req.replicas};
            for (size_t k = 0; k < d.nreplicas; k++)
                d.replicas[k] = rnd((uint32_t)nn);
            record(nodes, &d);
        }
        double el = cpu_s() - t0, wl = wall_s() - w0;
        if (el < base) {
            base = el;
            base_wall = wl;
        }
    }
    uint64_t check = 0;
    for (size_t i = 0; i < nn; i++)
        check += nodes[i].tenants;
    rate(r1, sizeof(r1), (double)ntenants / base);
    printf("  %-26s %9s  %8s  %8s  %18s\n", "", "tenants", "cpu s", "wall s", "rate (cpu)");
    printf("  %-26s %9zu  %8.3f  %8.3f  %18s  (%llu instances)\n", "baseline: random nodes", ntenants, base,
           base_wall, r1, (unsigned long long)check);

    /* the index */
    double best = 1e99, best_wall = 0;
    size_t failed = 0;
    for (int run = 0; run < RUNS; run++) {
        struct place_index *ix;
        fresh_nodes(nodes, nn, nr);
        rng_state = 0x5eed;
        failed = 0;
        double t0 = cpu_s(), w0 = wall_s();
        if (place_index_new(regions, nodes, nn, &ix) != PLACE_OK) {
            fprintf(stderr, "place_index_new failed\n");
            return 1;
        }
        for (size_t t = 0; t < ntenants; t++) {
            struct place_request req = next_request(nr);
            struct place_decision d;
            if (place_index_new_tenant(ix, &req, &d) != PLACE_OK || place_index_apply(ix, &d) != PLACE_OK) {
                failed++;
                continue;
            }
            if (t < nscan)
                seen[t] = d;
            /* the caller's own counts, kept as the baseline keeps them */
            record(nodes, &d);
        }
        double el = cpu_s() - t0, wl = wall_s() - w0;
        place_index_free(ix);
        if (el < best) {
            best = el;
            best_wall = wl;
        }
    }
    rate(r1, sizeof(r1), (double)ntenants / best);
    printf("  %-26s %9zu  %8.3f  %8.3f  %18s  %.1fx the baseline's time\n", "place_index", ntenants, best,
           best_wall, r1, best / base);
    uint32_t tmin = UINT32_MAX, tmax = 0, pmin = UINT32_MAX, pmax = 0;
    for (size_t i = 0; i < nn; i++) {
        tmin = nodes[i].tenants < tmin ? nodes[i].tenants : tmin;
        tmax = nodes[i].tenants > tmax ? nodes[i].tenants : tmax;
        pmin = nodes[i].primaries < pmin ? nodes[i].primaries : pmin;
        pmax = nodes[i].primaries > pmax ? nodes[i].primaries : pmax;
    }
    printf("  %-26s instances per node %u..%u, primaries per node %u..%u, %zu tenants refused\n", "  spread:", tmin,
           tmax, pmin, pmax, failed);

    /* the scan, on the first tenants only */
    if (nscan > 0) {
        size_t differ = 0;
        fresh_nodes(nodes, nn, nr);
        rng_state = 0x5eed;
        double t0 = cpu_s(), w0 = wall_s();
        for (size_t t = 0; t < nscan; t++) {
            struct place_request req = next_request(nr);
            struct place_decision d;
            if (place_new_tenant(regions, nodes, nn, &req, &d) != PLACE_OK) {
                differ++;
                continue;
            }
            record(nodes, &d);
            if (d.primary != seen[t].primary || d.nreplicas != seen[t].nreplicas ||
                memcmp(d.replicas, seen[t].replicas, d.nreplicas * sizeof(d.replicas[0])) != 0)
                differ++;
        }
        double el = cpu_s() - t0, wl = wall_s() - w0;
        rate(r1, sizeof(r1), (double)nscan / el);
        printf("  %-26s %9zu  %8.3f  %8.3f  %18s  ~%.1f cpu s for %zu: the index is %.0fx faster\n",
               "place_new_tenant (scan)", nscan, el, wl, r1, el * (double)ntenants / (double)nscan, ntenants,
               (el / (double)nscan) / (best / (double)ntenants));
        printf("  index and scan decisions for the first %zu tenants: %s\n", nscan,
               differ ? "DIFFER" : "identical");
        if (differ) {
            fprintf(stderr, "%zu decisions differ\n", differ);
            return 1;
        }
    }
    free(seen);
    free(nodes);
    place_regions_free(regions);
    return failed ? 1 : 0;
}
