/* Unit tests for placement/: the regions document, new-tenant placement and
 * the decision to move a primary nearer its writers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "placement/place.h"

static struct place_regions *regions;

#define NREG 10 /* regions in ops/regions.json */

static int setup(void **state)
{
    FILE *f = fopen(REGIONS_JSON, "rb");
    char buf[65536], msg[256];
    size_t n;
    (void)state;
    assert_non_null(f);
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    assert_int_equal(place_regions_parse(buf, n, &regions, msg, sizeof(msg)), PLACE_OK);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    place_regions_free(regions);
    return 0;
}

static int R(const char *code)
{
    int i = place_region_index(regions, code);
    assert_true(i >= 0);
    return i;
}

static void the_shipped_regions_file_has_eight_or_more_regions_and_a_symmetric_matrix(void **state)
{
    (void)state;
    size_t n = place_regions_count(regions);
    assert_true(n >= 8);
    for (size_t a = 0; a < n; a++) {
        assert_int_equal(place_rtt_ms(regions, a, a), 0);
        for (size_t b = 0; b < n; b++) {
            assert_int_equal(place_rtt_ms(regions, a, b), place_rtt_ms(regions, b, a));
            if (a != b)
                assert_true(place_rtt_ms(regions, a, b) > 0);
        }
    }
    assert_true(place_rtt_ms(regions, R("ams"), R("fra")) < place_rtt_ms(regions, R("ams"), R("sin")));
}

static void bad_regions_documents_are_rejected_with_a_reason(void **state)
{
    struct {
        const char *doc, *needle;
    } cases[] = {
        {"{", "not JSON"},
        {"{\"regions\":[]}", "non-empty"},
        {"{\"regions\":[{\"code\":\"AMS\"}],\"rtt_ms\":{}}", "valid \"code\""},
        {"{\"regions\":[{\"code\":\"ams\"},{\"code\":\"ams\"}],\"rtt_ms\":{}}", "twice"},
        {"{\"regions\":[{\"code\":\"ams\"},{\"code\":\"iad\"}],\"rtt_ms\":{}}", "no value between"},
        {"{\"regions\":[{\"code\":\"ams\"},{\"code\":\"iad\"}],\"rtt_ms\":{\"ams\":{\"iad\":-1}}}", "milliseconds"},
        {"{\"regions\":[{\"code\":\"ams\"},{\"code\":\"iad\"}],\"rtt_ms\":{\"ams\":{\"xyz\":3}}}", "unknown region"},
        {"{\"regions\":[{\"code\":\"ams\"},{\"code\":\"iad\"}],\"rtt_ms\":{\"ams\":{\"iad\":3},\"iad\":{\"ams\":4}}}",
         "different values"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct place_regions *r = NULL;
        char msg[256] = "";
        assert_int_equal(place_regions_parse(cases[i].doc, strlen(cases[i].doc), &r, msg, sizeof(msg)), PLACE_EINVAL);
        assert_null(r);
        if (strstr(msg, cases[i].needle) == NULL)
            fail_msg("case %zu: message '%s' lacks '%s'", i, msg, cases[i].needle);
    }
}

static void three_regions(struct place_node nodes[3])
{
    memset(nodes, 0, 3 * sizeof(*nodes));
    nodes[0] = (struct place_node){.name = "n1", .region = R("ams"), .healthy = 1};
    nodes[1] = (struct place_node){.name = "n2", .region = R("iad"), .healthy = 1};
    nodes[2] = (struct place_node){.name = "n3", .region = R("sin"), .healthy = 1};
}

static void the_primary_goes_to_the_asked_region_and_replicas_nearest_first(void **state)
{
    struct place_node nodes[3];
    struct place_decision d;
    (void)state;
    three_regions(nodes);
    struct place_request req = {.region = R("iad"), .client_region = -1, .replicas = 2};
    assert_int_equal(place_new_tenant(regions, nodes, 3, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 1);
    assert_int_equal(d.nreplicas, 2);
    assert_int_equal(d.replicas[0], 0); /* ams is nearer to iad than sin */
    assert_int_equal(d.replicas[1], 2);
}

static void without_a_region_the_primary_goes_near_the_caller(void **state)
{
    struct place_node nodes[3];
    struct place_decision d;
    (void)state;
    three_regions(nodes);
    struct place_request req = {.region = -1, .client_region = R("nrt"), .replicas = 1};
    assert_int_equal(place_new_tenant(regions, nodes, 3, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 2); /* sin is nearest to Tokyo */
    req.client_region = R("fra");
    assert_int_equal(place_new_tenant(regions, nodes, 3, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 0);
}

static void without_any_hint_the_least_loaded_node_wins_deterministically(void **state)
{
    struct place_node nodes[3];
    struct place_decision d;
    (void)state;
    three_regions(nodes);
    nodes[0].tenants = 5;
    nodes[1].tenants = 2;
    nodes[2].tenants = 2;
    nodes[1].primaries = 1;
    struct place_request req = {.region = -1, .client_region = -1, .replicas = 0};
    assert_int_equal(place_new_tenant(regions, nodes, 3, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 2); /* equal tenants: fewer primaries */
    nodes[2].primaries = 1;
    assert_int_equal(place_new_tenant(regions, nodes, 3, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 1); /* full tie: lower index */
}

static void full_or_unhealthy_nodes_are_skipped(void **state)
{
    struct place_node nodes[4];
    struct place_decision d;
    (void)state;
    three_regions(nodes);
    nodes[3] = (struct place_node){.name = "n4", .region = R("iad"), .healthy = 1};
    nodes[1].capacity = 10;
    nodes[1].tenants = 10; /* full */
    struct place_request req = {.region = R("iad"), .client_region = -1, .replicas = 2};
    assert_int_equal(place_new_tenant(regions, nodes, 4, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 3);
    nodes[3].healthy = 0;
    assert_int_equal(place_new_tenant(regions, nodes, 4, &req, &d), PLACE_ENOCAPACITY);
}

static void replicas_use_one_node_each_and_share_regions_only_when_needed(void **state)
{
    struct place_node nodes[4];
    struct place_decision d;
    (void)state;
    three_regions(nodes);
    nodes[3] = (struct place_node){.name = "n4", .region = R("ams"), .healthy = 1};
    struct place_request req = {.region = R("ams"), .client_region = -1, .replicas = 3};
    assert_int_equal(place_new_tenant(regions, nodes, 4, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 0);
    /* other regions first (iad, then sin), then the second ams node */
    assert_int_equal(d.replicas[0], 1);
    assert_int_equal(d.replicas[1], 2);
    assert_int_equal(d.replicas[2], 3);
    req.replicas = 4;
    assert_int_equal(place_new_tenant(regions, nodes, 4, &req, &d), PLACE_ENOCAPACITY);
}

static void unknown_regions_and_no_nodes_are_errors(void **state)
{
    struct place_decision d;
    struct place_request req = {.region = 99, .client_region = -1, .replicas = 0};
    (void)state;
    assert_int_equal(place_new_tenant(regions, NULL, 0, &req, &d), PLACE_EUNKNOWN_REGION);
    req.region = -1;
    assert_int_equal(place_new_tenant(regions, NULL, 0, &req, &d), PLACE_ENOCAPACITY);
    assert_string_equal(place_status_str(PLACE_ENOCAPACITY), "not enough healthy nodes with room");
}

/* ---- the placement index ---- */

static uint64_t rng_state;

static uint32_t rnd(uint32_t n) /* xorshift64*, 0..n-1 */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * UINT64_C(2685821657736338717)) >> 32) % n;
}

static void random_node(struct place_node *n)
{
    /* few distinct loads so that ties are common; now and then a region the
     * topology does not know */
    n->region = rnd(20) == 0 ? (rnd(2) ? -1 : 12) : (int)rnd(NREG);
    n->healthy = rnd(8) != 0;
    n->tenants = rnd(4);
    n->primaries = rnd(3);
    n->capacity = rnd(3) == 0 ? n->tenants + rnd(4) : 0;
}

static void assert_same_decision(int rc1, const struct place_decision *a, int rc2, const struct place_decision *b,
                                 int step)
{
    if (rc1 != rc2)
        fail_msg("step %d: scan says %s, index says %s", step, place_status_str(rc1), place_status_str(rc2));
    if (rc1 != PLACE_OK)
        return;
    if (a->primary != b->primary || a->nreplicas != b->nreplicas)
        fail_msg("step %d: primary %zu/%zu replicas %zu/%zu", step, a->primary, b->primary, a->nreplicas,
                 b->nreplicas);
    for (size_t k = 0; k < a->nreplicas; k++)
        if (a->replicas[k] != b->replicas[k])
            fail_msg("step %d: replica %zu is node %zu by scan, %zu by index", step, k, a->replicas[k],
                     b->replicas[k]);
}

/* 200 random clusters of 1 to 60 nodes, 300 random requests each with the
 * placed tenants recorded and nodes changing now and then: the index agrees
 * with place_new_tenant on every status and every node chosen. */
static void the_index_decides_exactly_as_place_new_tenant(void **state)
{
    struct place_node nodes[60];
    size_t placed = 0, full = 0;
    (void)state;
    rng_state = 0x5eed;
    for (int cluster = 0; cluster < 200; cluster++) {
        size_t nn = 1 + rnd(60);
        struct place_index *ix;
        for (size_t i = 0; i < nn; i++)
            random_node(&nodes[i]);
        assert_int_equal(place_index_new(regions, nodes, nn, &ix), PLACE_OK);
        for (int step = 0; step < 300; step++) {
            struct place_decision a, b;
            struct place_request req = {.region = -1, .client_region = -1, .replicas = rnd(5)};
            switch (rnd(3)) {
            case 0: req.region = (int)rnd(NREG); break;
            case 1: req.client_region = (int)rnd(NREG); break;
            }
            if (rnd(50) == 0)
                req.replicas = 16;
            int rc1 = place_new_tenant(regions, nodes, nn, &req, &a);
            int rc2 = place_index_new_tenant(ix, &req, &b);
            assert_same_decision(rc1, &a, rc2, &b, cluster * 1000 + step);
            if (rc1 == PLACE_OK) {
                placed++;
                assert_int_equal(place_index_apply(ix, &a), PLACE_OK);
                nodes[a.primary].tenants++;
                nodes[a.primary].primaries++;
                for (size_t k = 0; k < a.nreplicas; k++)
                    nodes[a.replicas[k]].tenants++;
            } else {
                full++;
            }
            if (rnd(10) == 0) { /* a node changes: dies, recovers, moves, loses tenants */
                size_t i = rnd((uint32_t)nn);
                random_node(&nodes[i]);
                assert_int_equal(place_index_update(ix, i, &nodes[i]), PLACE_OK);
            }
        }
        place_index_free(ix);
    }
    /* both outcomes were exercised, many times */
    if (placed < 40000 || full < 5000)
        fail_msg("only %zu placed and %zu refused", placed, full);
}

static void the_index_follows_updates_and_fills_nodes_up(void **state)
{
    struct place_node nodes[4];
    struct place_index *ix;
    struct place_decision d;
    struct place_request req = {.region = R("iad"), .client_region = -1, .replicas = 0};
    (void)state;
    three_regions(nodes);
    nodes[3] = (struct place_node){.name = "n4", .region = R("iad"), .healthy = 1, .tenants = 1, .capacity = 2};
    assert_int_equal(place_index_new(regions, nodes, 4, &ix), PLACE_OK);
    assert_int_equal(place_index_new_tenant(ix, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 1); /* 0 tenants before n4's 1 */
    assert_int_equal(place_index_apply(ix, &d), PLACE_OK);
    assert_int_equal(place_index_new_tenant(ix, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 3); /* 1 tenant each: n4 has no primary yet */
    assert_int_equal(place_index_apply(ix, &d), PLACE_OK); /* n4 is now full */
    assert_int_equal(place_index_new_tenant(ix, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 1);
    nodes[1].healthy = 0;
    assert_int_equal(place_index_update(ix, 1, &nodes[1]), PLACE_OK);
    assert_int_equal(place_index_new_tenant(ix, &req, &d), PLACE_ENOCAPACITY);
    nodes[0].region = R("iad"); /* n1 re-registers in iad */
    assert_int_equal(place_index_update(ix, 0, &nodes[0]), PLACE_OK);
    assert_int_equal(place_index_new_tenant(ix, &req, &d), PLACE_OK);
    assert_int_equal(d.primary, 0);
    d.primary = 4;
    assert_int_equal(place_index_apply(ix, &d), PLACE_EINVAL);
    assert_int_equal(place_index_update(ix, 4, &nodes[0]), PLACE_EINVAL);
    req.region = NREG;
    assert_int_equal(place_index_new_tenant(ix, &req, &d), PLACE_EUNKNOWN_REGION);
    place_index_free(ix);
    place_index_free(NULL);
    assert_int_equal(place_index_new(regions, NULL, 0, &ix), PLACE_OK);
    req.region = -1;
    assert_int_equal(place_index_new_tenant(ix, &req, &d), PLACE_ENOCAPACITY);
    place_index_free(ix);
}

/* ---- replacing a lost replica ---- */

/* ams primary (0) with replicas in iad (1) and sin (2); spare nodes in ams
 * (3), fra (4) and iad (5, busier). */
static void six_nodes(struct place_node nodes[7], struct place_decision *cur)
{
    memset(nodes, 0, 7 * sizeof(*nodes));
    nodes[0] = (struct place_node){.name = "n0", .region = R("ams"), .healthy = 1};
    nodes[1] = (struct place_node){.name = "n1", .region = R("iad"), .healthy = 1};
    nodes[2] = (struct place_node){.name = "n2", .region = R("sin"), .healthy = 1};
    nodes[3] = (struct place_node){.name = "n3", .region = R("ams"), .healthy = 1};
    nodes[4] = (struct place_node){.name = "n4", .region = R("fra"), .healthy = 1, .tenants = 7};
    nodes[5] = (struct place_node){.name = "n5", .region = R("iad"), .healthy = 1, .tenants = 5};
    memset(cur, 0, sizeof(*cur));
    cur->primary = 0;
    cur->replicas[0] = 1;
    cur->replicas[1] = 2;
    cur->nreplicas = 2;
}

static void a_lost_replica_is_replaced_in_the_nearest_region_the_tenant_does_not_use(void **state)
{
    struct place_node nodes[7];
    struct place_decision cur;
    size_t pick = 99;
    (void)state;
    six_nodes(nodes, &cur);
    nodes[1].healthy = 0; /* the lost node */
    /* fra (8 ms from ams) before iad (80 ms), though n4 holds more tenants */
    assert_int_equal(place_replacement(regions, nodes, 6, &cur, 1, &pick), PLACE_OK);
    assert_int_equal(pick, 4);
    nodes[4].capacity = 7; /* full: the lost node's own region is free again */
    assert_int_equal(place_replacement(regions, nodes, 6, &cur, 1, &pick), PLACE_OK);
    assert_int_equal(pick, 5);
    nodes[5].healthy = 0; /* only a region the tenant already uses is left */
    assert_int_equal(place_replacement(regions, nodes, 6, &cur, 1, &pick), PLACE_OK);
    assert_int_equal(pick, 3);
    nodes[3].capacity = 1;
    nodes[3].tenants = 1;
    pick = 99;
    assert_int_equal(place_replacement(regions, nodes, 6, &cur, 1, &pick), PLACE_ENOCAPACITY);
    assert_int_equal(pick, 99); /* untouched on error */
}

static void a_replacement_never_goes_to_a_node_holding_the_tenant_or_the_lost_one(void **state)
{
    struct place_node nodes[7];
    struct place_decision cur;
    size_t pick = 99;
    (void)state;
    six_nodes(nodes, &cur);
    /* the lost node still looks healthy (its disk failed, say), and the
     * other instances' nodes are empty: none of them may be chosen */
    nodes[3].healthy = nodes[4].healthy = nodes[5].healthy = 0;
    assert_int_equal(place_replacement(regions, nodes, 6, &cur, 2, &pick), PLACE_ENOCAPACITY);
    nodes[5].healthy = 1;
    assert_int_equal(place_replacement(regions, nodes, 6, &cur, 2, &pick), PLACE_OK);
    assert_int_equal(pick, 5); /* iad is used by n1, but it is all there is */
}

static void replacements_break_ties_by_load_then_index(void **state)
{
    struct place_node nodes[7];
    struct place_decision cur;
    size_t pick = 99;
    (void)state;
    six_nodes(nodes, &cur);
    nodes[6] = (struct place_node){.name = "n6", .region = R("fra"), .healthy = 1, .tenants = 7, .primaries = 2};
    nodes[4].primaries = 2;
    assert_int_equal(place_replacement(regions, nodes, 7, &cur, 2, &pick), PLACE_OK);
    assert_int_equal(pick, 4); /* full tie: lower index */
    nodes[6].primaries = 1;
    assert_int_equal(place_replacement(regions, nodes, 7, &cur, 2, &pick), PLACE_OK);
    assert_int_equal(pick, 6); /* same tenants, fewer primaries */
    nodes[6].tenants = 8;
    assert_int_equal(place_replacement(regions, nodes, 7, &cur, 2, &pick), PLACE_OK);
    assert_int_equal(pick, 4); /* fewer tenants first */
}

static void a_lost_primary_or_a_node_outside_the_tenant_is_refused(void **state)
{
    struct place_node nodes[7];
    struct place_decision cur;
    size_t pick = 99;
    (void)state;
    six_nodes(nodes, &cur);
    assert_int_equal(place_replacement(regions, nodes, 6, &cur, 0, &pick), PLACE_EINVAL);
    assert_int_equal(place_replacement(regions, nodes, 6, &cur, 3, &pick), PLACE_EINVAL);
    cur.replicas[1] = 6; /* past the node list */
    assert_int_equal(place_replacement(regions, nodes, 6, &cur, 1, &pick), PLACE_EINVAL);
    cur.replicas[1] = 2;
    nodes[0].region = 42;
    assert_int_equal(place_replacement(regions, nodes, 6, &cur, 1, &pick), PLACE_EUNKNOWN_REGION);
    assert_int_equal(pick, 99);
}

/* ---- moving a primary ---- */

#define MIN (60 * 1000ULL)

struct move_case {
    uint64_t writes[NREG];
    unsigned char room[NREG];
    struct place_move_facts f;
    struct place_move_policy p;
};

/* A tenant in CURRENT whose last move was long ago, every region with room,
 * no writes yet, the default policy. */
static void move_case_init(struct move_case *c, const char *current)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(place_regions_count(regions), NREG);
    memset(c->room, 1, sizeof(c->room));
    c->f.current = R(current);
    c->f.writes = c->writes;
    c->f.room = c->room;
    c->f.nregions = NREG;
    c->f.last_move_ms = 0;
    c->f.now_ms = 24 * 60 * MIN;
    place_move_policy_init(&c->p);
}

static struct place_move decide(struct move_case *c)
{
    struct place_move m;
    memset(&m, 0xff, sizeof(m));
    assert_int_equal(place_move_decide(regions, &c->f, &c->p, &m), PLACE_OK);
    return m;
}

static void the_default_policy_is_twenty_percent_a_hundred_writes_and_an_hour(void **state)
{
    struct place_move_policy p;
    (void)state;
    place_move_policy_init(&p);
    assert_int_equal(p.min_gain_permille, 200);
    assert_int_equal(p.min_writes, 100);
    assert_int_equal(p.min_dwell_ms, 3600000);
    assert_string_equal(place_move_reason_str(PLACE_MOVE_GO), "move");
    assert_string_equal(place_move_reason_str(PLACE_STAY_IDLE), "idle");
    assert_string_equal(place_move_reason_str(PLACE_STAY_BEST), "best");
    assert_string_equal(place_move_reason_str(PLACE_STAY_GAIN), "gain");
    assert_string_equal(place_move_reason_str(PLACE_STAY_DWELL), "dwell");
}

static void the_primary_moves_to_the_region_with_the_least_write_weighted_rtt(void **state)
{
    struct move_case c;
    (void)state;
    move_case_init(&c, "sin");
    c.writes[R("iad")] = 60;
    c.writes[R("ams")] = 40;
    struct place_move m = decide(&c);
    /* sin: 60*220 + 40*157 = 19480; iad: 40*80 = 3200 beats lhr 60*75 + 40*7 =
     * 4780 and ams 60*80 = 4800: not the region with most writes' neighbour */
    assert_int_equal(m.move, 1);
    assert_int_equal(m.reason, PLACE_MOVE_GO);
    assert_int_equal(m.region, R("iad"));
    assert_int_equal(m.best, R("iad"));
    assert_int_equal(m.writes, 100);
    assert_true(m.current_ms == 194.8);
    assert_true(m.best_ms == 32.0);
}

static void an_idle_tenant_never_moves(void **state)
{
    struct move_case c;
    (void)state;
    move_case_init(&c, "ams");
    struct place_move m = decide(&c); /* no writes at all */
    assert_int_equal(m.move, 0);
    assert_int_equal(m.reason, PLACE_STAY_IDLE);
    assert_int_equal(m.region, R("ams"));
    assert_int_equal(m.best, R("ams")); /* every cost is 0: the tie keeps ams */
    assert_true(m.current_ms == 0.0 && m.best_ms == 0.0);
    c.writes[R("syd")] = 99; /* every write from the far side of the world, one too few */
    m = decide(&c);
    assert_int_equal(m.move, 0);
    assert_int_equal(m.reason, PLACE_STAY_IDLE);
    assert_int_equal(m.region, R("ams"));
    assert_int_equal(m.best, R("syd"));
    assert_true(m.current_ms == 245.0 && m.best_ms == 0.0);
    c.writes[R("syd")] = 100;
    m = decide(&c);
    assert_int_equal(m.move, 1);
    assert_int_equal(m.region, R("syd"));
}

static void ties_keep_the_current_region_then_take_the_lower_index(void **state)
{
    struct move_case c;
    (void)state;
    move_case_init(&c, "ams");
    c.writes[R("ams")] = 500;
    c.writes[R("lhr")] = 500; /* ams and lhr both cost 3.5 ms per write */
    struct place_move m = decide(&c);
    assert_int_equal(m.move, 0);
    assert_int_equal(m.reason, PLACE_STAY_BEST);
    assert_int_equal(m.best, R("ams"));
    assert_true(m.current_ms == 3.5 && m.best_ms == 3.5);
    c.f.current = R("lhr");
    m = decide(&c);
    assert_int_equal(m.move, 0);
    assert_int_equal(m.reason, PLACE_STAY_BEST);
    assert_int_equal(m.best, R("lhr"));
    c.f.current = R("sin");
    m = decide(&c);
    assert_int_equal(m.move, 1);
    assert_int_equal(m.region, R("ams")); /* index 0 before lhr's 2 */
    assert_true(m.current_ms == 161.0 && m.best_ms == 3.5);
}

static void regions_without_room_are_never_chosen_but_the_current_one_stays_eligible(void **state)
{
    struct move_case c;
    (void)state;
    move_case_init(&c, "ams");
    c.writes[R("syd")] = 1000;
    c.room[R("syd")] = 0;
    struct place_move m = decide(&c);
    assert_int_equal(m.region, R("sin")); /* 92 ms from syd, the nearest with room */
    assert_true(m.best_ms == 92.0);
    c.room[R("sin")] = 0;
    m = decide(&c);
    assert_int_equal(m.region, R("nrt")); /* 108 ms */
    memset(c.room, 0, sizeof(c.room)); /* no room anywhere, not even in ams */
    m = decide(&c);
    assert_int_equal(m.move, 0);
    assert_int_equal(m.reason, PLACE_STAY_BEST);
    assert_int_equal(m.best, R("ams"));
    assert_true(m.current_ms == 245.0 && m.best_ms == 245.0);
}

static void regions_with_room_come_from_the_node_list(void **state)
{
    struct place_node nodes[4];
    unsigned char room[NREG];
    (void)state;
    three_regions(nodes);
    nodes[3] = (struct place_node){.name = "n4", .region = R("syd"), .healthy = 1, .capacity = 3, .tenants = 3};
    nodes[1].healthy = 0;
    assert_int_equal(place_regions_with_room(regions, nodes, 4, room, NREG), PLACE_OK);
    for (int r = 0; r < NREG; r++)
        assert_int_equal(room[r], r == R("ams") || r == R("sin"));
    assert_int_equal(place_regions_with_room(regions, nodes, 4, room, NREG - 1), PLACE_EINVAL);
}

/* Three regions 100 ms apart: with X writes from aaa and Y from bbb a primary
 * in aaa costs 100*Y and one in bbb 100*X, so the gain is 1 - X/Y exactly. */
static void a_gain_of_exactly_the_threshold_does_not_move(void **state)
{
    const char *doc = "{\"regions\":[{\"code\":\"aaa\"},{\"code\":\"bbb\"},{\"code\":\"ccc\"}],"
                      "\"rtt_ms\":{\"aaa\":{\"bbb\":100,\"ccc\":100},\"bbb\":{\"ccc\":100}}}";
    struct place_regions *r3;
    char msg[128];
    uint64_t writes[3] = {80, 100, 0};
    unsigned char room[3] = {1, 1, 1};
    struct place_move_facts f = {.current = 0, .writes = writes, .room = room, .nregions = 3, .now_ms = 1};
    struct place_move_policy p = {.min_gain_permille = 200, .min_writes = 1, .min_dwell_ms = 0};
    struct place_move m;
    (void)state;
    assert_int_equal(place_regions_parse(doc, strlen(doc), &r3, msg, sizeof(msg)), PLACE_OK);
    assert_int_equal(place_move_decide(r3, &f, &p, &m), PLACE_OK); /* gain 20 % exactly */
    assert_int_equal(m.move, 0);
    assert_int_equal(m.reason, PLACE_STAY_GAIN);
    assert_int_equal(m.best, 1);
    assert_true(m.current_ms == 10000.0 / 180 && m.best_ms == 8000.0 / 180);
    writes[0] = 79; /* 21 % */
    assert_int_equal(place_move_decide(r3, &f, &p, &m), PLACE_OK);
    assert_int_equal(m.move, 1);
    assert_int_equal(m.region, 1);
    writes[0] = 99; /* 1 % clears a threshold of 0: any strict gain moves */
    p.min_gain_permille = 0;
    assert_int_equal(place_move_decide(r3, &f, &p, &m), PLACE_OK);
    assert_int_equal(m.move, 1);
    writes[0] = 100; /* but a tie never moves */
    assert_int_equal(place_move_decide(r3, &f, &p, &m), PLACE_OK);
    assert_int_equal(m.reason, PLACE_STAY_BEST);
    writes[0] = 0; /* 1000 permille: nothing can gain more than everything */
    p.min_gain_permille = 1000;
    assert_int_equal(place_move_decide(r3, &f, &p, &m), PLACE_OK);
    assert_int_equal(m.reason, PLACE_STAY_GAIN);
    assert_true(m.best_ms == 0.0);
    place_regions_free(r3);
}

static void no_move_within_the_dwell_time_even_when_it_would_pay(void **state)
{
    struct move_case c;
    (void)state;
    move_case_init(&c, "ams");
    c.writes[R("nrt")] = 500;
    c.f.last_move_ms = 1000;
    c.f.now_ms = 1000 + c.p.min_dwell_ms - 1;
    struct place_move m = decide(&c);
    assert_int_equal(m.move, 0);
    assert_int_equal(m.reason, PLACE_STAY_DWELL);
    assert_int_equal(m.region, R("ams"));
    assert_int_equal(m.best, R("nrt"));
    c.f.now_ms = 1000 + c.p.min_dwell_ms;
    m = decide(&c);
    assert_int_equal(m.move, 1);
    assert_int_equal(m.region, R("nrt"));
    c.f.now_ms = 999; /* a clock that stepped back */
    m = decide(&c);
    assert_int_equal(m.reason, PLACE_STAY_DWELL);
}

/* Drives 15-minute windows for 8 hours, all writes from iad in odd windows
 * and from sin in even ones, applying every move: the primary moves at most
 * once per dwell time, at exactly the predicted times. */
static void alternating_traffic_moves_at_most_once_per_dwell_time(void **state)
{
    struct move_case c;
    uint64_t moves_at[64];
    size_t nmoves = 0;
    (void)state;
    move_case_init(&c, "iad");
    for (uint64_t w = 1; w <= 32; w++) {
        memset(c.writes, 0, sizeof(c.writes));
        c.writes[(w % 2) ? R("iad") : R("sin")] = 200;
        c.f.now_ms = w * 15 * MIN;
        struct place_move m = decide(&c);
        if (m.move) {
            moves_at[nmoves++] = w * 15;
            c.f.current = m.region;
            c.f.last_move_ms = c.f.now_ms;
        } else {
            assert_int_not_equal(m.reason, PLACE_STAY_GAIN); /* 100 % gain each time */
        }
    }
    /* sin wins at 30 min but the dwell holds until 60; then iad wins at 75,
     * 105 (dwell) and 135; and so on every 75 minutes */
    const uint64_t want[] = {60, 135, 210, 285, 360, 435};
    assert_int_equal(nmoves, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < nmoves; i++)
        assert_int_equal(moves_at[i], want[i]);
}

/* Traffic that shifts a little either way (45/55, then 55/45 between ams and
 * sin) never tips the tenant, even without any dwell time: moving back asks
 * for the same 20 % gain the other way. A 40/60 split does. */
static void traffic_near_the_middle_does_not_flap_without_a_dwell_time(void **state)
{
    struct move_case c;
    (void)state;
    move_case_init(&c, "ams");
    c.p.min_dwell_ms = 0;
    for (int w = 0; w < 20; w++) {
        c.writes[R("ams")] = (w % 2) ? 55 : 45;
        c.writes[R("sin")] = (w % 2) ? 45 : 55;
        c.f.now_ms = (uint64_t)w * 15 * MIN;
        struct place_move m = decide(&c);
        assert_int_equal(m.move, 0);
        assert_int_equal(m.region, R("ams"));
        /* 45/55: sin gains 1570/8635 = 18 %; 55/45: ams is already best */
        assert_int_equal(m.reason, (w % 2) ? PLACE_STAY_BEST : PLACE_STAY_GAIN);
    }
    c.writes[R("ams")] = 40;
    c.writes[R("sin")] = 60;
    struct place_move m = decide(&c);
    assert_int_equal(m.move, 1); /* (60 - 40) / 60 = 33 % */
    assert_int_equal(m.region, R("sin"));
}

static void bad_move_arguments_are_rejected(void **state)
{
    struct move_case c;
    struct place_move m;
    (void)state;
    move_case_init(&c, "ams");
    c.f.nregions = NREG - 1;
    assert_int_equal(place_move_decide(regions, &c.f, &c.p, &m), PLACE_EINVAL);
    c.f.nregions = NREG;
    c.f.current = NREG;
    assert_int_equal(place_move_decide(regions, &c.f, &c.p, &m), PLACE_EUNKNOWN_REGION);
    c.f.current = -1;
    assert_int_equal(place_move_decide(regions, &c.f, &c.p, &m), PLACE_EUNKNOWN_REGION);
    c.f.current = 0;
    c.p.min_gain_permille = 1001;
    assert_int_equal(place_move_decide(regions, &c.f, &c.p, &m), PLACE_EINVAL);
    c.p.min_gain_permille = 200;
    c.writes[1] = PLACE_MOVE_WRITES_MAX;
    assert_int_equal(place_move_decide(regions, &c.f, &c.p, &m), PLACE_OK);
    c.writes[2] = 1;
    assert_int_equal(place_move_decide(regions, &c.f, &c.p, &m), PLACE_EINVAL);
    c.writes[1] = UINT64_MAX;
    assert_int_equal(place_move_decide(regions, &c.f, &c.p, &m), PLACE_EINVAL);
    c.writes[1] = 0;
    c.f.room = NULL;
    assert_int_equal(place_move_decide(regions, &c.f, &c.p, &m), PLACE_EINVAL);
    assert_int_equal(place_move_decide(regions, NULL, &c.p, &m), PLACE_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(the_shipped_regions_file_has_eight_or_more_regions_and_a_symmetric_matrix),
        cmocka_unit_test(bad_regions_documents_are_rejected_with_a_reason),
        cmocka_unit_test(the_primary_goes_to_the_asked_region_and_replicas_nearest_first),
        cmocka_unit_test(without_a_region_the_primary_goes_near_the_caller),
        cmocka_unit_test(without_any_hint_the_least_loaded_node_wins_deterministically),
        cmocka_unit_test(full_or_unhealthy_nodes_are_skipped),
        cmocka_unit_test(replicas_use_one_node_each_and_share_regions_only_when_needed),
        cmocka_unit_test(unknown_regions_and_no_nodes_are_errors),
        cmocka_unit_test(the_index_decides_exactly_as_place_new_tenant),
        cmocka_unit_test(the_index_follows_updates_and_fills_nodes_up),
        cmocka_unit_test(a_lost_replica_is_replaced_in_the_nearest_region_the_tenant_does_not_use),
        cmocka_unit_test(a_replacement_never_goes_to_a_node_holding_the_tenant_or_the_lost_one),
        cmocka_unit_test(replacements_break_ties_by_load_then_index),
        cmocka_unit_test(a_lost_primary_or_a_node_outside_the_tenant_is_refused),
        cmocka_unit_test(the_default_policy_is_twenty_percent_a_hundred_writes_and_an_hour),
        cmocka_unit_test(the_primary_moves_to_the_region_with_the_least_write_weighted_rtt),
        cmocka_unit_test(an_idle_tenant_never_moves),
        cmocka_unit_test(ties_keep_the_current_region_then_take_the_lower_index),
        cmocka_unit_test(regions_without_room_are_never_chosen_but_the_current_one_stays_eligible),
        cmocka_unit_test(regions_with_room_come_from_the_node_list),
        cmocka_unit_test(a_gain_of_exactly_the_threshold_does_not_move),
        cmocka_unit_test(no_move_within_the_dwell_time_even_when_it_would_pay),
        cmocka_unit_test(alternating_traffic_moves_at_most_once_per_dwell_time),
        cmocka_unit_test(traffic_near_the_middle_does_not_flap_without_a_dwell_time),
        cmocka_unit_test(bad_move_arguments_are_rejected),
    };
    return cmocka_run_group_tests_name("placement", tests, setup, teardown);
}
