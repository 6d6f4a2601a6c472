/* Unit tests for api/sqlclass: the lexical read-only classifier a router uses
 * without a database, and the pipeline walk shared with agents. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "api/sqlclass.h"

static void statements_that_only_read_are_recognised(void **state)
{
    static const char *const reads[] = {
        "select 1",
        "  SELECT * FROM t WHERE x = 'insert into t values (1)'",
        "-- a comment\nselect 2",
        "/* delete */ select 3; select 4;",
        "values (1), (2)",
        "with a as (select 1) select * from a",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<5) SELECT x FROM c",
        "with \"insert\" as (select 1) select * from \"insert\"",
        "explain query plan select 1",
        "begin; select 1; commit",
        "BEGIN DEFERRED TRANSACTION; SELECT 1; END",
        "savepoint a; select 1; release a",
        "rollback",
        "pragma user_version",
        "PRAGMA main.user_version",
        "pragma table_info(t)",
        "pragma integrity_check",
        "(select 1)",
        "",
        ";;",
        "select [weird;name] from t",
        "select 'it''s; delete from t'",
        NULL};
    (void)state;
    for (const char *const *s = reads; *s; s++)
        if (!api_sql_reads_only(*s))
            fail_msg("'%s' should count as read-only", *s);
}

static void anything_that_may_write_is_not_a_read(void **state)
{
    static const char *const writes[] = {
        "insert into t values (1)",
        "select 1; insert into t values (1)",
        "UPDATE t SET x = 1",
        "delete from t",
        "replace into t values (1)",
        "create table t(x)",
        "drop table t",
        "alter table t add column y",
        "vacuum",
        "reindex",
        "analyze",
        "attach 'x' as y",
        "with a as (select 1) insert into t select * from a",
        "with a as (select 1) delete from t where x in (select * from a)",
        "begin immediate",
        "BEGIN EXCLUSIVE TRANSACTION",
        "pragma user_version = 3",
        "pragma user_version(3)",
        "pragma optimize",
        "pragma wal_checkpoint",
        "select 'unterminated",
        "select 1 /* unterminated",
        "create temp table x(a)",
        NULL};
    (void)state;
    for (const char *const *s = writes; *s; s++)
        if (api_sql_reads_only(*s))
            fail_msg("'%s' should not count as read-only", *s);
    assert_false(api_sql_reads_only(NULL));
}

/* Each thread remembers its last answers by the whole text: asked again, in
 * any order, with texts one byte apart and past the remembered length, it
 * answers as the first time. */
static void remembered_answers_are_the_lexers(void **state)
{
    char texts[400][200];
    int first[400];
    size_t n = 0;
    (void)state;
    for (int i = 0; i < 100; i++) {
        snprintf(texts[n++], sizeof(texts[0]), "select %d", i);
        snprintf(texts[n++], sizeof(texts[0]), "delete %d", i); /* same length, one verb apart */
        snprintf(texts[n++], sizeof(texts[0]), "select * from t%d where x = ?; delete from t", i);
        /* longer than a memo's text: lexed every time */
        snprintf(texts[n++], sizeof(texts[0]), "%s -- %0140d", i % 2 ? "select 1" : "insert into t values (1)", i);
    }
    for (size_t i = 0; i < n; i++)
        first[i] = api_sql_reads_only(texts[i]);
    for (size_t round = 0; round < 3; round++)
        for (size_t k = 0; k < n; k++) {
            size_t i = (k * 7 + round * 13) % n;
            if (api_sql_reads_only(texts[i]) != first[i])
                fail_msg("'%s' answered %d, then %d", texts[i], first[i], !first[i]);
        }
    assert_true(first[0]);
    assert_false(first[1]);
    assert_false(first[2]);
    assert_false(first[4 * 0 + 3]);
    assert_true(first[4 * 1 + 3]);
}

static int all_read(void *ud, const char *sql)
{
    (void)ud;
    (void)sql;
    return 1;
}

/* api_pipeline_reads_only on the pipeline in TEXT. */
static int walk_reads(const char *text)
{
    struct api_jdoc *doc;
    assert_int_equal(api_jdoc_parse(text, strlen(text), &doc, NULL, 0), 0);
    int ro = api_pipeline_reads_only(api_jdoc_root(doc), all_read, NULL);
    api_jdoc_free(doc);
    return ro;
}

static void the_pipeline_walk_refuses_stream_bound_requests(void **state)
{
    (void)state;
    assert_true(walk_reads("[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\"}},{\"type\":\"get_autocommit\"},"
                           "{\"type\":\"batch\",\"batch\":{\"steps\":[{\"stmt\":{\"sql\":\"select 2\"}}]}},"
                           "{\"type\":\"sequence\",\"sql\":\"select 3\"},{\"type\":\"close\"}]"));
    assert_false(walk_reads("[{\"type\":\"execute\",\"stmt\":{\"sql_id\":1}}]"));
    assert_false(walk_reads("[{\"type\":\"store_sql\",\"sql_id\":1,\"sql\":\"select 1\"}]"));
    assert_false(walk_reads("[{\"type\":\"batch\",\"batch\":{\"steps\":[{\"stmt\":{\"sql_id\":2}}]}}]"));
    assert_false(walk_reads("{\"requests\":[]}")); /* not an array */
    assert_false(api_pipeline_reads_only(NULL, all_read, NULL));
}

static void inspect_finds_baton_node_close_and_reads(void **state)
{
    struct api_pipeline_info in;
    (void)state;
    static const char read[] = "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\"}},{\"type\":\"close\"}]}";
    api_pipeline_inspect(read, strlen(read), &in);
    assert_true(in.parsed);
    assert_true(in.reads_only);
    assert_true(in.ends_with_close);
    assert_false(in.has_baton);
    static const char write[] = "{\"baton\":\"n2.abc\",\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into t values(1)\"}}]}";
    api_pipeline_inspect(write, strlen(write), &in);
    assert_false(in.reads_only);
    assert_false(in.ends_with_close);
    assert_true(in.has_baton);
    assert_string_equal(in.baton_node, "n2");
    static const char badbaton[] = "{\"baton\":\"../x\",\"requests\":[]}";
    api_pipeline_inspect(badbaton, strlen(badbaton), &in);
    assert_true(in.has_baton);
    assert_string_equal(in.baton_node, "");
    api_pipeline_inspect("nope", 4, &in);
    assert_false(in.parsed);
    assert_false(in.reads_only);
}

/* The scanner's answers must be jansson's: every body, plain or not. */
static void the_fast_inspection_agrees_with_the_full_parse(void **state)
{
    static const char *const bodies[] = {
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\"}},{\"type\":\"close\"}]}",
        " {\"requests\" : [ {\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into t values (1)\"}} ] }\n",
        "{\"baton\":\"n2.abc\",\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\",\"args\":"
        "[{\"type\":\"integer\",\"value\":\"42\"},{\"type\":\"float\",\"value\":-1.5},{\"type\":\"null\"}],"
        "\"named_args\":[],\"want_rows\":true}},{\"type\":\"close\"}]}",
        "{\"baton\":null,\"requests\":[]}",
        "{\"baton\":\"no-dot\",\"requests\":[{\"type\":\"close\"}]}",
        "{\"baton\":\"Bad_Node.x\",\"requests\":[{\"type\":\"close\"}]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql_id\":3}},{\"type\":\"close\"}]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1; delete from t\"}}]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select '\\u0041'\"}},{\"type\":\"close\"}]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select \\\"x\\\"\"}},{\"type\":\"close\"}]}",
        "{\"requests\":[{\"type\":\"batch\",\"batch\":{\"steps\":[{\"stmt\":{\"sql\":\"select 1\"}}]}},"
        "{\"type\":\"close\"}]}",
        "{\"requests\":[{\"type\":\"store_sql\",\"sql_id\":1,\"sql\":\"select 1\"}]}",
        "{\"requests\":[{\"stmt\":{\"sql\":\"insert into t values (1)\"}}]}",
        "{\"requests\":[{\"type\":\"execute\",\"type\":\"close\"}]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\"}}],\"requests\":[]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\",\"args\":[{\"value\":1e999}]}}]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\",\"args\":[{\"value\":01}]}}]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\",\"args\":[99999999999999999999]}}]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":null}}]}",
        "{\"requests\":{}}",
        "{\"requests\":[{\"type\":\"close\"}]} trailing",
        "{\"requests\":[{\"type\":\"close\"}]",
        "{\"requests\":[{\"type\":\"close\",}]}",
        "[1,2]",
        "",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 'caf\xc3\xa9'\"}}]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select '\xff'\"}}]}",
        "{\"baton\":\"n1.a\",\"baton\":\"n2.b\",\"requests\":[]}",
        "{\"baton\":7,\"requests\":[]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\",\"args\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
        "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}]}",
        "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\",\"args\":[true,false,null,tru]}}]}",
    };
    (void)state;
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct api_pipeline_info a, b;
        api_pipeline_inspect(bodies[i], strlen(bodies[i]), &a);
        api_pipeline_inspect_full(bodies[i], strlen(bodies[i]), &b);
        if (a.parsed != b.parsed || a.has_baton != b.has_baton || strcmp(a.baton_node, b.baton_node) != 0 ||
            a.ends_with_close != b.ends_with_close || a.reads_only != b.reads_only)
            fail_msg("body %zu: fast %d/%d/'%s'/%d/%d, full %d/%d/'%s'/%d/%d: %s", i, a.parsed, a.has_baton,
                     a.baton_node, a.ends_with_close, a.reads_only, b.parsed, b.has_baton, b.baton_node,
                     b.ends_with_close, b.reads_only, bodies[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(statements_that_only_read_are_recognised),
        cmocka_unit_test(anything_that_may_write_is_not_a_read),
        cmocka_unit_test(remembered_answers_are_the_lexers),
        cmocka_unit_test(the_pipeline_walk_refuses_stream_bound_requests),
        cmocka_unit_test(inspect_finds_baton_node_close_and_reads),
        cmocka_unit_test(the_fast_inspection_agrees_with_the_full_parse),
    };
    return cmocka_run_group_tests_name("sqlclass", tests, NULL, NULL);
}
