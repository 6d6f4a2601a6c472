/*
 * nodeagent/hrana.c: Hrana stream requests on one SQLite connection
 * (see hrana.h and ../shared/HRANA.md).
 *
 * Errors come in two kinds, as in sqld: a protocol error (malformed request,
 * unknown sql_id, a condition that refers forward, a v3 feature on v2)
 * aborts the whole pipeline with API_EINVAL, which the caller turns into an
 * HTTP 400; an SQL error is in-band ({"type":"error"} or a step error) with
 * a code such as SQLITE_CONSTRAINT_PRIMARYKEY.
 *
 * Deviations from sqld, on purpose:
 * - batch conditions follow the spec: a skipped step is neither ok nor error
 *   (sqld evaluates error(s) as !ok(s));
 * - a statement that runs past the time limit fails with code STMT_TIMEOUT
 *   (the connection stays usable); REAL values that are not finite (NaN,
 *   Inf) are sent as null, because JSON cannot carry them;
 * - TEXT that is not valid UTF-8 is sent with U+FFFD in place of the bad
 *   bytes rather than failing the request;
 * - rows_read counts rows returned, rows_written counts changed rows (stock
 *   SQLite has no libsql row counters).
 *
 * SQL cannot leave its tenant: while user SQL is prepared, an authorizer
 * refuses ATTACH and DETACH, load_extension(), pragmas that reveal or move
 * files or change journaling, locking, durability or memory limits (only an
 * allowlist of pragmas may be given a value), and, for read-only streams,
 * every write. VACUUM never reaches an authorizer, so VACUUM INTO is refused
 * by looking at the statement. Denials are in-band SQLITE_AUTH errors.
 */
#include "nodeagent/hrana.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <sodium.h>

#include "api/sqlclass.h"
#include "api/workq.h"
#include "nodeagent/stmtcache.h"

#define STORE_MAX 50
#define STORE_SQL_MAX 5000

struct stored_sql {
    int32_t id;
    char *sql;
};

struct agent_hrana_stream {
    sqlite3 *db;
    struct agent_hrana_limits limits;
    struct stored_sql stored[STORE_MAX];
    size_t nstored;
    int64_t deadline_ms;
    int64_t started_ms; /* of the statement running (0: none) */
    int uncapped;       /* it runs long: api_workq_block_begin was called */
    int timed_out;
    int64_t budget_end_us; /* limits.budget_us from the stream's start (0: none) */
    int gave_up;
    size_t response_bytes;
    int closed;
    int active; /* user SQL is being prepared or run: the authorizer applies */
    struct agent_stmt_cache *stmts; /* borrowed; NULL: prepare every statement */
    /* a streamed cursor: execute_stmt hands step_begin and rows to the sink
     * as SQLite produces them instead of collecting rows */
    const struct agent_hrana_sink *sink;
    size_t sink_step;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A statement running this long stops counting against the worker pool's
 * active cap, so one tenant's heavy query does not hold back the short
 * requests of others (api/workq.h). */
#define LONG_STMT_MS 2

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int on_progress(void *arg)
{
    struct agent_hrana_stream *s = arg;
    if (s->budget_end_us > 0 && now_us() > s->budget_end_us) {
        s->gave_up = 1;
        return 1;
    }
    int64_t now = now_ms();
    if (!s->uncapped && s->started_ms > 0 && now - s->started_ms >= LONG_STMT_MS) {
        s->uncapped = 1;
        api_workq_block_begin();
    }
    if (s->deadline_ms > 0 && now > s->deadline_ms) {
        s->timed_out = 1;
        return 1;
    }
    return 0;
}

static void stmt_clock_start(struct agent_hrana_stream *s)
{
    s->started_ms = now_ms();
    s->deadline_ms = s->limits.stmt_timeout_ms > 0 ? s->started_ms + s->limits.stmt_timeout_ms : 0;
}

static void stmt_clock_stop(struct agent_hrana_stream *s)
{
    s->started_ms = 0;
    s->deadline_ms = 0;
    if (s->uncapped) {
        s->uncapped = 0;
        api_workq_block_end();
    }
}

/* Pragmas refused even without a value: they reveal file paths, or act
 * (checkpoint, free memory) when merely named. Every other pragma may be
 * read; setting one needs it in pragma_with_value, so journal_mode,
 * synchronous, locking_mode, query_only, page_size, cache_size and the like
 * stay as Shoal set them. */
static const char *const pragma_denied[] = {"database_list", "temp_store_directory", "data_store_directory",
                                            "wal_checkpoint", "shrink_memory", NULL};
/* Pragmas that may be given a value (or table name). */
static const char *const pragma_with_value[] = {
    "foreign_keys", "defer_foreign_keys", "recursive_triggers", "case_sensitive_like", "ignore_check_constraints",
    "legacy_alter_table", "reverse_unordered_selects", "automatic_index", "secure_delete", "user_version",
    "application_id", "optimize", "integrity_check", "quick_check", "table_info", "table_xinfo", "index_info",
    "index_xinfo", "index_list", "foreign_key_list", "foreign_key_check", "cell_size_check", "analysis_limit",
    "table_list", NULL};

static int in_list(const char *const *list, const char *name)
{
    for (; *list != NULL; list++)
        if (strcasecmp(*list, name) == 0)
            return 1;
    return 0;
}

static int authorize(void *arg, int op, const char *a, const char *b, const char *dbname, const char *trigger)
{
    struct agent_hrana_stream *s = arg;
    (void)dbname;
    (void)trigger;
    if (!s->active)
        return SQLITE_OK; /* Shoal's own statements */
    switch (op) {
    case SQLITE_ATTACH:
        /* '' is a private temporary database: VACUUM attaches one itself */
        return (a != NULL && a[0] == '\0') ? SQLITE_OK : SQLITE_DENY;
    case SQLITE_DETACH:
        return SQLITE_DENY;
    case SQLITE_FUNCTION:
        return (b != NULL && strcasecmp(b, "load_extension") == 0) ? SQLITE_DENY : SQLITE_OK;
    case SQLITE_PRAGMA:
        if (a == NULL || in_list(pragma_denied, a))
            return SQLITE_DENY;
        if (b != NULL && !in_list(pragma_with_value, a))
            return SQLITE_DENY;
        if (s->limits.read_only && b != NULL && strcasecmp(a, "foreign_keys") != 0 &&
            strcasecmp(a, "integrity_check") != 0 && strcasecmp(a, "quick_check") != 0 && strncasecmp(a, "table_", 6) != 0 &&
            strncasecmp(a, "index_", 6) != 0 && strncasecmp(a, "foreign_key_", 12) != 0)
            return SQLITE_DENY;
        return SQLITE_OK;
    case SQLITE_CREATE_INDEX: case SQLITE_CREATE_TABLE: case SQLITE_CREATE_TEMP_INDEX: case SQLITE_CREATE_TEMP_TABLE:
    case SQLITE_CREATE_TEMP_TRIGGER: case SQLITE_CREATE_TEMP_VIEW: case SQLITE_CREATE_TRIGGER: case SQLITE_CREATE_VIEW:
    case SQLITE_DELETE: case SQLITE_DROP_INDEX: case SQLITE_DROP_TABLE: case SQLITE_DROP_TEMP_INDEX:
    case SQLITE_DROP_TEMP_TABLE: case SQLITE_DROP_TEMP_TRIGGER: case SQLITE_DROP_TEMP_VIEW: case SQLITE_DROP_TRIGGER:
    case SQLITE_DROP_VIEW: case SQLITE_INSERT: case SQLITE_UPDATE: case SQLITE_ALTER_TABLE: case SQLITE_REINDEX:
    case SQLITE_ANALYZE: case SQLITE_CREATE_VTABLE: case SQLITE_DROP_VTABLE:
        return s->limits.read_only ? SQLITE_DENY : SQLITE_OK;
    default:
        return SQLITE_OK;
    }
}

void agent_hrana_stream_set_read_only(struct agent_hrana_stream *s, int read_only)
{
    s->limits.read_only = read_only;
}

/* The authorizer of a connection with a statement cache: installed once,
 * it asks the stream now running on the connection (none: Shoal's own). */
static int authorize_current(void *arg, int op, const char *a, const char *b, const char *dbname, const char *trigger)
{
    struct agent_hrana_stream *s = agent_stmt_cache_user(arg);
    return s == NULL ? SQLITE_OK : authorize(s, op, a, b, dbname, trigger);
}

struct agent_hrana_stream *agent_hrana_stream_new_cached(sqlite3 *db, const struct agent_hrana_limits *limits,
                                                         struct agent_stmt_cache *stmts)
{
    struct agent_hrana_stream *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->db = db;
    s->stmts = stmts;
    if (limits != NULL)
        s->limits = *limits;
    if (s->limits.budget_us > 0)
        s->budget_end_us = now_us() + s->limits.budget_us;
    if (s->limits.stmt_timeout_ms > 0 || s->limits.budget_us > 0)
        sqlite3_progress_handler(db, 1000, on_progress, s);
    if (stmts == NULL)
        sqlite3_set_authorizer(db, authorize, s);
    else if (agent_stmt_cache_set_user(stmts, s))
        sqlite3_set_authorizer(db, authorize_current, stmts);
    return s;
}

struct agent_hrana_stream *agent_hrana_stream_new(sqlite3 *db, const struct agent_hrana_limits *limits)
{
    return agent_hrana_stream_new_cached(db, limits, NULL);
}

int agent_hrana_stream_gave_up(const struct agent_hrana_stream *s)
{
    return s->gave_up;
}

void agent_hrana_stream_free(struct agent_hrana_stream *s)
{
    if (s == NULL)
        return;
    if (s->limits.stmt_timeout_ms > 0 || s->limits.budget_us > 0)
        sqlite3_progress_handler(s->db, 0, NULL, NULL);
    if (s->stmts != NULL)
        agent_stmt_cache_set_user(s->stmts, NULL); /* the hook stays; it allows all without a stream */
    else
        sqlite3_set_authorizer(s->db, NULL, NULL);
    for (size_t i = 0; i < s->nstored; i++)
        free(s->stored[i].sql);
    free(s);
}

/* ------------------------------------------------------------------ */
/* error codes                                                         */

struct code_name {
    int code;
    const char *name;
};

static const struct code_name code_names[] = {
    {SQLITE_CONSTRAINT_CHECK, "SQLITE_CONSTRAINT_CHECK"},
    {SQLITE_CONSTRAINT_COMMITHOOK, "SQLITE_CONSTRAINT_COMMITHOOK"},
    {SQLITE_CONSTRAINT_FOREIGNKEY, "SQLITE_CONSTRAINT_FOREIGNKEY"},
    {SQLITE_CONSTRAINT_FUNCTION, "SQLITE_CONSTRAINT_FUNCTION"},
    {SQLITE_CONSTRAINT_NOTNULL, "SQLITE_CONSTRAINT_NOTNULL"},
    {SQLITE_CONSTRAINT_PRIMARYKEY, "SQLITE_CONSTRAINT_PRIMARYKEY"},
    {SQLITE_CONSTRAINT_TRIGGER, "SQLITE_CONSTRAINT_TRIGGER"},
    {SQLITE_CONSTRAINT_UNIQUE, "SQLITE_CONSTRAINT_UNIQUE"},
    {SQLITE_CONSTRAINT_VTAB, "SQLITE_CONSTRAINT_VTAB"},
    {SQLITE_CONSTRAINT_ROWID, "SQLITE_CONSTRAINT_ROWID"},
    {SQLITE_CONSTRAINT_PINNED, "SQLITE_CONSTRAINT_PINNED"},
    {SQLITE_CONSTRAINT_DATATYPE, "SQLITE_CONSTRAINT_DATATYPE"},
    {SQLITE_BUSY_RECOVERY, "SQLITE_BUSY_RECOVERY"},
    {SQLITE_BUSY_SNAPSHOT, "SQLITE_BUSY_SNAPSHOT"},
    {SQLITE_BUSY_TIMEOUT, "SQLITE_BUSY_TIMEOUT"},
    {SQLITE_LOCKED_SHAREDCACHE, "SQLITE_LOCKED_SHAREDCACHE"},
    {SQLITE_READONLY_RECOVERY, "SQLITE_READONLY_RECOVERY"},
    {SQLITE_READONLY_CANTLOCK, "SQLITE_READONLY_CANTLOCK"},
    {SQLITE_READONLY_ROLLBACK, "SQLITE_READONLY_ROLLBACK"},
    {SQLITE_READONLY_DBMOVED, "SQLITE_READONLY_DBMOVED"},
    {SQLITE_IOERR_SHORT_READ, "SQLITE_IOERR_SHORT_READ"},
    {SQLITE_CORRUPT_INDEX, "SQLITE_CORRUPT_INDEX"},
    {SQLITE_ERROR, "SQLITE_ERROR"},
    {SQLITE_INTERNAL, "SQLITE_INTERNAL"},
    {SQLITE_PERM, "SQLITE_PERM"},
    {SQLITE_ABORT, "SQLITE_ABORT"},
    {SQLITE_BUSY, "SQLITE_BUSY"},
    {SQLITE_LOCKED, "SQLITE_LOCKED"},
    {SQLITE_NOMEM, "SQLITE_NOMEM"},
    {SQLITE_READONLY, "SQLITE_READONLY"},
    {SQLITE_INTERRUPT, "SQLITE_INTERRUPT"},
    {SQLITE_IOERR, "SQLITE_IOERR"},
    {SQLITE_CORRUPT, "SQLITE_CORRUPT"},
    {SQLITE_NOTFOUND, "SQLITE_NOTFOUND"},
    {SQLITE_FULL, "SQLITE_FULL"},
    {SQLITE_CANTOPEN, "SQLITE_CANTOPEN"},
    {SQLITE_PROTOCOL, "SQLITE_PROTOCOL"},
    {SQLITE_EMPTY, "SQLITE_EMPTY"},
    {SQLITE_SCHEMA, "SQLITE_SCHEMA"},
    {SQLITE_TOOBIG, "SQLITE_TOOBIG"},
    {SQLITE_CONSTRAINT, "SQLITE_CONSTRAINT"},
    {SQLITE_MISMATCH, "SQLITE_MISMATCH"},
    {SQLITE_MISUSE, "SQLITE_MISUSE"},
    {SQLITE_NOLFS, "SQLITE_NOLFS"},
    {SQLITE_AUTH, "SQLITE_AUTH"},
    {SQLITE_FORMAT, "SQLITE_FORMAT"},
    {SQLITE_RANGE, "SQLITE_RANGE"},
    {SQLITE_NOTADB, "SQLITE_NOTADB"},
};

/* The name of an extended code, else of its primary code. */
static const char *sqlite_code_name(int ext)
{
    for (size_t i = 0; i < sizeof(code_names) / sizeof(code_names[0]); i++)
        if (code_names[i].code == ext)
            return code_names[i].name;
    for (size_t i = 0; i < sizeof(code_names) / sizeof(code_names[0]); i++)
        if (code_names[i].code == (ext & 0xff))
            return code_names[i].name;
    return "SQLITE_UNKNOWN";
}

static json_t *error_json(const char *code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static json_t *error_json(const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return json_pack("{s:s,s:s}", "message", msg, "code", code);
}

/* The in-band error for the connection's last failure. */
static json_t *sqlite_error(struct agent_hrana_stream *s, int at_prepare)
{
    if (s->timed_out)
        return error_json("STMT_TIMEOUT", "statement exceeded the time limit of %lld ms",
                          (long long)s->limits.stmt_timeout_ms);
    int ext = sqlite3_extended_errcode(s->db);
    /* a function the authorizer denies fails prepare with a plain SQLITE_ERROR */
    if (((ext & 0xff) == SQLITE_ERROR || ext == SQLITE_AUTH) && strncmp(sqlite3_errmsg(s->db), "not authorized", 14) == 0)
        return error_json("SQLITE_AUTH", "SQLite error: %s%s", sqlite3_errmsg(s->db),
                          s->limits.read_only ? " (this token is read-only)" : " (not allowed on a Shoal tenant)");
    if (at_prepare && (ext & 0xff) == SQLITE_ERROR)
        return error_json("SQL_PARSE_ERROR", "SQLite error: %s", sqlite3_errmsg(s->db));
    return error_json(sqlite_code_name(ext), "SQLite error: %s", sqlite3_errmsg(s->db));
}

/* ------------------------------------------------------------------ */
/* values                                                              */

/* A copy of S with every byte that is not part of valid UTF-8 replaced by
 * U+FFFD; NULL on OOM. */
static char *utf8_sanitize(const unsigned char *s, size_t len, size_t *out_len)
{
    char *out = malloc(len * 3 + 1);
    size_t o = 0, i = 0;
    if (out == NULL)
        return NULL;
    while (i < len) {
        unsigned char c = s[i];
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = n > 0 && i + n <= len;
        for (size_t k = 1; ok && k < n; k++)
            ok = (s[i + k] & 0xc0) == 0x80;
        if (ok && n == 2 && c < 0xc2)
            ok = 0; /* overlong */
        if (ok && n == 3) {
            unsigned cp = ((c & 0x0fu) << 12) | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3fu);
            ok = cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff);
        }
        if (ok && n == 4) {
            unsigned cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3fu) << 12) | ((s[i + 2] & 0x3fu) << 6) |
                          (s[i + 3] & 0x3fu);
            ok = cp >= 0x10000 && cp <= 0x10ffff;
        }
        if (ok) {
            memcpy(out + o, s + i, n);
            o += n;
            i += n;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

json_t *agent_hrana_value_to_json(sqlite3_value *v)
{
    char buf[32];
    switch (sqlite3_value_type(v)) {
    case SQLITE_INTEGER:
        snprintf(buf, sizeof(buf), "%lld", (long long)sqlite3_value_int64(v));
        return json_pack("{s:s,s:s}", "type", "integer", "value", buf);
    case SQLITE_FLOAT: {
        double d = sqlite3_value_double(v);
        if (!isfinite(d))
            return json_pack("{s:s}", "type", "null");
        return json_pack("{s:s,s:f}", "type", "float", "value", d);
    }
    case SQLITE_TEXT: {
        const unsigned char *t = sqlite3_value_text(v);
        size_t len = (size_t)sqlite3_value_bytes(v);
        json_t *str = json_stringn((const char *)t, len);
        if (str == NULL) {
            size_t clean_len;
            char *clean = utf8_sanitize(t, len, &clean_len);
            str = clean ? json_stringn(clean, clean_len) : NULL;
            free(clean);
        }
        return str ? json_pack("{s:s,s:o}", "type", "text", "value", str) : NULL;
    }
    case SQLITE_BLOB: {
        size_t len = (size_t)sqlite3_value_bytes(v);
        size_t cap = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
        char *b64 = malloc(cap);
        json_t *out;
        if (b64 == NULL)
            return NULL;
        sodium_bin2base64(b64, cap, len ? sqlite3_value_blob(v) : (const void *)"", len,
                          sodium_base64_VARIANT_ORIGINAL);
        out = json_pack("{s:s,s:s}", "type", "blob", "base64", b64);
        free(b64);
        return out;
    }
    default:
        return json_pack("{s:s}", "type", "null");
    }
}

/* Binds JSON value V to parameter I. Returns 0, or -1 with MSG for a
 * protocol error (the value itself is malformed). With ST NULL it only
 * checks V, exactly as binding would. */
static int bind_value(sqlite3_stmt *st, int i, const json_t *v, char *msg, size_t cap)
{
    const char *type = json_string_value(json_object_get(v, "type"));
    json_t *val = json_object_get(v, "value");

    if (!json_is_object(v) || type == NULL) {
        snprintf(msg, cap, "a value must be an object with a \"type\"");
        return -1;
    }
    if (strcmp(type, "null") == 0)
        return st != NULL ? sqlite3_bind_null(st, i) : 0, 0;
    if (strcmp(type, "integer") == 0) {
        char *end;
        long long n;
        if (json_is_integer(val)) {
            n = json_integer_value(val);
        } else {
            const char *str = json_string_value(val);
            if (str == NULL || *str == '\0') {
                snprintf(msg, cap, "an integer value must be a decimal string");
                return -1;
            }
            errno = 0;
            n = strtoll(str, &end, 10);
            if (errno != 0 || *end != '\0') {
                snprintf(msg, cap, "integer value '%.40s' is not a 64-bit integer", str);
                return -1;
            }
        }
        return st != NULL ? sqlite3_bind_int64(st, i, n) : 0, 0;
    }
    if (strcmp(type, "float") == 0) {
        if (!json_is_number(val)) {
            snprintf(msg, cap, "a float value must be a JSON number");
            return -1;
        }
        return st != NULL ? sqlite3_bind_double(st, i, json_number_value(val)) : 0, 0;
    }
    if (strcmp(type, "text") == 0) {
        if (!json_is_string(val)) {
            snprintf(msg, cap, "a text value must be a string");
            return -1;
        }
        return st != NULL ? sqlite3_bind_text64(st, i, json_string_value(val), json_string_length(val),
                                                SQLITE_TRANSIENT, SQLITE_UTF8)
                          : 0,
               0;
    }
    if (strcmp(type, "blob") == 0) {
        const char *b64 = json_string_value(json_object_get(v, "base64"));
        size_t len, n = 0;
        unsigned char *bin;
        if (b64 == NULL) {
            snprintf(msg, cap, "a blob value must have a \"base64\" string");
            return -1;
        }
        len = strlen(b64);
        while (len > 0 && b64[len - 1] == '=')
            len--; /* accept padded and unpadded */
        if ((bin = malloc(len * 3 / 4 + 1)) == NULL) {
            snprintf(msg, cap, "out of memory");
            return -1;
        }
        if (sodium_base642bin(bin, len * 3 / 4 + 1, b64, len, NULL, &n, NULL,
                              sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0) {
            free(bin);
            snprintf(msg, cap, "blob value is not valid base64");
            return -1;
        }
        if (st != NULL)
            sqlite3_bind_blob64(st, i, bin, n, free);
        else
            free(bin);
        return 0;
    }
    snprintf(msg, cap, "unknown value type '%.20s'", type);
    return -1;
}

/* ------------------------------------------------------------------ */
/* statements                                                          */

/* The SQL of a Stmt or sequence/describe request: exactly one of "sql" and
 * "sql_id". Protocol error otherwise. */
static int stmt_sql(struct agent_hrana_stream *s, const json_t *obj, const char **sql, struct api_err *err)
{
    json_t *text = json_object_get(obj, "sql"), *id = json_object_get(obj, "sql_id");
    int has_text = text != NULL && !json_is_null(text), has_id = id != NULL && !json_is_null(id);

    if (has_text && has_id)
        return api_err_set(err, API_EINVAL, "a statement has both \"sql\" and \"sql_id\"");
    if (!has_text && !has_id)
        return api_err_set(err, API_EINVAL, "a statement has neither \"sql\" nor \"sql_id\"");
    if (has_text) {
        if (!json_is_string(text))
            return api_err_set(err, API_EINVAL, "\"sql\" must be a string");
        *sql = json_string_value(text);
        return API_OK;
    }
    if (!json_is_integer(id))
        return api_err_set(err, API_EINVAL, "\"sql_id\" must be an integer");
    for (size_t i = 0; i < s->nstored; i++)
        if (s->stored[i].id == json_integer_value(id)) {
            *sql = s->stored[i].sql;
            return API_OK;
        }
    return api_err_set(err, API_EINVAL, "SQL text with id %lld was not stored in this stream",
                       (long long)json_integer_value(id));
}

/* 1 if SQL (after white space and comments) starts with keyword KW. */
static int starts_with_keyword(const char *sql, const char *kw)
{
    for (;;) {
        while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '\r')
            sql++;
        if (sql[0] == '-' && sql[1] == '-') {
            while (*sql && *sql != '\n')
                sql++;
            continue;
        }
        if (sql[0] == '/' && sql[1] == '*') {
            const char *e = strstr(sql + 2, "*/");
            sql = e ? e + 2 : sql + strlen(sql);
            continue;
        }
        break;
    }
    size_t n = strlen(kw);
    return strncasecmp(sql, kw, n) == 0 && !((sql[n] >= 'a' && sql[n] <= 'z') || (sql[n] >= 'A' && sql[n] <= 'Z') ||
                                             sql[n] == '_' || (sql[n] >= '0' && sql[n] <= '9'));
}

/* Prepares exactly one statement. Returns API_OK with *ST set, or API_OK
 * with *ST NULL and *INBAND set (an SQL error), or a protocol error. */
/* 1 if SQL is "VACUUM ... INTO ...": it writes a copy of the database to
 * any path, and VACUUM never reaches the authorizer. */
static int is_vacuum_into(const char *sql, size_t len)
{
    char buf[512];
    size_t n = len < sizeof(buf) - 1 ? len : sizeof(buf) - 1;
    if (!starts_with_keyword(sql, "vacuum"))
        return 0;
    memcpy(buf, sql, n);
    buf[n] = '\0';
    for (char *p = buf; (p = strcasestr(p, "into")) != NULL; p += 4) {
        int before = p == buf || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        int after = !(isalnum((unsigned char)p[4]) || p[4] == '_');
        if (before && after)
            return 1;
    }
    return len >= sizeof(buf); /* too long to look at: refuse */
}

static int prepare_one(struct agent_hrana_stream *s, const char *sql, sqlite3_stmt **st, json_t **inband)
{
    const char *tail = NULL;
    sqlite3_stmt *extra = NULL;
    *st = NULL;
    *inband = NULL;
    s->timed_out = 0;
    if (s->stmts != NULL && (*st = agent_stmt_cache_take(s->stmts, sql, strlen(sql))) != NULL)
        return API_OK; /* it passed every check below when it was first prepared */
    if (sqlite3_prepare_v3(s->db, sql, -1, 0, st, &tail) != SQLITE_OK) {
        *inband = sqlite_error(s, 1);
        sqlite3_finalize(*st);
        *st = NULL;
        return API_OK;
    }
    if (*st == NULL) {
        *inband = error_json("SQL_NO_STATEMENT", "SQL string does not contain any statement");
        return API_OK;
    }
    if (is_vacuum_into(sql, (size_t)(tail - sql))) {
        sqlite3_finalize(*st);
        *st = NULL;
        *inband = error_json("SQLITE_AUTH", "SQLite error: VACUUM INTO is not allowed: it writes outside the tenant");
        return API_OK;
    }
    if (tail != NULL && *tail != '\0') {
        /* Anything but white space and comments after it is a second statement. */
        if (sqlite3_prepare_v3(s->db, tail, -1, 0, &extra, NULL) != SQLITE_OK || extra != NULL) {
            sqlite3_finalize(extra);
            sqlite3_finalize(*st);
            *st = NULL;
            *inband = error_json("SQL_MANY_STATEMENTS", "SQL string contains more than one statement");
        }
    }
    return API_OK;
}

/* Binds args/named_args of STMT_OBJ. Returns API_OK (with *INBAND set for an
 * argument error) or a protocol error. */
static int bind_args(sqlite3_stmt *st, const json_t *stmt_obj, json_t **inband, struct api_err *err)
{
    json_t *args = json_object_get(stmt_obj, "args"), *named = json_object_get(stmt_obj, "named_args");
    size_t nargs = json_array_size(args), nnamed = json_array_size(named);
    int count = sqlite3_bind_parameter_count(st);
    char msg[256];

    if ((args != NULL && !json_is_null(args) && !json_is_array(args)) ||
        (named != NULL && !json_is_null(named) && !json_is_array(named)))
        return api_err_set(err, API_EINVAL, "\"args\" and \"named_args\" must be arrays");
    if (nargs > 0 && nnamed > 0) {
        *inband = error_json("ARGS_BOTH_POSITIONAL_AND_NAMED", "statement has both positional and named arguments");
        return API_OK;
    }
    if ((int)nargs > count) {
        *inband = error_json("ARGS_INVALID", "%zu arguments given but the statement has %d parameters", nargs, count);
        return API_OK;
    }
    for (int i = 1; i <= count; i++) {
        const char *name = sqlite3_bind_parameter_name(st, i);
        const json_t *value = NULL;
        if (name == NULL) {
            value = (size_t)i <= nargs ? json_array_get(args, (size_t)i - 1) : NULL;
        } else if (name[0] == '?') {
            long idx = strtol(name + 1, NULL, 10);
            value = (idx >= 1 && (size_t)idx <= nargs) ? json_array_get(args, (size_t)idx - 1) : NULL;
        } else {
            for (size_t k = 0; k < nnamed && value == NULL; k++) {
                json_t *na = json_array_get(named, k);
                const char *n = json_string_value(json_object_get(na, "name"));
                if (n == NULL)
                    return api_err_set(err, API_EINVAL, "a named argument needs a \"name\" string");
                if (strcmp(n, name) == 0 || strcmp(n, name + 1) == 0)
                    value = json_object_get(na, "value");
            }
        }
        if (value == NULL) {
            *inband = error_json("ARGS_INVALID", "value for parameter %s not found", name ? name : "?");
            if (name == NULL)
                snprintf(msg, sizeof(msg), "%d", i);
            return API_OK;
        }
        if (bind_value(st, i, value, msg, sizeof(msg)) != 0)
            return api_err_set(err, API_EINVAL, "%s", msg);
    }
    return API_OK;
}

/* Hands ENTRY (stolen) to the stream's sink. The sink may block for room
 * until the running statement's deadline, or one time limit from now
 * between statements. */
static int sink_emit(struct agent_hrana_stream *s, json_t *entry, struct api_err *err)
{
    int64_t wait = s->limits.stmt_timeout_ms > 0 ? s->limits.stmt_timeout_ms : AGENT_HRANA_CURSOR_STALL_MS;
    int rc;
    if (entry == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    rc = s->sink->entry(s->sink->ud, entry, s->deadline_ms > 0 ? s->deadline_ms : now_ms() + wait, err);
    json_decref(entry);
    return rc;
}

/* step_begin for the current step, once SQLite has produced a first row or
 * finished: a statement that fails before that sends only its step_error,
 * exactly as the buffered cursor does. */
static int sink_begin(struct agent_hrana_stream *s, json_t *cols, struct api_err *err)
{
    return sink_emit(s, json_pack("{s:s,s:I,s:O}", "type", "step_begin", "step", (json_int_t)s->sink_step, "cols", cols),
                     err);
}

/* Runs one Stmt. Sets exactly one of *RESULT and *ERROR (in-band), or returns
 * a protocol error. Under a sink (a streamed cursor) step_begin and each row
 * go to the sink as they come, *RESULT has no rows, there is no response
 * size cap, and a sink error stops the statement and is returned. */
static int execute_stmt(struct agent_hrana_stream *s, const json_t *stmt_obj, json_t **result, json_t **error,
                        struct agent_hrana_outcome *out, struct api_err *err)
{
    const char *sql = NULL;
    sqlite3_stmt *st = NULL;
    json_t *inband = NULL, *rows, *cols, *want = json_object_get(stmt_obj, "want_rows");
    int want_rows = want == NULL || json_is_null(want) || json_is_true(want);
    int rc;
    int64_t t0 = now_ms();

    *result = *error = NULL;
    if (!json_is_object(stmt_obj))
        return api_err_set(err, API_EINVAL, "\"stmt\" must be an object");
    if (want != NULL && !json_is_null(want) && !json_is_boolean(want))
        return api_err_set(err, API_EINVAL, "\"want_rows\" must be a boolean");
    if ((rc = stmt_sql(s, stmt_obj, &sql, err)) != API_OK)
        return rc;
    prepare_one(s, sql, &st, &inband);
    if (inband != NULL) {
        *error = inband;
        return API_OK;
    }
    if ((rc = bind_args(st, stmt_obj, &inband, err)) != API_OK || inband != NULL) {
        sqlite3_finalize(st);
        *error = inband;
        return rc;
    }
    int ncols = sqlite3_column_count(st);
    cols = json_array();
    for (int c = 0; c < ncols; c++) {
        const char *name = sqlite3_column_name(st, c), *decl = sqlite3_column_decltype(st, c);
        json_array_append_new(cols, json_pack("{s:o,s:o}", "name", name ? json_string(name) : json_null(),
                                              "decltype", decl ? json_string(decl) : json_null()));
    }
    rows = json_array();
    sqlite3_int64 changes_before = sqlite3_total_changes64(s->db);
    uint64_t nrows = 0;
    int begun = 0, sink_rc = API_OK;
    s->timed_out = 0;
    stmt_clock_start(s);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        nrows++;
        if (s->sink != NULL && !begun) {
            begun = 1;
            if ((sink_rc = sink_begin(s, cols, err)) != API_OK)
                break;
        }
        if (!want_rows)
            continue;
        json_t *row = json_array();
        for (int c = 0; c < ncols; c++) {
            sqlite3_value *v = sqlite3_column_value(st, c);
            s->response_bytes += 16 + (size_t)sqlite3_value_bytes(v);
            json_array_append_new(row, agent_hrana_value_to_json(v));
        }
        if (s->sink != NULL) {
            if ((sink_rc = sink_emit(s, json_pack("{s:s,s:o}", "type", "row", "row", row), err)) != API_OK)
                break;
            continue;
        }
        json_array_append_new(rows, row);
        if (s->limits.max_response_bytes > 0 && s->response_bytes > s->limits.max_response_bytes) {
            rc = -1;
            break;
        }
    }
    stmt_clock_stop(s);
    if (sink_rc == API_OK && rc == SQLITE_DONE && s->sink != NULL && !begun)
        sink_rc = sink_begin(s, cols, err);
    if (sink_rc != API_OK) {
        sqlite3_reset(st);
        sqlite3_finalize(st);
        json_decref(rows);
        json_decref(cols);
        return sink_rc;
    }
    if (rc != SQLITE_DONE) {
        if (rc == -1)
            *error = error_json("RESPONSE_TOO_LARGE", "the response is larger than %zu bytes",
                                s->limits.max_response_bytes);
        else
            *error = sqlite_error(s, 0);
        sqlite3_reset(st);
        sqlite3_finalize(st);
        json_decref(rows);
        json_decref(cols);
        return API_OK;
    }
    int readonly = sqlite3_stmt_readonly(st);
    int changed = sqlite3_total_changes64(s->db) != changes_before;
    sqlite3_int64 affected = (changed && !readonly) ? sqlite3_changes64(s->db) : 0;
    json_t *rowid = json_null();
    if (changed && (starts_with_keyword(sql, "insert") || starts_with_keyword(sql, "replace") ||
                    starts_with_keyword(sql, "with"))) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%lld", (long long)sqlite3_last_insert_rowid(s->db));
        rowid = json_string(buf);
    }
    if (!readonly)
        out->wrote = 1;
    out->rows_read += nrows;
    out->rows_written += (uint64_t)affected;
    /* Only plain queries are kept: a PRAGMA can be read-only and still be
     * one that only some tokens may run (the authorizer ran at prepare). */
    if (s->stmts != NULL && (starts_with_keyword(sql, "select") || starts_with_keyword(sql, "with")))
        agent_stmt_cache_give(s->stmts, sql, strlen(sql), st);
    else
        sqlite3_finalize(st);
    *result = json_pack("{s:o,s:o,s:I,s:o,s:n,s:I,s:I,s:f}", "cols", cols, "rows", rows, "affected_row_count",
                        (json_int_t)affected, "last_insert_rowid", rowid, "replication_index", "rows_read",
                        (json_int_t)nrows, "rows_written", (json_int_t)affected, "query_duration_ms",
                        (double)(now_ms() - t0));
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* batches                                                             */

enum { STEP_SKIPPED = 0, STEP_OK = 1, STEP_FAILED = 2 };

/* Checks a condition's shape and that it refers only to earlier steps. */
static int cond_check(const json_t *c, size_t current, int version, int depth, struct api_err *err)
{
    const char *type = json_string_value(json_object_get(c, "type"));
    if (depth > 64)
        return api_err_set(err, API_EINVAL, "batch condition is nested too deeply");
    if (!json_is_object(c) || type == NULL)
        return api_err_set(err, API_EINVAL, "a batch condition must be an object with a \"type\"");
    if (strcmp(type, "ok") == 0 || strcmp(type, "error") == 0) {
        json_t *step = json_object_get(c, "step");
        if (!json_is_integer(step) || json_integer_value(step) < 0 ||
            (size_t)json_integer_value(step) >= current)
            return api_err_set(err, API_EINVAL, "Invalid reference to step in a batch condition");
        return API_OK;
    }
    if (strcmp(type, "not") == 0)
        return cond_check(json_object_get(c, "cond"), current, version, depth + 1, err);
    if (strcmp(type, "and") == 0 || strcmp(type, "or") == 0) {
        json_t *conds = json_object_get(c, "conds");
        if (!json_is_array(conds))
            return api_err_set(err, API_EINVAL, "\"%s\" condition needs a \"conds\" array", type);
        for (size_t i = 0; i < json_array_size(conds); i++) {
            int rc = cond_check(json_array_get(conds, i), current, version, depth + 1, err);
            if (rc != API_OK)
                return rc;
        }
        return API_OK;
    }
    if (strcmp(type, "is_autocommit") == 0) {
        if (version < 3)
            return api_err_set(err, API_EINVAL, "the is_autocommit condition needs Hrana 3 (/v3/pipeline)");
        return API_OK;
    }
    return api_err_set(err, API_EINVAL, "unknown batch condition type '%.20s'", type);
}

static int cond_eval(struct agent_hrana_stream *s, const json_t *c, const unsigned char *state)
{
    const char *type = json_string_value(json_object_get(c, "type"));
    if (strcmp(type, "ok") == 0)
        return state[json_integer_value(json_object_get(c, "step"))] == STEP_OK;
    if (strcmp(type, "error") == 0)
        return state[json_integer_value(json_object_get(c, "step"))] == STEP_FAILED;
    if (strcmp(type, "not") == 0)
        return !cond_eval(s, json_object_get(c, "cond"), state);
    if (strcmp(type, "and") == 0 || strcmp(type, "or") == 0) {
        int is_and = type[0] == 'a';
        json_t *conds = json_object_get(c, "conds");
        for (size_t i = 0; i < json_array_size(conds); i++) {
            int v = cond_eval(s, json_array_get(conds, i), state);
            if (is_and && !v)
                return 0;
            if (!is_and && v)
                return 1;
        }
        return is_and;
    }
    return sqlite3_get_autocommit(s->db) != 0; /* is_autocommit */
}

/* Checks a Batch's shape and conditions before any step runs. */
static int batch_check(const json_t *batch, int version, struct api_err *err)
{
    json_t *steps = json_object_get(batch, "steps");
    int rc;

    if (!json_is_object(batch) || !json_is_array(steps))
        return api_err_set(err, API_EINVAL, "\"batch\" must be an object with a \"steps\" array");
    for (size_t i = 0; i < json_array_size(steps); i++) {
        json_t *step = json_array_get(steps, i), *cond = json_object_get(step, "condition");
        if (!json_is_object(step) || !json_is_object(json_object_get(step, "stmt")))
            return api_err_set(err, API_EINVAL, "batch step %zu needs a \"stmt\" object", i);
        if (cond != NULL && !json_is_null(cond) && (rc = cond_check(cond, i, version, 0, err)) != API_OK)
            return rc;
    }
    return API_OK;
}

static int execute_batch(struct agent_hrana_stream *s, const json_t *batch, int version, json_t **result,
                         struct agent_hrana_outcome *out, struct api_err *err)
{
    json_t *steps = json_object_get(batch, "steps");
    size_t n;
    unsigned char *state;
    json_t *results, *errors;
    int rc;

    if ((rc = batch_check(batch, version, err)) != API_OK)
        return rc;
    n = json_array_size(steps);
    if ((state = calloc(n ? n : 1, 1)) == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    results = json_array();
    errors = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *step = json_array_get(steps, i), *cond = json_object_get(step, "condition");
        json_t *res = NULL, *e = NULL;
        if (cond != NULL && !json_is_null(cond) && !cond_eval(s, cond, state)) {
            json_array_append_new(results, json_null());
            json_array_append_new(errors, json_null());
            continue;
        }
        if ((rc = execute_stmt(s, json_object_get(step, "stmt"), &res, &e, out, err)) != API_OK) {
            free(state);
            json_decref(results);
            json_decref(errors);
            return rc;
        }
        state[i] = res != NULL ? STEP_OK : STEP_FAILED;
        json_array_append_new(results, res ? res : json_null());
        json_array_append_new(errors, e ? e : json_null());
    }
    free(state);
    *result = json_pack("{s:o,s:o,s:n}", "step_results", results, "step_errors", errors, "replication_index");
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* sequence, describe, store                                           */

static json_t *execute_sequence(struct agent_hrana_stream *s, const char *sql, struct agent_hrana_outcome *out)
{
    const char *p = sql;
    while (p != NULL && *p != '\0') {
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        s->timed_out = 0;
        if (sqlite3_prepare_v3(s->db, p, -1, 0, &st, &tail) != SQLITE_OK) {
            sqlite3_finalize(st);
            return sqlite_error(s, 1);
        }
        if (st == NULL)
            break; /* only white space or comments left */
        if (is_vacuum_into(p, (size_t)(tail - p))) {
            sqlite3_finalize(st);
            return error_json("SQLITE_AUTH", "SQLite error: VACUUM INTO is not allowed: it writes outside the tenant");
        }
        int rc;
        stmt_clock_start(s);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            ;
        stmt_clock_stop(s);
        if (rc != SQLITE_DONE) {
            json_t *e = sqlite_error(s, 0);
            sqlite3_finalize(st);
            return e;
        }
        if (!sqlite3_stmt_readonly(st))
            out->wrote = 1;
        sqlite3_finalize(st);
        p = tail;
    }
    return NULL;
}

static int describe(struct agent_hrana_stream *s, const json_t *req, json_t **result, json_t **error,
                    struct api_err *err)
{
    const char *sql;
    sqlite3_stmt *st;
    json_t *inband = NULL;
    int rc;

    if ((rc = stmt_sql(s, req, &sql, err)) != API_OK)
        return rc;
    prepare_one(s, sql, &st, &inband);
    if (inband != NULL) {
        *error = inband;
        return API_OK;
    }
    json_t *params = json_array(), *cols = json_array();
    for (int i = 1; i <= sqlite3_bind_parameter_count(st); i++) {
        const char *name = sqlite3_bind_parameter_name(st, i);
        json_array_append_new(params, json_pack("{s:o}", "name", name ? json_string(name) : json_null()));
    }
    for (int c = 0; c < sqlite3_column_count(st); c++) {
        const char *decl = sqlite3_column_decltype(st, c);
        json_array_append_new(cols, json_pack("{s:s,s:o}", "name", sqlite3_column_name(st, c), "decltype",
                                              decl ? json_string(decl) : json_null()));
    }
    *result = json_pack("{s:o,s:o,s:b,s:b}", "params", params, "cols", cols, "is_explain",
                        sqlite3_stmt_isexplain(st) != 0, "is_readonly", sqlite3_stmt_readonly(st) != 0);
    sqlite3_finalize(st);
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* the pipeline                                                        */

static json_t *ok_result(const char *type, json_t *fields /* stolen, may be NULL */)
{
    json_t *resp = fields ? fields : json_object();
    json_object_set_new(resp, "type", json_string(type));
    return json_pack("{s:s,s:o}", "type", "ok", "response", resp);
}

static json_t *error_result(json_t *error)
{
    return json_pack("{s:s,s:o}", "type", "error", "error", error);
}

static int execute_one(struct agent_hrana_stream *s, const json_t *req, int version, json_t **out_result,
                       struct agent_hrana_outcome *out, struct api_err *err)
{
    const char *type = json_string_value(json_object_get(req, "type"));
    json_t *res = NULL, *e = NULL;
    int rc;

    if (!json_is_object(req) || type == NULL)
        return api_err_set(err, API_EINVAL, "each request must be an object with a \"type\"");
    if (s->closed)
        return api_err_set(err, API_EINVAL, "request '%.20s' after the stream was closed", type);
    if (strcmp(type, "execute") == 0) {
        if ((rc = execute_stmt(s, json_object_get(req, "stmt"), &res, &e, out, err)) != API_OK)
            return rc;
        *out_result = e ? error_result(e) : ok_result("execute", json_pack("{s:o}", "result", res));
    } else if (strcmp(type, "batch") == 0) {
        if ((rc = execute_batch(s, json_object_get(req, "batch"), version, &res, out, err)) != API_OK)
            return rc;
        *out_result = ok_result("batch", json_pack("{s:o}", "result", res));
    } else if (strcmp(type, "sequence") == 0) {
        const char *sql;
        if ((rc = stmt_sql(s, req, &sql, err)) != API_OK)
            return rc;
        e = execute_sequence(s, sql, out);
        *out_result = e ? error_result(e) : ok_result("sequence", NULL);
    } else if (strcmp(type, "describe") == 0) {
        if ((rc = describe(s, req, &res, &e, err)) != API_OK)
            return rc;
        *out_result = e ? error_result(e) : ok_result("describe", json_pack("{s:o}", "result", res));
    } else if (strcmp(type, "store_sql") == 0) {
        json_t *id = json_object_get(req, "sql_id"), *sql = json_object_get(req, "sql");
        if (!json_is_integer(id) || !json_is_string(sql))
            return api_err_set(err, API_EINVAL, "store_sql needs an integer \"sql_id\" and a string \"sql\"");
        for (size_t i = 0; i < s->nstored; i++)
            if (s->stored[i].id == json_integer_value(id))
                return api_err_set(err, API_EINVAL, "SQL text with id %lld is already stored",
                                   (long long)json_integer_value(id));
        if (s->nstored >= STORE_MAX) {
            *out_result = error_result(error_json("SQL_STORE_TOO_MANY", "at most %d SQL texts per stream", STORE_MAX));
        } else if (json_string_length(sql) > STORE_SQL_MAX) {
            *out_result = error_result(error_json("SQL_STORE_TOO_LARGE", "stored SQL texts are limited to %d bytes",
                                                  STORE_SQL_MAX));
        } else {
            char *copy = strdup(json_string_value(sql));
            if (copy == NULL)
                return api_err_set(err, API_ENOMEM, "out of memory");
            s->stored[s->nstored].id = (int32_t)json_integer_value(id);
            s->stored[s->nstored].sql = copy;
            s->nstored++;
            *out_result = ok_result("store_sql", NULL);
        }
    } else if (strcmp(type, "close_sql") == 0) {
        json_t *id = json_object_get(req, "sql_id");
        if (!json_is_integer(id))
            return api_err_set(err, API_EINVAL, "close_sql needs an integer \"sql_id\"");
        for (size_t i = 0; i < s->nstored; i++)
            if (s->stored[i].id == json_integer_value(id)) {
                free(s->stored[i].sql);
                s->stored[i] = s->stored[--s->nstored];
                break;
            }
        *out_result = ok_result("close_sql", NULL);
    } else if (strcmp(type, "close") == 0) {
        s->closed = 1;
        out->closed = 1;
        *out_result = ok_result("close", NULL);
    } else if (strcmp(type, "get_autocommit") == 0) {
        if (version < 3)
            return api_err_set(err, API_EINVAL, "get_autocommit needs Hrana 3 (/v3/pipeline)");
        *out_result = ok_result("get_autocommit",
                                json_pack("{s:b}", "is_autocommit", sqlite3_get_autocommit(s->db) != 0));
    } else {
        return api_err_set(err, API_EINVAL, "unknown request type '%.20s'", type);
    }
    if (*out_result == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    return API_OK;
}

int agent_hrana_execute(struct agent_hrana_stream *s, const json_t *requests, int version, json_t **results,
                        struct agent_hrana_outcome *out, struct api_err *err)
{
    json_t *arr;

    memset(out, 0, sizeof(*out));
    if (!json_is_array(requests))
        return api_err_set(err, API_EINVAL, "\"requests\" must be an array");
    if ((arr = json_array()) == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    s->response_bytes = 0;
    s->active = 1;
    for (size_t i = 0; i < json_array_size(requests); i++) {
        json_t *one = NULL;
        int rc = execute_one(s, json_array_get(requests, i), version, &one, out, err);
        if (rc != API_OK) {
            s->active = 0;
            json_decref(arr);
            out->in_txn = !sqlite3_get_autocommit(s->db);
            return rc;
        }
        json_array_append_new(arr, one);
    }
    s->active = 0;
    out->in_txn = !sqlite3_get_autocommit(s->db);
    *results = arr;
    return API_OK;
}

int agent_hrana_cursor(struct agent_hrana_stream *s, const json_t *batch, int version, json_t **entries,
                       struct agent_hrana_outcome *out, struct api_err *err)
{
    json_t *result = NULL, *arr;
    int rc;

    memset(out, 0, sizeof(*out));
    s->response_bytes = 0;
    s->active = 1;
    rc = execute_batch(s, batch, version, &result, out, err);
    s->active = 0;
    out->in_txn = !sqlite3_get_autocommit(s->db);
    if (rc != API_OK)
        return rc;
    /* The cursor is the batch result spelled out entry by entry. It is built
     * in memory (bounded by the response cap), not streamed row by row. */
    arr = json_array();
    json_t *results = json_object_get(result, "step_results"), *errors = json_object_get(result, "step_errors");
    for (size_t i = 0; i < json_array_size(results); i++) {
        json_t *r = json_array_get(results, i), *e = json_array_get(errors, i);
        if (json_is_object(e)) {
            json_array_append_new(arr, json_pack("{s:s,s:I,s:O}", "type", "step_error", "step", (json_int_t)i, "error", e));
            continue;
        }
        if (!json_is_object(r))
            continue; /* skipped */
        json_array_append_new(arr, json_pack("{s:s,s:I,s:O}", "type", "step_begin", "step", (json_int_t)i, "cols",
                                             json_object_get(r, "cols")));
        json_t *rows = json_object_get(r, "rows");
        for (size_t k = 0; k < json_array_size(rows); k++)
            json_array_append_new(arr, json_pack("{s:s,s:O}", "type", "row", "row", json_array_get(rows, k)));
        json_array_append_new(arr, json_pack("{s:s,s:O,s:O}", "type", "step_end", "affected_row_count",
                                             json_object_get(r, "affected_row_count"), "last_insert_rowid",
                                             json_object_get(r, "last_insert_rowid")));
    }
    json_decref(result);
    *entries = arr;
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* streamed cursors                                                    */

/* 1 if executing STMT_OBJ cannot raise a protocol error: what execute_stmt,
 * stmt_sql, bind_args and bind_value check as they go, checked here for
 * every argument whether or not the statement would use it. */
static int stmt_well_formed(struct agent_hrana_stream *s, const json_t *stmt_obj)
{
    json_t *want = json_object_get(stmt_obj, "want_rows");
    json_t *args = json_object_get(stmt_obj, "args"), *named = json_object_get(stmt_obj, "named_args");
    const char *sql;
    struct api_err err;
    char msg[256];
    size_t i;
    json_t *v;

    if (!json_is_object(stmt_obj) || (want != NULL && !json_is_null(want) && !json_is_boolean(want)))
        return 0;
    if (stmt_sql(s, stmt_obj, &sql, &err) != API_OK)
        return 0;
    if ((args != NULL && !json_is_null(args) && !json_is_array(args)) ||
        (named != NULL && !json_is_null(named) && !json_is_array(named)))
        return 0;
    json_array_foreach(args, i, v)
    {
        if (bind_value(NULL, 0, v, msg, sizeof(msg)) != 0)
            return 0;
    }
    json_array_foreach(named, i, v)
    {
        if (!json_is_string(json_object_get(v, "name")) ||
            bind_value(NULL, 0, json_object_get(v, "value"), msg, sizeof(msg)) != 0)
            return 0;
    }
    return 1;
}

int agent_hrana_cursor_check(struct agent_hrana_stream *s, const json_t *batch, int version)
{
    struct api_err err;
    size_t i;
    json_t *step;

    if (batch_check(batch, version, &err) != API_OK)
        return 0;
    json_array_foreach(json_object_get(batch, "steps"), i, step)
    {
        if (!stmt_well_formed(s, json_object_get(step, "stmt")))
            return 0;
    }
    return 1;
}

/* The same walk as execute_batch, but each step's entries go to the sink
 * as they are produced: step_begin and rows from execute_stmt, then
 * step_end or step_error here, built exactly as agent_hrana_cursor builds
 * them from a batch result. */
static int cursor_batch(struct agent_hrana_stream *s, const json_t *batch, int version,
                        struct agent_hrana_outcome *out, struct api_err *err)
{
    json_t *steps = json_object_get(batch, "steps");
    unsigned char *state;
    size_t n;
    int rc;

    if ((rc = batch_check(batch, version, err)) != API_OK)
        return rc;
    n = json_array_size(steps);
    if ((state = calloc(n ? n : 1, 1)) == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *step = json_array_get(steps, i), *cond = json_object_get(step, "condition");
        json_t *res = NULL, *e = NULL, *entry;
        if (cond != NULL && !json_is_null(cond) && !cond_eval(s, cond, state))
            continue; /* skipped: no entries */
        s->sink_step = i;
        if ((rc = execute_stmt(s, json_object_get(step, "stmt"), &res, &e, out, err)) != API_OK)
            break;
        state[i] = res != NULL ? STEP_OK : STEP_FAILED;
        if (e != NULL)
            entry = json_pack("{s:s,s:I,s:o}", "type", "step_error", "step", (json_int_t)i, "error", e);
        else
            entry = json_pack("{s:s,s:O,s:O}", "type", "step_end", "affected_row_count",
                              json_object_get(res, "affected_row_count"), "last_insert_rowid",
                              json_object_get(res, "last_insert_rowid"));
        json_decref(res);
        if ((rc = sink_emit(s, entry, err)) != API_OK)
            break;
    }
    free(state);
    return rc;
}

int agent_hrana_cursor_stream(struct agent_hrana_stream *s, const json_t *batch, int version,
                              const struct agent_hrana_sink *sink, struct agent_hrana_outcome *out,
                              struct api_err *err)
{
    int rc;

    memset(out, 0, sizeof(*out));
    s->response_bytes = 0;
    s->active = 1;
    s->sink = sink;
    rc = cursor_batch(s, batch, version, out, err);
    s->sink = NULL;
    s->active = 0;
    out->in_txn = !sqlite3_get_autocommit(s->db);
    return rc;
}

/* ------------------------------------------------------------------ */
/* can a replica answer this?                                          */

/* 1 if every statement in SQL only reads (sqlite3_stmt_readonly). SQL that
 * does not prepare counts as a read: running it reports the error. */
static int sql_reads_only(sqlite3 *db, const char *sql)
{
    const char *tail = sql;
    while (tail != NULL && *tail != '\0') {
        sqlite3_stmt *st = NULL;
        const char *next = NULL;
        if (sqlite3_prepare_v2(db, tail, -1, &st, &next) != SQLITE_OK)
            return 1;
        int ro = st == NULL || sqlite3_stmt_readonly(st);
        sqlite3_finalize(st);
        if (!ro)
            return 0;
        if (next == tail)
            break;
        tail = next;
    }
    return 1;
}

static int sqlite_reads_only(void *db, const char *sql)
{
    return sql_reads_only(db, sql);
}

/* The walk over the pipeline is shared with the router (api/sqlclass.h), so
 * both agree on which request types a replica may serve; only the statement
 * test differs (exact here, lexical there). */
int agent_hrana_reads_only(sqlite3 *db, const json_t *requests)
{
    return api_pipeline_reads_only(requests, sqlite_reads_only, db);
}

int agent_hrana_batch_reads_only(sqlite3 *db, const json_t *batch)
{
    json_t *requests = json_pack("[{s:s,s:O}]", "type", "batch", "batch", batch);
    int ro = requests != NULL && agent_hrana_reads_only(db, requests);
    json_decref(requests);
    return ro;
}
