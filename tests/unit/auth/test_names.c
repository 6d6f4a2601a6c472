/* Unit tests for api/names.c: every bad form of CONTRACT.md's names is
 * rejected, good ones pass, and hex64 positions round-trip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "api/names.h"

static void tenant_ids_that_are_dns_labels_are_accepted(void **state)
{
    static const char *const good[] = {"a", "1", "acme", "a-b", "a--b", "0abc9", "tenant-42", NULL};
    char max[64];
    (void)state;
    for (const char *const *g = good; *g; g++)
        assert_true(api_name_valid(*g, strlen(*g)));
    memset(max, 'x', 63);
    max[63] = '\0';
    assert_true(api_name_valid(max, 63));
}

static void every_bad_tenant_id_form_is_rejected_with_a_message(void **state)
{
    static const char *const bad[] = {"", "../x", "..", ".", "a.b", "a/b", "A", "Acme", "-a", "a-", "-", "a b",
                                      " a", "a ", "a_b", "a%2eb", "ünï", "a\xff", "tenant!", "a\\b", NULL};
    char big[301];
    struct api_err err;
    (void)state;
    for (const char *const *b = bad; *b; b++) {
        assert_false(api_name_valid(*b, strlen(*b)));
        assert_int_equal(api_tenant_id_check(*b, strlen(*b), &err), API_EBADTENANT);
        assert_int_equal(err.code, API_EBADTENANT);
        assert_true(strlen(err.msg) > 10);
    }
    memset(big, 'a', 300);
    big[300] = '\0';
    assert_int_equal(api_tenant_id_check(big, 64, &err), API_EBADTENANT);
    assert_int_equal(api_tenant_id_check(big, 300, &err), API_EBADTENANT);
    assert_non_null(strstr(err.msg, "300 bytes"));
    /* an embedded NUL is part of the input, not its end */
    assert_false(api_name_valid("ab\0cd", 5));
    assert_int_equal(api_tenant_id_check(NULL, 0, &err), API_EBADTENANT);
}

static void messages_show_hostile_bytes_escaped_and_shortened(void **state)
{
    struct api_err err;
    char long_bad[200];
    (void)state;
    assert_int_equal(api_tenant_id_check("a\nb", 3, &err), API_EBADTENANT);
    assert_non_null(strstr(err.msg, "a\\x0ab"));
    memset(long_bad, 'Z', sizeof(long_bad));
    api_tenant_id_check(long_bad, sizeof(long_bad), &err);
    assert_non_null(strstr(err.msg, "..."));
    assert_null(strstr(err.msg, "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ"));
}

static void region_codes_are_three_letters_and_an_optional_digit(void **state)
{
    static const char *const good[] = {"ams", "iad", "sin", "iad1", NULL};
    static const char *const bad[] = {"", "am", "amsx", "ams12", "AMS", "am1", "1ams", "ams-", "äms", NULL};
    struct api_err err;
    (void)state;
    for (const char *const *g = good; *g; g++)
        assert_int_equal(api_region_check(*g, strlen(*g), &err), API_OK);
    for (const char *const *b = bad; *b; b++)
        assert_int_equal(api_region_check(*b, strlen(*b), &err), API_EINVAL);
}

static void node_names_follow_the_tenant_id_rules(void **state)
{
    struct api_err err;
    (void)state;
    assert_int_equal(api_node_name_check("n1", 2, &err), API_OK);
    assert_int_equal(api_node_name_check("N1", 2, &err), API_EINVAL);
    assert_int_equal(api_node_name_check("../n", 4, &err), API_EINVAL);
}

static void hex64_positions_round_trip(void **state)
{
    char buf[17];
    uint64_t v;
    (void)state;
    api_hex64_format(42, buf);
    assert_string_equal(buf, "000000000000002a");
    assert_int_equal(api_hex64_parse(buf, 16, &v), 0);
    assert_int_equal(v, 42);
    api_hex64_format(UINT64_MAX, buf);
    assert_string_equal(buf, "ffffffffffffffff");
    assert_int_equal(api_hex64_parse("8B73BC1D07D84988", 16, &v), 0);
    assert_true(v == 0x8b73bc1d07d84988ULL);
    assert_int_equal(api_hex64_parse("2a", 2, &v), -1);
    assert_int_equal(api_hex64_parse("000000000000002g", 16, &v), -1);
    assert_int_equal(api_hex64_parse("0000000000000002a", 17, &v), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tenant_ids_that_are_dns_labels_are_accepted),
        cmocka_unit_test(every_bad_tenant_id_form_is_rejected_with_a_message),
        cmocka_unit_test(messages_show_hostile_bytes_escaped_and_shortened),
        cmocka_unit_test(region_codes_are_three_letters_and_an_optional_digit),
        cmocka_unit_test(node_names_follow_the_tenant_id_rules),
        cmocka_unit_test(hex64_positions_round_trip),
    };
    return cmocka_run_group_tests_name("names", tests, NULL, NULL);
}
