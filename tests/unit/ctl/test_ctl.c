/* Unit tests for shoalctl's pure parts: argument typing, result tables,
 * error lines, and usage errors (exit status 2). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "orchestrator/ctl.h"

static char *print_to_string(const char *result_json)
{
    json_t *r = json_loads(result_json, 0, NULL);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(r);
    ctl_print_result(f, r);
    fclose(f);
    json_decref(r);
    return buf;
}

static void select_40_plus_2_prints_a_header_and_42(void **state)
{
    (void)state;
    char *out = print_to_string("{\"cols\":[{\"name\":\"40+2\",\"decltype\":null}],"
                                "\"rows\":[[{\"type\":\"integer\",\"value\":\"42\"}]],\"affected_row_count\":0}");
    assert_string_equal(out, "40+2\n42\n(1 row)\n");
    free(out);
}

static void values_of_every_type_print_readably_and_align(void **state)
{
    (void)state;
    char *out = print_to_string(
        "{\"cols\":[{\"name\":\"a\"},{\"name\":\"bb\"},{\"name\":\"c\"},{\"name\":\"d\"}],"
        "\"rows\":[[{\"type\":\"null\"},{\"type\":\"float\",\"value\":1.5},{\"type\":\"blob\",\"base64\":\"AAH/\"},"
        "{\"type\":\"text\",\"value\":\"h\u00e9\"}],"
        "[{\"type\":\"integer\",\"value\":\"-9223372036854775808\"},{\"type\":\"float\",\"value\":0.1},"
        "{\"type\":\"blob\",\"base64\":\"\"},{\"type\":\"text\",\"value\":\"\"}]],\"affected_row_count\":0}");
    assert_string_equal(out, "a                     bb   c          d\n"
                             "NULL                  1.5  x'0001ff'  h\xc3\xa9\n"
                             "-9223372036854775808  0.1  x''        \n"
                             "(2 rows)\n");
    free(out);
}

static void writes_print_the_affected_row_count(void **state)
{
    (void)state;
    char *out = print_to_string("{\"cols\":[],\"rows\":[],\"affected_row_count\":3}");
    assert_string_equal(out, "(3 rows affected)\n");
    free(out);
}

/* A table-driven case: what goes in, and the JSON that should come out. */
struct json_case {
    const char *input, *json;
};

/* V (taken), made from INPUT, serializes (keys sorted) as WANT. */
static void expect_json(const char *input, json_t *v, const char *want)
{
    assert_non_null(v);
    char *s = json_dumps(v, JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (strcmp(s, want) != 0)
        fail_msg("'%s' became %s, wanted %s", input, s, want);
    free(s);
    json_decref(v);
}

static void command_line_arguments_get_sql_types(void **state)
{
    const struct json_case cases[] = {
        {"42", "{\"type\": \"integer\", \"value\": \"42\"}"},
        {"-7", "{\"type\": \"integer\", \"value\": \"-7\"}"},
        {"1.5", "{\"type\": \"float\", \"value\": 1.5}"},
        {"NULL", "{\"type\": \"null\"}"},
        {"hello", "{\"type\": \"text\", \"value\": \"hello\"}"},
        {"007", "{\"type\": \"text\", \"value\": \"007\"}"},
        {"+1", "{\"type\": \"text\", \"value\": \"+1\"}"},
        {"1e3", "{\"type\": \"float\", \"value\": 1000.0}"},
        {"-0.25", "{\"type\": \"float\", \"value\": -0.25}"},
        {"nan", "{\"type\": \"text\", \"value\": \"nan\"}"},
        {"0x10", "{\"type\": \"text\", \"value\": \"0x10\"}"},
        {"", "{\"type\": \"text\", \"value\": \"\"}"},
        {"99999999999999999999", "{\"type\": \"text\", \"value\": \"99999999999999999999\"}"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_json(cases[i].input, ctl_sql_arg(cases[i].input), cases[i].json);
}

/* shoalctl sql runs several statements: split where SQLite would end one,
 * never inside a string, a comment or a trigger's body. */
static void sql_splits_into_statements_where_sqlite_ends_them(void **state)
{
    const struct json_case cases[] = {
        {"select 40+2", "[\"select 40+2\"]"},
        {"  select 1;  ", "[\"select 1;\"]"},
        {"create table t(a); insert into t values (1);select a from t",
         "[\"create table t(a);\", \"insert into t values (1);\", \"select a from t\"]"},
        {"select 'a;b'; select \"c;d\"", "[\"select 'a;b';\", \"select \\\"c;d\\\"\"]"},
        {"select 1; -- done; really\n", "[\"select 1;\"]"},
        {"/* x; */ select 1; /* trailing; */ ;;", "[\"/* x; */ select 1;\"]"},
        {"create trigger g after insert on t begin delete from t; insert into u values (1); end; select 2",
         "[\"create trigger g after insert on t begin delete from t; insert into u values (1); end;\", \"select 2\"]"},
        {"select 'open", "[\"select 'open\"]"},
        {"", "[]"},
        {" ; -- nothing\n ;", "[]"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_json(cases[i].input, ctl_split_sql(cases[i].input), cases[i].json);
    assert_null(ctl_split_sql("select '\xff'")); /* not UTF-8 */
}

static void api_errors_become_one_readable_line(void **state)
{
    char buf[256];
    (void)state;
    ctl_format_api_error(buf, sizeof(buf), 404,
                         "{\"error\":{\"code\":\"tenant_not_found\",\"message\":\"tenant 'x' does not exist\"}}");
    assert_string_equal(buf, "error: tenant 'x' does not exist (tenant_not_found, HTTP 404)");
    ctl_format_api_error(buf, sizeof(buf), 502, "oops");
    assert_string_equal(buf, "error: HTTP 502: oops");
    ctl_format_api_error(buf, sizeof(buf), 500, "");
    assert_string_equal(buf, "error: HTTP 500: (empty body)");
}

static void bad_usage_exits_2_and_help_exits_0(void **state)
{
    struct {
        int want;
        char *argv[6];
    } cases[] = {
        {2, {"shoalctl", NULL}},
        {2, {"shoalctl", "frobnicate", NULL}},
        {2, {"shoalctl", "tenants", NULL}},
        {2, {"shoalctl", "tenants", "create", "../x", NULL}},
        {2, {"shoalctl", "tenants", "delete", "acme", NULL}},
        {2, {"shoalctl", "tenants", "create", "acme", "--bogus", NULL}},
        {2, {"shoalctl", "handover", "acme", NULL}},
        {2, {"shoalctl", "--url", NULL}},
        {0, {"shoalctl", "--help", NULL}},
        {0, {"shoalctl", "--version", NULL}},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int argc = 0;
        while (cases[i].argv[argc] != NULL)
            argc++;
        FILE *saved = stdout;
        stdout = fopen("/dev/null", "w");
        int rc = ctl_main(argc, cases[i].argv);
        fclose(stdout);
        stdout = saved;
        if (rc != cases[i].want)
            fail_msg("case %zu (%s %s): exit %d, wanted %d", i, cases[i].argv[1] ? cases[i].argv[1] : "",
                     cases[i].argv[1] && cases[i].argv[2] ? cases[i].argv[2] : "", rc, cases[i].want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(select_40_plus_2_prints_a_header_and_42),
        cmocka_unit_test(values_of_every_type_print_readably_and_align),
        cmocka_unit_test(writes_print_the_affected_row_count),
        cmocka_unit_test(command_line_arguments_get_sql_types),
        cmocka_unit_test(sql_splits_into_statements_where_sqlite_ends_them),
        cmocka_unit_test(api_errors_become_one_readable_line),
        cmocka_unit_test(bad_usage_exits_2_and_help_exits_0),
    };
    return cmocka_run_group_tests_name("ctl", tests, NULL, NULL);
}
