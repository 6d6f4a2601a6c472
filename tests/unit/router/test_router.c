/* Unit tests for the router's fly-replay parser (Fly.io's grammar). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "orchestrator/router.h"

static void every_field_of_the_grammar_is_understood(void **state)
{
    struct orch_replay r;
    (void)state;
    assert_int_equal(orch_replay_parse("instance=n2", &r), 0);
    assert_string_equal(r.instance, "n2");
    assert_int_equal(orch_replay_parse("region=sin", &r), 0);
    assert_int_equal(r.nregions, 1);
    assert_string_equal(r.regions[0], "sin");
    assert_int_equal(orch_replay_parse("region=\"sin,iad,any\"", &r), 0);
    assert_int_equal(r.nregions, 2);
    assert_string_equal(r.regions[1], "iad");
    assert_true(r.any_region);
    assert_int_equal(orch_replay_parse("elsewhere=true", &r), 0);
    assert_true(r.elsewhere);
    assert_int_equal(orch_replay_parse(" region=ams ; state=abc=1;timeout=500ms;fallback=prefer_self ", &r), 0);
    assert_string_equal(r.regions[0], "ams");
    assert_string_equal(r.state, "abc=1");
    assert_int_equal(r.timeout_ms, 500);
    assert_int_equal(r.fallback, 2);
    assert_int_equal(orch_replay_parse("prefer_instance=n3;fallback=force_self;timeout=2s", &r), 0);
    assert_string_equal(r.prefer_instance, "n3");
    assert_int_equal(r.fallback, 1);
    assert_int_equal(r.timeout_ms, 2000);
    /* unknown fields are ignored, as Fly.io's proxy does */
    assert_int_equal(orch_replay_parse("instance=n1;future=thing", &r), 0);
}

static void malformed_values_are_rejected(void **state)
{
    static const char *const bad[] = {"", ";", "instance", "region=", "region=AMS", "region=\"sin,xx\"",
                                      "region=\"sin", "fallback=maybe", "timeout=-1s", "timeout=fast",
                                      "state=only", "elsewhere=false", NULL};
    struct orch_replay r;
    (void)state;
    for (const char *const *b = bad; *b; b++)
        if (orch_replay_parse(*b, &r) == 0)
            fail_msg("'%s' should be rejected", *b);
    assert_int_equal(orch_replay_parse(NULL, &r), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_field_of_the_grammar_is_understood),
        cmocka_unit_test(malformed_values_are_rejected),
    };
    return cmocka_run_group_tests_name("router", tests, NULL, NULL);
}
