/* Unit tests for the router's pure parts: the fly-replay grammar (Fly.io's),
 * the headers a replay adds, and --app specs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "orchestrator/replay.h"
#include "orchestrator/router.h"

static int parse(const char *v, struct orch_replay *r)
{
    struct api_err err;
    return orch_replay_parse(v, r, &err);
}

static void every_field_of_the_grammar_is_understood(void **state)
{
    struct orch_replay r;
    (void)state;
    assert_int_equal(parse("instance=n2", &r), API_OK);
    assert_string_equal(r.instance, "n2");
    assert_int_equal(r.fallback, ORCH_FALLBACK_NONE);
    assert_int_equal(r.timeout_ms, 0);
    assert_int_equal(parse("region=sin", &r), API_OK);
    assert_int_equal(r.nregions, 1);
    assert_string_equal(r.regions[0], "sin");
    assert_false(r.any_region);
    assert_int_equal(parse("elsewhere=true", &r), API_OK);
    assert_true(r.elsewhere);
    assert_int_equal(parse(" region=ams ; state=abc=1;timeout=500ms;fallback=prefer_self ", &r), API_OK);
    assert_string_equal(r.regions[0], "ams");
    assert_string_equal(r.state, "abc=1");
    assert_int_equal(r.timeout_ms, 500);
    assert_int_equal(r.fallback, ORCH_FALLBACK_PREFER_SELF);
    assert_int_equal(parse("prefer_instance=n3;fallback=force_self;timeout=2s", &r), API_OK);
    assert_string_equal(r.prefer_instance, "n3");
    assert_int_equal(r.fallback, ORCH_FALLBACK_FORCE_SELF);
    assert_int_equal(r.timeout_ms, 2000);
}

static void quoted_region_lists_keep_their_order_and_any(void **state)
{
    struct orch_replay r;
    (void)state;
    assert_int_equal(parse("region=\"sin,iad,any\"", &r), API_OK);
    assert_int_equal(r.nregions, 2);
    assert_string_equal(r.regions[0], "sin");
    assert_string_equal(r.regions[1], "iad");
    assert_true(r.any_region);
    assert_int_equal(parse("region=\" ams , fra \";state=x", &r), API_OK);
    assert_int_equal(r.nregions, 2);
    assert_string_equal(r.regions[1], "fra");
    assert_int_equal(parse("region=any", &r), API_OK);
    assert_int_equal(r.nregions, 0);
    assert_true(r.any_region);
    /* a bare comma list, as some apps write it */
    assert_int_equal(parse("region=lhr,ams", &r), API_OK);
    assert_int_equal(r.nregions, 2);
}

static void quoted_state_may_hold_semicolons(void **state)
{
    struct orch_replay r;
    (void)state;
    assert_int_equal(parse("instance=n1;state=\"a;b=c\";timeout=1.5s", &r), API_OK);
    assert_string_equal(r.state, "a;b=c");
    assert_int_equal(r.timeout_ms, 1500);
}

static void keys_are_case_insensitive_and_unknown_keys_ignored(void **state)
{
    struct orch_replay r;
    (void)state;
    assert_int_equal(parse("Instance=148e453b;future=thing;app=other", &r), API_OK);
    assert_string_equal(r.instance, "148e453b");
    assert_int_equal(parse("ELSEWHERE=TRUE", &r), API_OK);
    assert_true(r.elsewhere);
}

static void durations_are_clamped_and_tiny_ones_kept(void **state)
{
    struct orch_replay r;
    long ms;
    (void)state;
    assert_int_equal(parse("instance=n1;timeout=10m", &r), API_OK);
    assert_int_equal(r.timeout_ms, ORCH_REPLAY_MAX_TIMEOUT_MS);
    assert_int_equal(parse("instance=n1;timeout=0.2ms", &r), API_OK);
    assert_int_equal(r.timeout_ms, 1);
    assert_int_equal(parse("instance=n1;timeout=3", &r), API_OK);
    assert_int_equal(r.timeout_ms, 3000);
    assert_int_equal(orch_duration_ms("250ms", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(orch_duration_ms("1m", &ms), 0);
    assert_int_equal(ms, 60000);
    assert_int_equal(orch_duration_ms("soon", &ms), -1);
    assert_int_equal(orch_duration_ms(NULL, &ms), -1);
}

static void malformed_values_are_rejected(void **state)
{
    static const char *const bad[] = {"",
                                      ";",
                                      "  ;  ; ",
                                      "instance",
                                      "region=",
                                      "region=AMS",
                                      "region=\"sin,xx\"",
                                      "region=\"sin",
                                      "region=\"a,b,c,d,e,f,g,h,i\"",
                                      "region=\"ams,iad,sin,fra,lhr,ord,sjc,gru,nrt\"",
                                      "fallback=maybe;instance=n1",
                                      "instance=n1;timeout=-1s",
                                      "instance=n1;timeout=fast",
                                      "instance=n1;timeout=5h",
                                      "state=only",
                                      "elsewhere=false",
                                      "elsewhere=yes",
                                      "instance=",
                                      "instance=a b",
                                      "instance=../x",
                                      "instance=n1;state=\"a\r\nx-evil: 1\"",
                                      "timeout=1s;fallback=force_self",
                                      NULL};
    struct orch_replay r;
    struct api_err err;
    (void)state;
    for (const char *const *b = bad; *b; b++)
        if (orch_replay_parse(*b, &r, &err) == API_OK)
            fail_msg("'%s' should be rejected", *b);
        else
            assert_int_equal(err.code, API_EINVAL);
    assert_int_equal(orch_replay_parse(NULL, &r, &err), API_EINVAL);
}

static void a_failed_parse_leaves_the_output_untouched(void **state)
{
    struct orch_replay r;
    (void)state;
    assert_int_equal(parse("instance=keep", &r), API_OK);
    assert_int_not_equal(parse("instance=n2;timeout=never", &r), API_OK);
    assert_string_equal(r.instance, "keep");
}

static void replay_src_names_origin_time_and_state(void **state)
{
    char out[128];
    (void)state;
    assert_int_equal(orch_replay_src_format(out, sizeof(out), "n1", "ams", 1700000000000001, "s1"),
                     (int)strlen("instance=n1;region=ams;t=1700000000000001;state=s1"));
    assert_string_equal(out, "instance=n1;region=ams;t=1700000000000001;state=s1");
    orch_replay_src_format(out, sizeof(out), "n1", "", 5, "");
    assert_string_equal(out, "instance=n1;t=5");
    assert_int_equal(orch_replay_src_format(out, 8, "n1", "ams", 5, ""), -1);
}

static void replay_failed_says_what_was_asked_and_why(void **state)
{
    struct orch_replay r;
    char out[128];
    (void)state;
    assert_int_equal(parse("instance=ghost;fallback=force_self", &r), API_OK);
    assert_true(orch_replay_failed_format(out, sizeof(out), &r, "no_candidate") > 0);
    assert_string_equal(out, "instance=ghost;reason=no_candidate");
    assert_int_equal(parse("region=\"syd,any\";elsewhere=true;fallback=prefer_self", &r), API_OK);
    orch_replay_failed_format(out, sizeof(out), &r, "timeout");
    assert_string_equal(out, "region=\"syd,any\";elsewhere=true;reason=timeout");
    assert_int_equal(orch_replay_failed_format(out, 10, &r, "timeout"), -1);
}

static void app_specs_are_parsed(void **state)
{
    struct orch_app a;
    struct api_err err;
    (void)state;
    assert_int_equal(orch_app_parse("shop=ams:a1:http://127.0.0.1:9001/,sin:s1:http://127.0.0.1:9002", &a, &err),
                     API_OK);
    assert_string_equal(a.name, "shop");
    assert_int_equal(a.n, 2);
    assert_string_equal(a.inst[0].region, "ams");
    assert_string_equal(a.inst[0].id, "a1");
    assert_string_equal(a.inst[0].url, "http://127.0.0.1:9001");
    assert_string_equal(a.inst[1].url, "http://127.0.0.1:9002");
    static const char *const bad[] = {"shop",
                                      "=ams:a1:http://x:1",
                                      "Shop=ams:a1:http://x:1",
                                      "shop=",
                                      "shop=ams:a1",
                                      "shop=AMS:a1:http://x:1",
                                      "shop=ams:a 1:http://x:1",
                                      "shop=ams:a1:ftp://x:1",
                                      "shop=ams:a1:http://x:1,ams:a1:http://x:2",
                                      NULL};
    for (const char *const *b = bad; *b; b++)
        if (orch_app_parse(*b, &a, &err) == API_OK)
            fail_msg("'%s' should be rejected", *b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_field_of_the_grammar_is_understood),
        cmocka_unit_test(quoted_region_lists_keep_their_order_and_any),
        cmocka_unit_test(quoted_state_may_hold_semicolons),
        cmocka_unit_test(keys_are_case_insensitive_and_unknown_keys_ignored),
        cmocka_unit_test(durations_are_clamped_and_tiny_ones_kept),
        cmocka_unit_test(malformed_values_are_rejected),
        cmocka_unit_test(a_failed_parse_leaves_the_output_untouched),
        cmocka_unit_test(replay_src_names_origin_time_and_state),
        cmocka_unit_test(replay_failed_says_what_was_asked_and_why),
        cmocka_unit_test(app_specs_are_parsed),
    };
    return cmocka_run_group_tests_name("router", tests, NULL, NULL);
}
