/* libFuzzer target: a pipeline body as an agent receives it (JSON, then the
 * "requests" array) run by the Hrana executor on a fresh in-memory database
 * with tight limits. The agent's JSON parser must accept exactly what
 * jansson accepts; any input must give results or a protocol error, and the
 * results (and a cursor's lines) must be valid JSON text. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sqlite3.h>

#include "nodeagent/hrana.h"

static void assert_json_text(const char *text, size_t len)
{
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    if (v == NULL)
        abort(); /* the executor wrote something that is not JSON */
    json_decref(v);
}

static void assert_json_lines(const char *text, size_t len)
{
    for (size_t at = 0; at < len;) {
        const char *nl = memchr(text + at, '\n', len - at);
        if (nl == NULL)
            abort(); /* every entry ends its line */
        assert_json_text(text + at, (size_t)(nl - (text + at)));
        at = (size_t)(nl - text) + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct agent_hrana_limits limits = {.stmt_timeout_ms = 20, .max_response_bytes = 1 << 16};
    struct agent_hrana_outcome out;
    struct agent_hrana_stream *s;
    struct api_err err;
    struct api_jdoc *doc = NULL;
    struct api_jw results = API_JW_INIT;
    sqlite3 *db;

    /* the agent's parser accepts exactly what jansson accepts, except that
     * jansson skips a NUL byte right after a number or literal ("[1\0]"),
     * which the agent refuses (api/jsonin.h) */
    json_t *reference = json_loadb((const char *)data, size, 0, NULL);
    int parsed = api_jdoc_parse((const char *)data, size, &doc, NULL, 0) == 0;
    int has_nul = memchr(data, 0, size) != NULL;
    if ((reference != NULL) != parsed && !(has_nul && !parsed))
        abort();
    json_decref(reference);
    if (!parsed)
        return 0;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) {
        api_jdoc_free(doc);
        return 0;
    }
    sqlite3_limit(db, SQLITE_LIMIT_LENGTH, 1 << 20);
    if ((s = agent_hrana_stream_new(db, &limits)) != NULL) {
        const struct api_jv *root = api_jdoc_root(doc), *requests = api_jv_get(root, "requests");
        if (agent_hrana_execute(s, requests ? requests : root, 3, &results, &out, &err) == API_OK &&
            !results.failed && results.len > 0)
            assert_json_text(results.p, results.len);
        api_jw_reset(&results);
        const struct api_jv *batch = api_jv_get(root, "batch");
        if (batch != NULL && agent_hrana_cursor(s, batch, 3, &results, &out, &err) == API_OK)
            assert_json_lines(results.p, results.len);
        api_jw_free(&results);
        agent_hrana_stream_free(s);
    }
    sqlite3_close_v2(db);
    api_jdoc_free(doc);
    return 0;
}
