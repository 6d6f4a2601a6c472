/* Unit tests for placement/: the regions document and new-tenant placement. */
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
    };
    return cmocka_run_group_tests_name("placement", tests, setup, teardown);
}
