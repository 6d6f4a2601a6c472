/*
 * Unit tests for nodeagent/hrana.c on an in-memory SQLite database: exact
 * Hrana JSON for values, statements, batches (including the exact batch
 * @libsql/client sends), sequences, describe, the SQL store, errors and
 * limits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <sqlite3.h>

#include "api/jsonout.h"
#include "nodeagent/hrana.h"
#include "nodeagent/hot.h"
#include "nodeagent/stmtcache.h"

struct fx {
    sqlite3 *db;
    struct agent_hrana_stream *s;
    struct agent_hrana_outcome out;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    struct agent_hrana_limits lim = {.stmt_timeout_ms = 200, .max_response_bytes = 100000};
    assert_int_equal(sqlite3_open(":memory:", &f->db), SQLITE_OK);
    f->s = agent_hrana_stream_new(f->db, &lim);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    agent_hrana_stream_free(f->s);
    sqlite3_close(f->db);
    free(f);
    return 0;
}

/* TEXT as a request document (the agent's parser, api/jsonin.h); NULL if it
 * does not parse. */
static struct api_jdoc *jdoc(const char *text)
{
    struct api_jdoc *d = NULL;
    return api_jdoc_parse(text, strlen(text), &d, NULL, 0) == 0 ? d : NULL;
}

#define JV(d) api_jdoc_root(d)

/* agent_hrana_execute on S, its results read back as JSON (which also
 * checks that the text it wrote is valid JSON). */
static int execute_json(struct agent_hrana_stream *s, const struct api_jv *req, int version, json_t **res,
                        struct agent_hrana_outcome *out, struct api_err *err)
{
    struct api_jw w = API_JW_INIT;
    json_error_t jerr;
    int rc = agent_hrana_execute(s, req, version, &w, out, err);
    char *text = api_jw_finish(&w, NULL);
    *res = NULL;
    if (rc == API_OK) {
        assert_non_null(text);
        if ((*res = json_loads(text, 0, &jerr)) == NULL)
            fail_msg("results are not JSON (%s): %s", jerr.text, text);
    }
    free(text);
    return rc;
}

/* Runs REQUESTS (JSON text) and returns the results array; fails the test on
 * a protocol error. */
static json_t *run(struct fx *f, int version, const char *requests)
{
    struct api_jdoc *req = jdoc(requests);
    json_t *res = NULL;
    struct api_err err;
    if (req == NULL)
        fail_msg("bad test JSON: %s", requests);
    if (execute_json(f->s, JV(req), version, &res, &f->out, &err) != API_OK)
        fail_msg("protocol error: %s", err.msg);
    api_jdoc_free(req);
    return res;
}

/* Expects a protocol error whose message contains NEEDLE. */
static void protocol_error(struct fx *f, int version, const char *requests, const char *needle)
{
    struct api_jdoc *req = jdoc(requests);
    json_t *res = NULL;
    struct api_err err;
    assert_int_equal(execute_json(f->s, JV(req), version, &res, &f->out, &err), API_EINVAL);
    assert_null(res);
    if (strstr(err.msg, needle) == NULL)
        fail_msg("'%s' lacks '%s'", err.msg, needle);
    api_jdoc_free(req);
}

static char *dump(const json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
}

static void assert_json(const json_t *j, const char *want)
{
    json_t *w = json_loads(want, JSON_DECODE_ANY, NULL);
    if (w == NULL)
        fail_msg("bad expected JSON: %s", want);
    if (!json_equal((json_t *)j, w)) {
        char *got = dump(j);
        fail_msg("got %s\nwant %s", got, want);
    }
    json_decref(w);
}

#define RESULT(res, i) json_object_get(json_object_get(json_array_get(res, i), "response"), "result")

static void select_returns_cols_rows_and_counts(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 40+2 as x\"}},{\"type\":\"close\"}]");
    json_t *r = RESULT(res, 0);
    assert_json(json_object_get(r, "cols"), "[{\"name\":\"x\",\"decltype\":null}]");
    assert_json(json_object_get(r, "rows"), "[[{\"type\":\"integer\",\"value\":\"42\"}]]");
    assert_json(json_object_get(r, "affected_row_count"), "0");
    assert_true(json_is_null(json_object_get(r, "last_insert_rowid")));
    assert_json(json_array_get(res, 1), "{\"type\":\"ok\",\"response\":{\"type\":\"close\"}}");
    assert_true(f->out.closed);
    json_decref(res);
}

static void every_value_type_round_trips_exactly(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2,
        "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select ?,?,?,?,?,?,?,?,?,?\",\"args\":["
        "{\"type\":\"integer\",\"value\":\"-9223372036854775808\"},{\"type\":\"integer\",\"value\":\"9223372036854775807\"},"
        "{\"type\":\"float\",\"value\":42},{\"type\":\"float\",\"value\":1e+21},{\"type\":\"text\",\"value\":\"\"},"
        "{\"type\":\"text\",\"value\":\"h\\u00e9 \\u2603\"},{\"type\":\"blob\",\"base64\":\"AQID/w==\"},"
        "{\"type\":\"blob\",\"base64\":\"AQID/w\"},{\"type\":\"blob\",\"base64\":\"\"},{\"type\":\"null\"}]}}]");
    json_t *row = json_array_get(json_object_get(RESULT(res, 0), "rows"), 0);
    assert_json(row, "[{\"type\":\"integer\",\"value\":\"-9223372036854775808\"},"
                     "{\"type\":\"integer\",\"value\":\"9223372036854775807\"},{\"type\":\"float\",\"value\":42.0},"
                     "{\"type\":\"float\",\"value\":1e21},{\"type\":\"text\",\"value\":\"\"},"
                     "{\"type\":\"text\",\"value\":\"h\\u00e9 \\u2603\"},{\"type\":\"blob\",\"base64\":\"AQID/w==\"},"
                     "{\"type\":\"blob\",\"base64\":\"AQID/w==\"},{\"type\":\"blob\",\"base64\":\"\"},{\"type\":\"null\"}]");
    json_decref(res);
}

static void non_finite_floats_and_bad_utf8_are_sent_safely(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 9e999, cast(x'61ff62' as text)\"}}]");
    json_t *row = json_array_get(json_object_get(RESULT(res, 0), "rows"), 0);
    assert_json(row, "[{\"type\":\"null\"},{\"type\":\"text\",\"value\":\"a\\ufffdb\"}]");
    json_decref(res);
}

static void out_of_range_integers_are_protocol_errors(void **state)
{
    struct fx *f = *state;
    protocol_error(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select ?\",\"args\":[{\"type\":\"integer\",\"value\":\"9223372036854775808\"}]}}]", "64-bit");
    protocol_error(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select ?\",\"args\":[{\"type\":\"integer\",\"value\":\"1.5\"}]}}]", "64-bit");
    protocol_error(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select ?\",\"args\":[{\"type\":\"blob\",\"base64\":\"!!\"}]}}]", "base64");
    protocol_error(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select ?\",\"args\":[{\"type\":\"weird\"}]}}]", "unknown value type");
}

static void positional_numbered_and_named_arguments_bind(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2,
        "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select ?2, ?1\",\"args\":[{\"type\":\"text\",\"value\":\"a\"},{\"type\":\"text\",\"value\":\"b\"}]}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select :name, $score, @n\",\"named_args\":["
        "{\"name\":\"name\",\"value\":{\"type\":\"text\",\"value\":\"bob\"}},{\"name\":\"$score\",\"value\":{\"type\":\"float\",\"value\":1.5}},"
        "{\"name\":\"n\",\"value\":{\"type\":\"integer\",\"value\":\"1\"}}]}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select ?, ?\",\"args\":[{\"type\":\"null\"},{\"type\":\"null\"}],\"named_args\":[{\"name\":\"x\",\"value\":{\"type\":\"null\"}}]}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select :missing\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select ?\",\"args\":[{\"type\":\"null\"},{\"type\":\"null\"}]}}]");
    assert_json(json_array_get(json_object_get(RESULT(res, 0), "rows"), 0),
                "[{\"type\":\"text\",\"value\":\"b\"},{\"type\":\"text\",\"value\":\"a\"}]");
    assert_json(json_array_get(json_object_get(RESULT(res, 1), "rows"), 0),
                "[{\"type\":\"text\",\"value\":\"bob\"},{\"type\":\"float\",\"value\":1.5},{\"type\":\"integer\",\"value\":\"1\"}]");
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(res, 2), "error"), "code")),
                        "ARGS_BOTH_POSITIONAL_AND_NAMED");
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(res, 3), "error"), "code")),
                        "ARGS_INVALID");
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(res, 4), "error"), "code")),
                        "ARGS_INVALID");
    json_decref(res);
}

static void writes_report_affected_rows_and_insert_rowid(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2,
        "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table t(id integer primary key, v)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into t(v) values (1),(2),(3)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"update t set v = v + 1 where id > 1\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select * from t\",\"want_rows\":false}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into t(v) values (9) returning id\"}}]");
    assert_json(json_object_get(RESULT(res, 0), "affected_row_count"), "0");
    assert_json(json_object_get(RESULT(res, 1), "affected_row_count"), "3");
    assert_string_equal(json_string_value(json_object_get(RESULT(res, 1), "last_insert_rowid")), "3");
    assert_json(json_object_get(RESULT(res, 2), "affected_row_count"), "2");
    assert_true(json_is_null(json_object_get(RESULT(res, 2), "last_insert_rowid")));
    assert_json(json_object_get(RESULT(res, 3), "rows"), "[]");
    assert_json(json_object_get(RESULT(res, 3), "affected_row_count"), "0");
    assert_json(json_object_get(RESULT(res, 4), "rows"), "[[{\"type\":\"integer\",\"value\":\"4\"}]]");
    assert_true(f->out.wrote);
    json_decref(res);
}

/* The exact shape @libsql/client sends for batch([...], "write") (HRANA.md §2.4). */
static const char client_batch[] =
    "[{\"type\":\"store_sql\",\"sql_id\":0,\"sql\":\"INSERT INTO t (v) VALUES (?)\"},"
    "{\"type\":\"batch\",\"batch\":{\"steps\":["
    "{\"stmt\":{\"sql\":\"BEGIN IMMEDIATE\",\"args\":[],\"named_args\":[],\"want_rows\":false}},"
    "{\"condition\":{\"type\":\"ok\",\"step\":0},\"stmt\":{\"sql_id\":0,\"args\":[{\"type\":\"text\",\"value\":\"c1\"}],\"named_args\":[],\"want_rows\":true}},"
    "{\"condition\":{\"type\":\"ok\",\"step\":1},\"stmt\":{\"sql\":\"INSERT INTO nope VALUES (1)\",\"args\":[],\"named_args\":[],\"want_rows\":true}},"
    "{\"condition\":{\"type\":\"ok\",\"step\":2},\"stmt\":{\"sql\":\"COMMIT\",\"args\":[],\"named_args\":[],\"want_rows\":false}},"
    "{\"condition\":{\"type\":\"not\",\"cond\":{\"type\":\"ok\",\"step\":3}},\"stmt\":{\"sql\":\"ROLLBACK\",\"args\":[],\"named_args\":[],\"want_rows\":false}}]}},"
    "{\"type\":\"close\"}]";

static void a_failing_client_batch_skips_commit_and_rolls_back(void **state)
{
    struct fx *f = *state;
    json_decref(run(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table t(v)\"}}]"));
    json_t *res = run(f, 2, client_batch);
    json_t *b = RESULT(res, 1);
    assert_true(f->out.closed);
    json_t *results = json_object_get(b, "step_results"), *errors = json_object_get(b, "step_errors");
    assert_int_equal(json_array_size(results), 5);
    assert_int_equal(json_array_size(errors), 5);
    assert_true(json_is_object(json_array_get(results, 0)) && json_is_null(json_array_get(errors, 0)));
    assert_true(json_is_object(json_array_get(results, 1)));
    assert_true(json_is_null(json_array_get(results, 2)));
    assert_string_equal(json_string_value(json_object_get(json_array_get(errors, 2), "code")), "SQL_PARSE_ERROR");
    assert_true(json_is_null(json_array_get(results, 3)) && json_is_null(json_array_get(errors, 3))); /* skipped */
    assert_true(json_is_object(json_array_get(results, 4)));                                          /* rollback ran */
    json_decref(res);
    /* the batch closed its stream; look with a new one, as the next request would */
    agent_hrana_stream_free(f->s);
    f->s = agent_hrana_stream_new(f->db, NULL);
    res = run(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select count(*) from t\"}}]");
    assert_json(json_object_get(RESULT(res, 0), "rows"), "[[{\"type\":\"integer\",\"value\":\"0\"}]]");
    assert_false(f->out.in_txn);
    json_decref(res);
}

static void conditions_follow_the_spec_for_skipped_steps(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2,
        "[{\"type\":\"batch\",\"batch\":{\"steps\":["
        "{\"stmt\":{\"sql\":\"select 1\"}},"
        "{\"condition\":{\"type\":\"not\",\"cond\":{\"type\":\"ok\",\"step\":0}},\"stmt\":{\"sql\":\"select 2\"}},"
        "{\"condition\":{\"type\":\"error\",\"step\":1},\"stmt\":{\"sql\":\"select 3\"}},"
        "{\"condition\":{\"type\":\"or\",\"conds\":[{\"type\":\"error\",\"step\":1},{\"type\":\"ok\",\"step\":0}]},\"stmt\":{\"sql\":\"select 4\"}},"
        "{\"condition\":{\"type\":\"and\",\"conds\":[{\"type\":\"ok\",\"step\":3},{\"type\":\"not\",\"cond\":{\"type\":\"ok\",\"step\":1}}]},\"stmt\":{\"sql\":\"selec 5\"}},"
        "{\"condition\":{\"type\":\"error\",\"step\":4},\"stmt\":{\"sql\":\"select 6\"}}]}}]");
    json_t *b = RESULT(res, 0), *r = json_object_get(b, "step_results");
    assert_true(json_is_object(json_array_get(r, 0)));
    assert_true(json_is_null(json_array_get(r, 1)));   /* not ok(0): false */
    assert_true(json_is_null(json_array_get(r, 2)));   /* error(1) of a skipped step: false */
    assert_true(json_is_object(json_array_get(r, 3))); /* or */
    assert_true(json_is_object(json_object_get(b, "step_errors")) == 0);
    assert_true(json_is_object(json_array_get(json_object_get(b, "step_errors"), 4)));
    assert_true(json_is_object(json_array_get(r, 5))); /* error(4) */
    json_decref(res);
}

static void bad_conditions_and_v3_features_on_v2_are_protocol_errors(void **state)
{
    struct fx *f = *state;
    protocol_error(f, 2, "[{\"type\":\"batch\",\"batch\":{\"steps\":[{\"condition\":{\"type\":\"ok\",\"step\":0},\"stmt\":{\"sql\":\"select 1\"}}]}}]",
                   "Invalid reference");
    protocol_error(f, 2, "[{\"type\":\"batch\",\"batch\":{\"steps\":[{\"condition\":{\"type\":\"is_autocommit\"},\"stmt\":{\"sql\":\"select 1\"}}]}}]",
                   "Hrana 3");
    protocol_error(f, 2, "[{\"type\":\"get_autocommit\"}]", "Hrana 3");
    protocol_error(f, 2, "[{\"type\":\"nope\"}]", "unknown request type");
    protocol_error(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\",\"sql_id\":1}}]", "both");
    protocol_error(f, 2, "[{\"type\":\"execute\",\"stmt\":{}}]", "neither");
    protocol_error(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql_id\":7}}]", "not stored");
    protocol_error(f, 2, "{}", "array");
    json_t *res = run(f, 3, "[{\"type\":\"get_autocommit\"},{\"type\":\"execute\",\"stmt\":{\"sql\":\"begin\"}},"
                            "{\"type\":\"get_autocommit\"},{\"type\":\"batch\",\"batch\":{\"steps\":["
                            "{\"condition\":{\"type\":\"is_autocommit\"},\"stmt\":{\"sql\":\"select 1\"}},"
                            "{\"condition\":{\"type\":\"not\",\"cond\":{\"type\":\"is_autocommit\"}},\"stmt\":{\"sql\":\"rollback\"}}]}}]");
    assert_json(json_object_get(json_array_get(res, 0), "response"), "{\"type\":\"get_autocommit\",\"is_autocommit\":true}");
    assert_json(json_object_get(json_array_get(res, 2), "response"), "{\"type\":\"get_autocommit\",\"is_autocommit\":false}");
    json_t *r = json_object_get(RESULT(res, 3), "step_results");
    assert_true(json_is_null(json_array_get(r, 0)));
    assert_true(json_is_object(json_array_get(r, 1)));
    json_decref(res);
}

static void sequences_run_until_the_first_failure(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2, "[{\"type\":\"sequence\",\"sql\":\"create table s(x); insert into s values (1); -- done\\n\"},"
                            "{\"type\":\"sequence\",\"sql\":\"insert into s values (2); insert into nope values (3); insert into s values (4);\"},"
                            "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select count(*) from s\"}}]");
    assert_json(json_array_get(res, 0), "{\"type\":\"ok\",\"response\":{\"type\":\"sequence\"}}");
    assert_string_equal(json_string_value(json_object_get(json_array_get(res, 1), "type")), "error");
    assert_json(json_object_get(RESULT(res, 2), "rows"), "[[{\"type\":\"integer\",\"value\":\"2\"}]]");
    json_decref(res);
}

static void describe_reports_params_and_columns(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table d(a integer, b text)\"}},"
                            "{\"type\":\"describe\",\"sql\":\"select a, b from d where a = :x and b = ?\"},"
                            "{\"type\":\"describe\",\"sql\":\"insert into d values (1, 2)\"}]");
    assert_json(RESULT(res, 1), "{\"params\":[{\"name\":\":x\"},{\"name\":null}],"
                                "\"cols\":[{\"name\":\"a\",\"decltype\":\"INTEGER\"},{\"name\":\"b\",\"decltype\":\"TEXT\"}],"
                                "\"is_explain\":false,\"is_readonly\":true}");
    assert_json(json_object_get(RESULT(res, 2), "is_readonly"), "false");
    json_decref(res);
}

static void stored_sql_is_per_stream_with_limits(void **state)
{
    struct fx *f = *state;
    char buf[8192];
    json_t *res = run(f, 2, "[{\"type\":\"store_sql\",\"sql_id\":5,\"sql\":\"select 5\"},"
                            "{\"type\":\"execute\",\"stmt\":{\"sql_id\":5}},{\"type\":\"close_sql\",\"sql_id\":5},"
                            "{\"type\":\"close_sql\",\"sql_id\":99}]");
    assert_json(json_object_get(RESULT(res, 1), "rows"), "[[{\"type\":\"integer\",\"value\":\"5\"}]]");
    assert_json(json_array_get(res, 3), "{\"type\":\"ok\",\"response\":{\"type\":\"close_sql\"}}");
    json_decref(res);
    protocol_error(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql_id\":5}}]", "not stored");
    protocol_error(f, 2, "[{\"type\":\"store_sql\",\"sql_id\":1,\"sql\":\"select 1\"},{\"type\":\"store_sql\",\"sql_id\":1,\"sql\":\"select 1\"}]",
                   "already stored");
    size_t o = (size_t)snprintf(buf, sizeof(buf), "[");
    for (int i = 100; i < 160; i++)
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s{\"type\":\"store_sql\",\"sql_id\":%d,\"sql\":\"select %d\"}",
                              i > 100 ? "," : "", i, i);
    snprintf(buf + o, sizeof(buf) - o, "]");
    res = run(f, 2, buf);
    /* id 1 from the failed pipeline above is stored too: 49 more fit */
    assert_string_equal(json_string_value(json_object_get(json_array_get(res, 48), "type")), "ok");
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(res, 49), "error"), "code")),
                        "SQL_STORE_TOO_MANY");
    json_decref(res);
}

static void sql_errors_carry_sqlite_extended_codes(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2,
        "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table u(id integer primary key, e text unique, n not null, c check (c > 0))\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into u values (1, 'a', 1, 1)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into u values (1, 'b', 1, 1)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into u values (2, 'a', 1, 1)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into u values (3, 'c', null, 1)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into u values (4, 'd', 1, -1)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"selec 1\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1; select 2\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"  -- nothing\\n\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1; -- trailing comment\"}}]");
    const char *want[] = {NULL, NULL, "SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE",
                          "SQLITE_CONSTRAINT_NOTNULL", "SQLITE_CONSTRAINT_CHECK", "SQL_PARSE_ERROR",
                          "SQL_MANY_STATEMENTS", "SQL_NO_STATEMENT", NULL};
    for (size_t i = 0; i < 10; i++) {
        json_t *one = json_array_get(res, i);
        const char *code = json_string_value(json_object_get(json_object_get(one, "error"), "code"));
        if (want[i] == NULL && code != NULL)
            fail_msg("request %zu failed with %s", i, code);
        if (want[i] != NULL && (code == NULL || strcmp(code, want[i]) != 0))
            fail_msg("request %zu: code %s, wanted %s", i, code ? code : "(none)", want[i]);
    }
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(json_array_get(res, 2), "error"), "message")),
                           "UNIQUE constraint failed: u.id"));
    json_decref(res);
}

static void long_statements_time_out_and_the_connection_stays_usable(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2,
        "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"with recursive c(x) as (select 1 union all select x+1 from c) select count(*) from c\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 7\"}}]");
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(res, 0), "error"), "code")),
                        "STMT_TIMEOUT");
    assert_json(json_object_get(RESULT(res, 1), "rows"), "[[{\"type\":\"integer\",\"value\":\"7\"}]]");
    json_decref(res);
}

/* A budget (runs in place on an event loop) stops a long statement at once,
 * not at the statement time limit, and says so; a short one is untouched. */
static void a_budget_stops_a_long_statement_and_says_so(void **state)
{
    (void)state;
    sqlite3 *db;
    struct agent_hrana_limits lim = {.stmt_timeout_ms = 5000, .budget_us = 2000};
    struct agent_hrana_outcome out;
    struct api_err err;
    json_t *res = NULL;
    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);

    struct agent_hrana_stream *s = agent_hrana_stream_new(db, &lim);
    struct api_jdoc *req = jdoc("[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 6*7\"}}]");
    assert_int_equal(execute_json(s, JV(req), 2, &res, &out, &err), API_OK);
    assert_json(json_object_get(RESULT(res, 0), "rows"), "[[{\"type\":\"integer\",\"value\":\"42\"}]]");
    assert_int_equal(agent_hrana_stream_gave_up(s), 0);
    json_decref(res);
    api_jdoc_free(req);
    agent_hrana_stream_free(s);

    s = agent_hrana_stream_new(db, &lim);
    req = jdoc("[{\"type\":\"execute\",\"stmt\":{\"sql\":\"with recursive c(x) as (select 1 union all "
                     "select x+1 from c) select count(*) from c\"}}]");
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    assert_int_equal(execute_json(s, JV(req), 2, &res, &out, &err), API_OK);
    clock_gettime(CLOCK_MONOTONIC, &b);
    assert_int_equal(agent_hrana_stream_gave_up(s), 1);
    assert_non_null(json_object_get(json_array_get(res, 0), "error"));
    /* stopped by the budget, far before the 5 s statement limit */
    assert_true((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < 2500);
    json_decref(res);
    api_jdoc_free(req);
    agent_hrana_stream_free(s);
    sqlite3_close(db);
}

static void large_responses_are_cut_with_an_error(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"with recursive c(x) as (select 1 union all select x+1 from c where x < 5000) select x, randomblob(100) from c\"}}]");
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(res, 0), "error"), "code")),
                        "RESPONSE_TOO_LARGE");
    json_decref(res);
}

static void transactions_stay_open_across_requests_of_a_stream(void **state)
{
    struct fx *f = *state;
    json_decref(run(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table tx(x)\"}},"
                          "{\"type\":\"execute\",\"stmt\":{\"sql\":\"BEGIN TRANSACTION READONLY\"}}]"));
    assert_true(f->out.in_txn);
    json_decref(run(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"ROLLBACK\"}}]"));
    assert_false(f->out.in_txn);
    json_decref(run(f, 2, "[{\"type\":\"close\"}]"));
    protocol_error(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 1\"}}]", "after the stream was closed");
}

static const char *code_of(json_t *res, size_t i)
{
    return json_string_value(json_object_get(json_object_get(json_array_get(res, i), "error"), "code"));
}

static void sql_cannot_leave_its_tenant(void **state)
{
    struct fx *f = *state;
    json_t *res = run(f, 2,
        "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"ATTACH '/tmp/other.db' AS o\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"DETACH main\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select load_extension('/tmp/x.so')\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"VACUUM INTO '/tmp/copy.db'\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"vacuum main  into '/tmp/copy.db'\"}},"
        "{\"type\":\"sequence\",\"sql\":\"select 1; VACUUM INTO '/tmp/copy2.db';\"},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA journal_mode=DELETE\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA locking_mode=EXCLUSIVE\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA database_list\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA temp_store_directory='/tmp'\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA synchronous=OFF\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA query_only=0\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA writable_schema=1\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA wal_checkpoint(TRUNCATE)\"}}]");
    for (size_t i = 0; i < 14; i++) {
        const char *code = code_of(res, i);
        if (code == NULL || strcmp(code, "SQLITE_AUTH") != 0)
            fail_msg("request %zu: code %s, wanted SQLITE_AUTH", i, code ? code : "(none: it ran)");
    }
    json_decref(res);
    /* what applications need still works */
    res = run(f, 2,
        "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA foreign_keys=off\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA foreign_keys\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table p(a)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA table_info(p)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA user_version=7\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA journal_mode\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"VACUUM\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 'vacuum into' as v\"}}]");
    for (size_t i = 0; i < 8; i++)
        if (code_of(res, i) != NULL)
            fail_msg("request %zu failed with %s", i, code_of(res, i));
    json_decref(res);
}

static void read_only_streams_refuse_every_write(void **state)
{
    struct fx *f = *state;
    json_decref(run(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table r(a)\"}},"
                          "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into r values (1)\"}}]"));
    agent_hrana_stream_set_read_only(f->s, 1);
    json_t *res = run(f, 2,
        "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into r values (2)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"update r set a = 3\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"delete from r\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"drop table r\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table r2(a)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"create temp table t2(a)\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA user_version=9\"}},"
        "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select count(*) from r\"}}]");
    for (size_t i = 0; i < 7; i++) {
        const char *code = code_of(res, i);
        if (code == NULL || strcmp(code, "SQLITE_AUTH") != 0)
            fail_msg("request %zu: code %s, wanted SQLITE_AUTH", i, code ? code : "(none: it ran)");
    }
    assert_json(json_object_get(RESULT(res, 7), "rows"), "[[{\"type\":\"integer\",\"value\":\"1\"}]]");
    json_decref(res);
    agent_hrana_stream_set_read_only(f->s, 0);
    res = run(f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into r values (2)\"}}]");
    assert_null(code_of(res, 0));
    json_decref(res);
}

/* A statement taken out leaves its entry behind: given back it fills that
 * entry (the same statement comes out again, the count does not grow); the
 * same text taken twice at once gives a second statement, and both go back;
 * a statement whose entry was pushed out while it was taken still goes back
 * as a new entry. */
static void statement_cache_entries_wait_for_their_taken_statements(void **state)
{
    (void)state;
    sqlite3 *db;
    sqlite3_stmt *a, *b, *again;
    const char *q = "select 1", *r = "select 2", *t = "select 3";
    struct agent_stmt_cache *c = agent_stmt_cache_new(2);

    assert_non_null(c);
    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &a, NULL), SQLITE_OK);
    agent_stmt_cache_give(c, q, strlen(q), a);
    assert_int_equal(agent_stmt_cache_size(c), 1);
    assert_ptr_equal(agent_stmt_cache_take(c, q, strlen(q)), a);
    assert_int_equal(agent_stmt_cache_size(c), 0);
    assert_null(agent_stmt_cache_take(c, q, strlen(q))); /* taken: not twice */
    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &b, NULL), SQLITE_OK);
    agent_stmt_cache_give(c, q, strlen(q), a);
    assert_int_equal(agent_stmt_cache_size(c), 1);
    agent_stmt_cache_give(c, q, strlen(q), b); /* a second entry of the same text */
    assert_int_equal(agent_stmt_cache_size(c), 2);
    again = agent_stmt_cache_take(c, q, strlen(q));
    assert_true(again == a || again == b);
    agent_stmt_cache_give(c, q, strlen(q), again);
    assert_int_equal(agent_stmt_cache_size(c), 2);

    /* taken, then pushed out by two newer statements: it still goes back */
    again = agent_stmt_cache_take(c, q, strlen(q));
    assert_non_null(again);
    assert_int_equal(sqlite3_prepare_v2(db, r, -1, &a, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, t, -1, &b, NULL), SQLITE_OK);
    agent_stmt_cache_give(c, r, strlen(r), a);
    agent_stmt_cache_give(c, t, strlen(t), b);
    assert_int_equal(agent_stmt_cache_size(c), 2);
    agent_stmt_cache_give(c, q, strlen(q), again);
    assert_int_equal(agent_stmt_cache_size(c), 2);
    assert_ptr_equal(agent_stmt_cache_take(c, q, strlen(q)), again);
    agent_stmt_cache_give(c, q, strlen(q), again);
    assert_ptr_equal(agent_stmt_cache_last(c), again);
    agent_stmt_cache_free(c);
    assert_int_equal(sqlite3_close(db), SQLITE_OK); /* no statement left behind */
}

/* A cache on a new in-memory database (SETUP run first) holding Q, which
 * is then taken out into *A. */
static struct agent_stmt_cache *cache_with_taken(sqlite3 **db, const char *setup, const char *q, sqlite3_stmt **a)
{
    struct agent_stmt_cache *c = agent_stmt_cache_new(4);
    assert_non_null(c);
    assert_int_equal(sqlite3_open(":memory:", db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(*db, setup, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(*db, q, -1, a, NULL), SQLITE_OK);
    agent_stmt_cache_give(c, q, strlen(q), *a);
    assert_ptr_equal(agent_stmt_cache_take(c, q, strlen(q)), *a);
    return c;
}

/* A note (the columns' JSON) stays with a statement's entry until SQLite
 * re-prepares the statement after a schema change; only the statement
 * taken out can be noted. */
static void statement_cache_keeps_a_note_until_the_statement_is_prepared_again(void **state)
{
    (void)state;
    sqlite3 *db;
    sqlite3_stmt *a, *other;
    const char *q = "select * from t";
    size_t len = 0;
    struct agent_stmt_cache *c = cache_with_taken(&db, "create table t(a)", q, &a);

    assert_null(agent_stmt_cache_note(c, a, &len));
    assert_int_equal(sqlite3_prepare_v2(db, "select 1", -1, &other, NULL), SQLITE_OK);
    agent_stmt_cache_set_note(c, other, "x", 1); /* not taken from C: nothing */
    assert_null(agent_stmt_cache_note(c, other, &len));
    sqlite3_finalize(other);
    agent_stmt_cache_set_note(c, a, "[\"a\"]", 5);
    assert_string_equal(agent_stmt_cache_note(c, a, &len), "[\"a\"]");
    assert_int_equal(len, 5);
    agent_stmt_cache_give(c, q, strlen(q), a);
    assert_null(agent_stmt_cache_note(c, a, &len)); /* given back: not out */
    assert_ptr_equal(agent_stmt_cache_take(c, q, strlen(q)), a);
    assert_string_equal(agent_stmt_cache_note(c, a, &len), "[\"a\"]");
    assert_int_equal(sqlite3_step(a), SQLITE_DONE);
    agent_stmt_cache_give(c, q, strlen(q), a);

    /* a new column: the next run re-prepares the statement, the note is out of date */
    assert_int_equal(sqlite3_exec(db, "alter table t add column b", NULL, NULL, NULL), SQLITE_OK);
    assert_ptr_equal(agent_stmt_cache_take(c, q, strlen(q)), a);
    assert_int_equal(sqlite3_step(a), SQLITE_DONE);
    assert_int_equal(sqlite3_column_count(a), 2);
    assert_null(agent_stmt_cache_note(c, a, &len));
    agent_stmt_cache_set_note(c, a, "[\"a\",\"b\"]", 9);
    assert_string_equal(agent_stmt_cache_note(c, a, &len), "[\"a\",\"b\"]");
    agent_stmt_cache_give(c, q, strlen(q), a);
    agent_stmt_cache_free(c); /* frees the note too (ASan) */
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/* Another statement of the same text fills an entry while its own
 * statement is out: the note was that statement's and goes. */
static void statement_cache_note_stays_with_its_statement(void **state)
{
    (void)state;
    sqlite3 *db;
    sqlite3_stmt *a, *other;
    const char *q = "select 1 as x";
    size_t len = 0;
    struct agent_stmt_cache *c = cache_with_taken(&db, "", q, &a);

    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &other, NULL), SQLITE_OK);
    agent_stmt_cache_set_note(c, a, "[\"x\"]", 5);
    agent_stmt_cache_give(c, q, strlen(q), other); /* into A's entry, A being out */
    agent_stmt_cache_give(c, q, strlen(q), a);     /* a second entry */
    assert_int_equal(agent_stmt_cache_size(c), 2);
    assert_ptr_equal(agent_stmt_cache_take(c, q, strlen(q)), other);
    assert_null(agent_stmt_cache_note(c, other, &len));
    agent_stmt_cache_give(c, q, strlen(q), other);
    agent_stmt_cache_free(c);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/* A cached statement read right after its table changed answers with the
 * new columns (SQLite re-prepares it at its first step), and the columns'
 * JSON kept with it follows. */
static void cached_statement_names_new_columns_after_a_schema_change(void **state)
{
    (void)state;
    sqlite3 *db;
    struct agent_stmt_cache *c = agent_stmt_cache_new(4);
    const char *sel = "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select * from t\"}}]";
    struct agent_hrana_outcome out;
    struct api_err err;
    json_t *res;

    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "create table t(a int); insert into t values (1)", NULL, NULL, NULL), SQLITE_OK);
    for (int round = 0; round < 4; round++) {
        if (round == 2)
            assert_int_equal(sqlite3_exec(db, "alter table t add column b text default 'x'", NULL, NULL, NULL),
                             SQLITE_OK);
        struct agent_hrana_stream *s = agent_hrana_stream_new_cached(db, NULL, c);
        struct api_jdoc *req = jdoc(sel);
        if (execute_json(s, JV(req), 2, &res, &out, &err) != API_OK)
            fail_msg("round %d: %s", round, err.msg);
        json_t *result = json_object_get(json_object_get(json_array_get(res, 0), "response"), "result");
        if (round < 2)
            assert_json(json_object_get(result, "cols"), "[{\"name\":\"a\",\"decltype\":\"INT\"}]");
        else
            assert_json(json_object_get(result, "cols"),
                        "[{\"name\":\"a\",\"decltype\":\"INT\"},{\"name\":\"b\",\"decltype\":\"TEXT\"}]");
        assert_int_equal(json_array_size(json_array_get(json_object_get(result, "rows"), 0)), round < 2 ? 1 : 2);
        json_decref(res);
        api_jdoc_free(req);
        agent_hrana_stream_free(s);
    }
    assert_int_equal(agent_stmt_cache_size(c), 1); /* the same statement all along */
    agent_stmt_cache_free(c);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/* The statement last given back is only named while the cache holds it. */
static void statement_cache_names_its_last_statement_while_it_holds_it(void **state)
{
    (void)state;
    sqlite3 *db;
    sqlite3_stmt *a, *b;
    const char *q = "select 1", *r = "select 2";
    struct agent_stmt_cache *c = agent_stmt_cache_new(1);

    assert_non_null(c);
    assert_null(agent_stmt_cache_last(NULL));
    assert_null(agent_stmt_cache_last(c));
    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &a, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, r, -1, &b, NULL), SQLITE_OK);
    agent_stmt_cache_give(c, q, strlen(q), a);
    assert_ptr_equal(agent_stmt_cache_last(c), a);
    agent_stmt_cache_give(c, r, strlen(r), b); /* pushes A out (one entry) */
    assert_ptr_equal(agent_stmt_cache_last(c), b);
    assert_ptr_equal(agent_stmt_cache_take(c, r, strlen(r)), b);
    agent_stmt_cache_give(c, r, strlen(r), b);
    assert_ptr_equal(agent_stmt_cache_last(c), b);
    agent_stmt_cache_free(c);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/* Prefetch hints: an entry answers for its own key only, a later note
 * replaces it, and prefetching an entry whose addresses are stale (freed,
 * never mapped) is harmless. */
static void prefetch_hints_answer_for_their_own_tenant_only(void **state)
{
    (void)state;
    struct agent_hot *h = agent_hot_new();
    char *gone = malloc(4096);
    int db1, db2, st1;
    const void *addrs[AGENT_HOT_KINDS] = {[AGENT_HOT_DB] = &db1, [AGENT_HOT_STMT] = &st1,
                                          [AGENT_HOT_FILE] = gone + 2048, [AGENT_HOT_RECORD] = (void *)64};

    assert_non_null(h);
    assert_non_null(gone);
    assert_false(agent_hot_current(h, 7, &db1, &st1, NULL));
    agent_hot_note(h, 7, addrs);
    assert_true(agent_hot_current(h, 7, &db1, &st1, NULL));
    assert_false(agent_hot_current(h, 7, &db2, &st1, NULL)); /* another connection since */
    assert_false(agent_hot_current(h, 7, &db1, NULL, NULL));
    assert_false(agent_hot_current(h, 7 + 4096, &db1, &st1, NULL)); /* same entry, another tenant */
    free(gone);
    agent_hot_prefetch(h, 7);        /* freed and unmapped addresses: nothing happens */
    agent_hot_prefetch(h, 7 + 4096); /* not its entry: nothing fetched */
    agent_hot_prefetch(h, 8);        /* empty */
    addrs[AGENT_HOT_DB] = &db2;
    agent_hot_note(h, 7 + 4096, addrs);
    assert_false(agent_hot_current(h, 7, &db1, &st1, NULL));
    assert_true(agent_hot_current(h, 7 + 4096, &db2, &st1, NULL));
    agent_hot_free(h);
    /* without a table (out of memory at start) every call does nothing */
    agent_hot_note(NULL, 7, addrs);
    agent_hot_prefetch(NULL, 7);
    assert_true(agent_hot_current(NULL, 7, &db1, &st1, NULL));
    agent_hot_free(NULL);
}

/* A connection's statement cache: queries are prepared once and reused,
 * writes and pragmas never kept, a read-only stream on the same connection
 * still cannot write, schema changes are seen, and freeing the cache leaves
 * no statement behind (sqlite3_close, not _v2, must succeed). */
static void cached_queries_are_reused_and_never_bypass_the_authorizer(void **state)
{
    (void)state;
    struct fx f = {0};
    struct agent_hrana_limits lim = {.stmt_timeout_ms = 200};
    struct agent_stmt_cache *c = agent_stmt_cache_new(2);
    json_t *res;

    assert_non_null(c);
    assert_int_equal(sqlite3_open(":memory:", &f.db), SQLITE_OK);
    f.s = agent_hrana_stream_new_cached(f.db, &lim, c);
    json_decref(run(&f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table r(a)\"}},"
                           "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into r values (1)\"}},"
                           "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA recursive_triggers=1\"}}]"));
    assert_int_equal(agent_stmt_cache_size(c), 0); /* a read-only statement, but a pragma */
    for (int i = 0; i < 3; i++) {
        res = run(&f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select a from r\"}}]");
        assert_json(json_object_get(RESULT(res, 0), "rows"), "[[{\"type\":\"integer\",\"value\":\"1\"}]]");
        json_decref(res);
    }
    assert_int_equal(agent_stmt_cache_size(c), 1);
    /* the cache holds at most 2: the least recently used goes */
    json_decref(run(&f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 2\"}},"
                           "{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 3\"}}]"));
    assert_int_equal(agent_stmt_cache_size(c), 2);
    assert_null(agent_stmt_cache_take(c, "select a from r", strlen("select a from r")));
    agent_hrana_stream_free(f.s);

    /* a read-only stream on the same connection: cached queries run, writes do not */
    f.s = agent_hrana_stream_new_cached(f.db, &lim, c);
    agent_hrana_stream_set_read_only(f.s, 1);
    res = run(&f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 3\"}},"
                     "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into r values (2)\"}},"
                     "{\"type\":\"execute\",\"stmt\":{\"sql\":\"PRAGMA recursive_triggers=1\"}}]");
    assert_null(code_of(res, 0));
    assert_string_equal(code_of(res, 1), "SQLITE_AUTH");
    assert_string_equal(code_of(res, 2), "SQLITE_AUTH");
    json_decref(res);
    agent_hrana_stream_free(f.s);

    /* a schema change under a cached query */
    f.s = agent_hrana_stream_new_cached(f.db, &lim, c);
    json_decref(run(&f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select a from r\"}},"
                           "{\"type\":\"execute\",\"stmt\":{\"sql\":\"drop table r\"}},"
                           "{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table r(z, a)\"}},"
                           "{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into r values (7, 'x')\"}}]"));
    res = run(&f, 2, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select a from r\"}}]");
    assert_json(json_object_get(RESULT(res, 0), "rows"), "[[{\"type\":\"text\",\"value\":\"x\"}]]");
    json_decref(res);
    agent_hrana_stream_free(f.s);
    agent_stmt_cache_free(c);
    assert_int_equal(sqlite3_close(f.db), SQLITE_OK);
}

/* ---- streamed cursors (agent_hrana_cursor_stream) ---- */

struct lines {
    char *buf;
    size_t len, cap;
    size_t entries, fail_after; /* fail_after: the sink fails on that entry (0 = never) */
};

static void lines_add(struct lines *l, const char *text, size_t n)
{
    json_t *entry = json_loadb(text, n, 0, NULL);
    if (entry == NULL)
        fail_msg("a cursor entry is not JSON: %.*s", (int)n, text);
    json_decref(entry);
    if (memchr(text, '\n', n) != NULL)
        fail_msg("a cursor entry holds a newline: %.*s", (int)n, text);
    if (l->len + n + 1 > l->cap) {
        l->cap = (l->len + n + 1) * 2;
        l->buf = realloc(l->buf, l->cap + 1);
    }
    memcpy(l->buf + l->len, text, n);
    l->len += n;
    l->buf[l->len++] = '\n';
    l->buf[l->len] = '\0';
}

static int collect(void *ud, const char *line, size_t len, int64_t deadline_ms, struct api_err *err)
{
    struct lines *l = ud;
    assert_true(deadline_ms > 0);
    if (l->fail_after > 0 && ++l->entries >= l->fail_after)
        return api_err_set(err, API_EIO, "the client went away");
    lines_add(l, line, len);
    return API_OK;
}

static const char cursor_schema[] =
    "create table t(id integer primary key, a int, b real, c text, d blob, e);"
    "insert into t values (1, 42, 1.5, 'ann', x'0102ff', null), (2, -9223372036854775808, 1e300, 'bob', x'', 7),"
    " (3, 0, -0.0, cast(x'41ff42' as text), null, 'x');";

static sqlite3 *cursor_db(void)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, cursor_schema, NULL, NULL, NULL), SQLITE_OK);
    return db;
}

/* BATCH (JSON text) as the buffered cursor answers it, one entry a line. */
static char *buffered_lines(const char *batch, const struct agent_hrana_limits *lim)
{
    sqlite3 *db = cursor_db();
    struct agent_hrana_stream *s = agent_hrana_stream_new(db, lim);
    struct agent_hrana_outcome out;
    struct api_err err;
    struct lines l = {0};
    struct api_jw w = API_JW_INIT;
    struct api_jdoc *b = jdoc(batch);
    assert_non_null(b);
    if (agent_hrana_cursor(s, JV(b), 3, &w, &out, &err) != API_OK)
        fail_msg("protocol error: %s", err.msg);
    /* each line an entry of its own, as a sink gets them */
    for (size_t at = 0; at < w.len;) {
        const char *nl = memchr(w.p + at, '\n', w.len - at);
        assert_non_null(nl);
        lines_add(&l, w.p + at, (size_t)(nl - (w.p + at)));
        at = (size_t)(nl - w.p) + 1;
    }
    api_jw_free(&w);
    api_jdoc_free(b);
    agent_hrana_stream_free(s);
    sqlite3_close(db);
    return l.buf != NULL ? l.buf : strdup("");
}

/* The same batch streamed through a sink. */
static char *streamed_lines(const char *batch, const struct agent_hrana_limits *lim)
{
    sqlite3 *db = cursor_db();
    struct agent_hrana_stream *s = agent_hrana_stream_new(db, lim);
    struct agent_hrana_outcome out;
    struct api_err err;
    struct lines l = {0};
    struct agent_hrana_sink sink = {.entry = collect, .ud = &l};
    struct api_jdoc *b = jdoc(batch);
    assert_non_null(b);
    assert_int_equal(agent_hrana_cursor_check(s, JV(b), 3), 1);
    if (agent_hrana_cursor_stream(s, JV(b), 3, &sink, &out, &err) != API_OK)
        fail_msg("streamed cursor failed: %s", err.msg);
    api_jdoc_free(b);
    agent_hrana_stream_free(s);
    sqlite3_close(db);
    return l.buf != NULL ? l.buf : strdup("");
}

static void streamed_cursor_entries_match_the_buffered_cursor(void **state)
{
    static const char *const batches[] = {
        /* every value type, declared and expression columns, non-finite and bad UTF-8 */
        "{\"steps\":[{\"stmt\":{\"sql\":\"select id, a, b, c, d, e, a * 2 as twice, 1e308 * 10 as inf from t order by id\"}}]}",
        /* conditions: ok, not, and, or, error; skipped steps send nothing */
        "{\"steps\":[{\"stmt\":{\"sql\":\"select 1\"}},"
        "{\"condition\":{\"type\":\"not\",\"cond\":{\"type\":\"ok\",\"step\":0}},\"stmt\":{\"sql\":\"select 2\"}},"
        "{\"stmt\":{\"sql\":\"select nope\"}},"
        "{\"condition\":{\"type\":\"error\",\"step\":2},\"stmt\":{\"sql\":\"select 4\"}},"
        "{\"condition\":{\"type\":\"and\",\"conds\":[{\"type\":\"ok\",\"step\":0},{\"type\":\"error\",\"step\":1}]},\"stmt\":{\"sql\":\"select 5\"}},"
        "{\"condition\":{\"type\":\"or\",\"conds\":[{\"type\":\"ok\",\"step\":1},{\"type\":\"ok\",\"step\":3}]},\"stmt\":{\"sql\":\"select 6\"}},"
        "{\"condition\":{\"type\":\"is_autocommit\"},\"stmt\":{\"sql\":\"select 7\"}}]}",
        /* errors before any row: parse, runtime at the first step, two statements, no statement, arguments */
        "{\"steps\":[{\"stmt\":{\"sql\":\"selec 1\"}},{\"stmt\":{\"sql\":\"select abs(-9223372036854775808)\"}},"
        "{\"stmt\":{\"sql\":\"select 1; select 2\"}},{\"stmt\":{\"sql\":\" -- nothing\"}},"
        "{\"stmt\":{\"sql\":\"select ?\",\"args\":[{\"type\":\"integer\",\"value\":\"1\"},{\"type\":\"integer\",\"value\":\"2\"}]}},"
        "{\"stmt\":{\"sql\":\"select :x\",\"named_args\":[{\"name\":\"y\",\"value\":{\"type\":\"null\"}}]}},"
        "{\"stmt\":{\"sql\":\"select ?, :x\",\"args\":[{\"type\":\"null\"}],\"named_args\":[{\"name\":\"x\",\"value\":{\"type\":\"null\"}}]}}]}",
        /* arguments of every kind, want_rows false, an empty result */
        "{\"steps\":[{\"stmt\":{\"sql\":\"select ?, ?2, :n, @m, $o\",\"named_args\":[],\"args\":[{\"type\":\"text\",\"value\":\"a\"},"
        "{\"type\":\"blob\",\"base64\":\"AQID/w==\"},{\"type\":\"float\",\"value\":2.5}]}},"
        "{\"stmt\":{\"sql\":\"select :n, @m, $o\",\"named_args\":[{\"name\":\"n\",\"value\":{\"type\":\"integer\",\"value\":\"-3\"}},"
        "{\"name\":\"@m\",\"value\":{\"type\":\"float\",\"value\":1e21}},{\"name\":\"o\",\"value\":{\"type\":\"blob\",\"base64\":\"AQID\"}}]}},"
        "{\"stmt\":{\"sql\":\"select * from t\",\"want_rows\":false}},"
        "{\"stmt\":{\"sql\":\"select * from t where id > 100\"}}]}",
        /* writes: affected rows and insert rowids, DDL, a transaction */
        "{\"steps\":[{\"stmt\":{\"sql\":\"begin\"}},{\"stmt\":{\"sql\":\"insert into t(a) values (5) returning id, a\"}},"
        "{\"stmt\":{\"sql\":\"update t set a = a + 1 where id < 3\"}},{\"stmt\":{\"sql\":\"insert into t(id) values (1)\"}},"
        "{\"stmt\":{\"sql\":\"create table u(x)\"}},{\"stmt\":{\"sql\":\"with v(x) as (select 9) insert into u select x from v\"}},"
        "{\"stmt\":{\"sql\":\"delete from t where id = 2\"}},{\"stmt\":{\"sql\":\"commit\"}},{\"stmt\":{\"sql\":\"select count(*) from t\"}}]}",
        /* a statement that runs past the time limit before producing a row */
        ("{\"steps\":[{\"stmt\":{\"sql\":\"with recursive c(x) as (select 1 union all select x+1 from c) select count(*) from c\"}},"
         "{\"stmt\":{\"sql\":\"select 8\"}}]}"),
        /* no steps */
        "{\"steps\":[]}",
    };
    struct agent_hrana_limits lim = {.stmt_timeout_ms = 200, .max_response_bytes = 100000};
    (void)state;
    for (size_t i = 0; i < sizeof(batches) / sizeof(batches[0]); i++) {
        char *want = buffered_lines(batches[i], &lim), *got = streamed_lines(batches[i], &lim);
        if (strcmp(want, got) != 0)
            fail_msg("batch %zu:\nbuffered:\n%s\nstreamed:\n%s", i, want, got);
        free(want);
        free(got);
    }
}

static size_t count_lines(const char *s, const char *needle)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

static void streamed_cursors_have_no_size_cap_and_may_fail_after_rows(void **state)
{
    struct agent_hrana_limits lim = {.stmt_timeout_ms = 2000, .max_response_bytes = 100000};
    const char *big = "{\"steps\":[{\"stmt\":{\"sql\":\"with recursive c(x) as (select 1 union all select x+1 from c "
                      "where x < 5000) select x, randomblob(100) from c\"}}]}";
    const char *midway = "{\"steps\":[{\"stmt\":{\"sql\":\"with recursive c(x) as (select 1 union all select x+1 from c "
                         "where x < 5) select case when x < 3 then x else abs(-9223372036854775808) end from c\"}}]}";
    (void)state;
    char *b = buffered_lines(big, &lim), *s = streamed_lines(big, &lim);
    assert_int_equal(count_lines(b, "RESPONSE_TOO_LARGE"), 1); /* buffered: cut */
    assert_int_equal(count_lines(s, "\"type\":\"row\""), 5000);
    assert_int_equal(count_lines(s, "\"type\":\"step_end\""), 1);
    free(b);
    free(s);
    /* failing at row 3: buffered sends only the error, streamed sent rows 1 and 2 first (the spec allows it) */
    b = buffered_lines(midway, &lim);
    s = streamed_lines(midway, &lim);
    assert_int_equal(count_lines(b, "\"type\":\"row\""), 0);
    assert_int_equal(count_lines(b, "\"type\":\"step_error\""), 1);
    assert_int_equal(count_lines(s, "\"type\":\"step_begin\""), 1);
    assert_int_equal(count_lines(s, "\"type\":\"row\""), 2);
    assert_int_equal(count_lines(s, "\"type\":\"step_error\""), 1);
    assert_int_equal(count_lines(s, "\"type\":\"step_end\""), 0);
    free(b);
    free(s);
}

static void a_failing_sink_stops_the_batch_and_the_connection_stays_usable(void **state)
{
    struct fx *f = *state;
    struct lines l = {.fail_after = 12};
    struct agent_hrana_sink sink = {.entry = collect, .ud = &l};
    struct api_err err;
    struct api_jdoc *b = jdoc("{\"steps\":[{\"stmt\":{\"sql\":\"with recursive c(x) as (select 1 union all select x+1 "
                              "from c where x < 1000) select x from c\"}},{\"stmt\":{\"sql\":\"create table after(x)\"}}]}");
    assert_int_equal(agent_hrana_cursor_stream(f->s, JV(b), 3, &sink, &f->out, &err), API_EIO);
    assert_non_null(strstr(err.msg, "went away"));
    assert_int_equal(count_lines(l.buf, "\"type\":\"row\""), 10);
    assert_null(sqlite3_next_stmt(f->db, NULL)); /* nothing left running */
    api_jdoc_free(b);
    free(l.buf);
    /* step 1 never ran, and the stream still works */
    json_t *res = run(f, 3, "[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select count(*) from sqlite_schema where name = 'after'\"}}]");
    assert_json(json_object_get(RESULT(res, 0), "rows"), "[[{\"type\":\"integer\",\"value\":\"0\"}]]");
    json_decref(res);
}

static void cursor_check_refuses_batches_that_could_fail_midway(void **state)
{
    struct fx *f = *state;
    static const struct {
        const char *batch;
        int ok;
    } cases[] = {
        {"{\"steps\":[{\"stmt\":{\"sql\":\"select ?\",\"args\":[{\"type\":\"integer\",\"value\":\"1\"}]}}]}", 1},
        {"{\"steps\":[]}", 1},
        {"{\"steps\":[{\"stmt\":{\"sql\":\"select nope\"}}]}", 1}, /* an SQL error is in-band */
        /* skipped at run time, but an unknown sql_id there is a protocol error if reached */
        {"{\"steps\":[{\"stmt\":{\"sql\":\"select 1\"}},{\"condition\":{\"type\":\"error\",\"step\":0},\"stmt\":{\"sql_id\":9}}]}", 0},
        {"{\"steps\":[{\"stmt\":{\"sql\":\"select 1\",\"args\":[{\"type\":\"integer\",\"value\":\"x\"}]}}]}", 0},
        {"{\"steps\":[{\"stmt\":{\"sql\":\"select :a\",\"named_args\":[{\"value\":{\"type\":\"null\"}}]}}]}", 0},
        {"{\"steps\":[{\"stmt\":{\"sql\":\"select 1\",\"args\":[{\"type\":\"blob\",\"base64\":\"***\"}]}}]}", 0},
        {"{\"steps\":[{\"stmt\":{\"sql\":\"select 1\",\"want_rows\":1}}]}", 0},
        {"{\"steps\":[{\"stmt\":{\"sql\":\"select 1\",\"sql_id\":1}}]}", 0},
        {"{\"steps\":[{\"condition\":{\"type\":\"ok\",\"step\":0},\"stmt\":{\"sql\":\"select 1\"}}]}", 0},
        {"{\"steps\":{}}", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct api_jdoc *b = jdoc(cases[i].batch);
        assert_non_null(b);
        if (agent_hrana_cursor_check(f->s, JV(b), 3) != cases[i].ok)
            fail_msg("case %zu: %s: want %d", i, cases[i].batch, cases[i].ok);
        api_jdoc_free(b);
    }
    assert_int_equal(sqlite3_exec(f->db, "create table t(x)", NULL, NULL, NULL), SQLITE_OK);
    struct api_jdoc *ro = jdoc("{\"steps\":[{\"stmt\":{\"sql\":\"begin\"}},{\"stmt\":{\"sql\":\"select * from t\"}},"
                            "{\"stmt\":{\"sql\":\"commit\"}}]}");
    struct api_jdoc *rw = jdoc("{\"steps\":[{\"stmt\":{\"sql\":\"select * from t\"}},{\"stmt\":{\"sql\":\"insert into t values (1)\"}}]}");
    assert_int_equal(agent_hrana_batch_reads_only(f->db, JV(ro)), 1);
    assert_int_equal(agent_hrana_batch_reads_only(f->db, JV(rw)), 0);
    api_jdoc_free(ro);
    api_jdoc_free(rw);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(select_returns_cols_rows_and_counts),
        T(every_value_type_round_trips_exactly),
        T(non_finite_floats_and_bad_utf8_are_sent_safely),
        T(out_of_range_integers_are_protocol_errors),
        T(positional_numbered_and_named_arguments_bind),
        T(writes_report_affected_rows_and_insert_rowid),
        T(a_failing_client_batch_skips_commit_and_rolls_back),
        T(conditions_follow_the_spec_for_skipped_steps),
        T(bad_conditions_and_v3_features_on_v2_are_protocol_errors),
        T(sequences_run_until_the_first_failure),
        T(describe_reports_params_and_columns),
        T(stored_sql_is_per_stream_with_limits),
        T(sql_errors_carry_sqlite_extended_codes),
        T(long_statements_time_out_and_the_connection_stays_usable),
        T(large_responses_are_cut_with_an_error),
        cmocka_unit_test(a_budget_stops_a_long_statement_and_says_so),
        T(transactions_stay_open_across_requests_of_a_stream),
        T(sql_cannot_leave_its_tenant),
        T(read_only_streams_refuse_every_write),
        cmocka_unit_test(cached_queries_are_reused_and_never_bypass_the_authorizer),
        cmocka_unit_test(statement_cache_entries_wait_for_their_taken_statements),
        cmocka_unit_test(statement_cache_keeps_a_note_until_the_statement_is_prepared_again),
        cmocka_unit_test(statement_cache_note_stays_with_its_statement),
        cmocka_unit_test(cached_statement_names_new_columns_after_a_schema_change),
        cmocka_unit_test(statement_cache_names_its_last_statement_while_it_holds_it),
        cmocka_unit_test(prefetch_hints_answer_for_their_own_tenant_only),
        cmocka_unit_test(streamed_cursor_entries_match_the_buffered_cursor),
        cmocka_unit_test(streamed_cursors_have_no_size_cap_and_may_fail_after_rows),
        T(a_failing_sink_stops_the_batch_and_the_connection_stays_usable),
        T(cursor_check_refuses_batches_that_could_fail_midway),
    };
    return cmocka_run_group_tests_name("hrana", tests, NULL, NULL);
}
