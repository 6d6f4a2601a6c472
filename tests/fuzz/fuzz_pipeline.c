/* libFuzzer target: a pipeline body as an agent receives it (JSON, then the
 * "requests" array) run by the Hrana executor on a fresh in-memory database
 * with tight limits. Any input must give results or a protocol error. */
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <sqlite3.h>

#include "nodeagent/hrana.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct agent_hrana_limits limits = {.stmt_timeout_ms = 20, .max_response_bytes = 1 << 16};
    struct agent_hrana_outcome out;
    struct agent_hrana_stream *s;
    struct api_err err;
    json_t *doc, *results = NULL;
    sqlite3 *db;

    doc = json_loadb((const char *)data, size, 0, NULL);
    if (doc == NULL)
        return 0;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) {
        json_decref(doc);
        return 0;
    }
    sqlite3_limit(db, SQLITE_LIMIT_LENGTH, 1 << 20);
    if ((s = agent_hrana_stream_new(db, &limits)) != NULL) {
        const json_t *requests = json_object_get(doc, "requests");
        if (agent_hrana_execute(s, requests ? requests : doc, 3, &results, &out, &err) == API_OK)
            json_decref(results);
        json_t *batch = json_object_get(doc, "batch");
        if (batch != NULL && agent_hrana_cursor(s, batch, 3, &results, &out, &err) == API_OK)
            json_decref(results);
        agent_hrana_stream_free(s);
    }
    sqlite3_close_v2(db);
    json_decref(doc);
    return 0;
}
