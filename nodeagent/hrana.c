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

#include "api/jsonout.h"
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
    /* a cursor: execute_stmt hands step_begin and rows out as entries as
     * SQLite produces them: to the sink (streamed), or else to LINES */
    const struct agent_hrana_sink *sink;
    struct api_jw *lines;
    size_t cursor_step;
    /* last and never zeroed: only the first nstored are read (calloc
     * zeroed these 800 bytes for every point read) */
    struct stored_sql stored[STORE_MAX];
};

/* Scratch text of the statement running on this thread: its columns, an
 * in-band error, a batch's step_errors, one cursor entry. Kept between
 * requests (a thread runs one stream at a time), so a point read allocates
 * none of it; trimmed after a large one (scratch_trim). */
static __thread struct {
    struct api_jw cols, ew, step_errors, line;
} tl_scratch;

#define SCRATCH_KEEP (64u << 10)

static void scratch_trim(void)
{
    struct api_jw *all[] = {&tl_scratch.cols, &tl_scratch.ew, &tl_scratch.step_errors, &tl_scratch.line};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (all[i]->cap > SCRATCH_KEEP)
            api_jw_free(all[i]);
}

void agent_hrana_thread_exit(void)
{
    api_jw_free(&tl_scratch.cols);
    api_jw_free(&tl_scratch.ew);
    api_jw_free(&tl_scratch.step_errors);
    api_jw_free(&tl_scratch.line);
}

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

/* Its progress handler, the same way: setting and clearing a handler per
 * request wrote to a line of the connection that nothing else of a point
 * read touches (two cache misses per read over 1,000 tenants). */
static int on_progress_current(void *arg)
{
    struct agent_hrana_stream *s = agent_stmt_cache_user(arg);
    return s == NULL ? 0 : on_progress(s);
}

struct agent_hrana_stream *agent_hrana_stream_new_cached(sqlite3 *db, const struct agent_hrana_limits *limits,
                                                         struct agent_stmt_cache *stmts)
{
    struct agent_hrana_stream *s = malloc(sizeof(*s));
    if (s == NULL)
        return NULL;
    memset(s, 0, offsetof(struct agent_hrana_stream, stored));
    s->db = db;
    s->stmts = stmts;
    if (limits != NULL)
        s->limits = *limits;
    if (s->limits.budget_us > 0)
        s->budget_end_us = now_us() + s->limits.budget_us;
    if (stmts == NULL) {
        if (s->limits.stmt_timeout_ms > 0 || s->limits.budget_us > 0)
            sqlite3_progress_handler(db, 1000, on_progress, s);
        sqlite3_set_authorizer(db, authorize, s);
    } else if (agent_stmt_cache_set_user(stmts, s)) {
        sqlite3_set_authorizer(db, authorize_current, stmts);
        sqlite3_progress_handler(db, 1000, on_progress_current, stmts);
    }
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
    if (s->stmts != NULL) {
        agent_stmt_cache_set_user(s->stmts, NULL); /* the hooks stay; without a stream they allow all */
    } else {
        if (s->limits.stmt_timeout_ms > 0 || s->limits.budget_us > 0)
            sqlite3_progress_handler(s->db, 0, NULL, NULL);
        sqlite3_set_authorizer(s->db, NULL, NULL);
    }
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

/* S (LEN bytes) as a JSON string; bytes that are not valid UTF-8 become
 * U+FFFD (JSON text cannot carry them). */
static void put_text(struct api_jw *w, const char *s, size_t len)
{
    size_t clean_len;
    char *clean;
    if (api_utf8_valid(s, len)) {
        api_jw_string(w, s, len);
        return;
    }
    if ((clean = utf8_sanitize((const unsigned char *)s, len, &clean_len)) == NULL) {
        w->failed = 1;
        return;
    }
    api_jw_string(w, clean, clean_len);
    free(clean);
}

/* S as a JSON string (put_text), or null when S is NULL. */
static void put_text_or_null(struct api_jw *w, const char *s)
{
    if (s != NULL)
        put_text(w, s, strlen(s));
    else
        api_jw_null(w);
}

/* ST's result columns, [{"name","decltype"}, ...] (null where SQLite has none). */
static void put_columns(struct api_jw *w, sqlite3_stmt *st)
{
    api_jw_array(w);
    for (int c = 0; c < sqlite3_column_count(st); c++) {
        api_jw_object(w);
        api_jw_key(w, "name");
        put_text_or_null(w, sqlite3_column_name(st, c));
        api_jw_key(w, "decltype");
        put_text_or_null(w, sqlite3_column_decltype(st, c));
        api_jw_object_end(w);
    }
    api_jw_array_end(w);
}

/* An in-band error, {"message","code"}, into EW. */
static void put_error(struct api_jw *ew, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void put_error(struct api_jw *ew, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    api_jw_object(ew);
    api_jw_key(ew, "message");
    put_text(ew, msg, strlen(msg));
    api_jw_key(ew, "code");
    api_jw_cstring(ew, code);
    api_jw_object_end(ew);
}

/* The in-band error for the connection's last failure, into EW. */
static void put_sqlite_error(struct agent_hrana_stream *s, struct api_jw *ew, int at_prepare)
{
    if (s->timed_out) {
        put_error(ew, "STMT_TIMEOUT", "statement exceeded the time limit of %lld ms",
                  (long long)s->limits.stmt_timeout_ms);
        return;
    }
    int ext = sqlite3_extended_errcode(s->db);
    /* a function the authorizer denies fails prepare with a plain SQLITE_ERROR */
    if (((ext & 0xff) == SQLITE_ERROR || ext == SQLITE_AUTH) && strncmp(sqlite3_errmsg(s->db), "not authorized", 14) == 0)
        put_error(ew, "SQLITE_AUTH", "SQLite error: %s%s", sqlite3_errmsg(s->db),
                  s->limits.read_only ? " (this token is read-only)" : " (not allowed on a Shoal tenant)");
    else if (at_prepare && (ext & 0xff) == SQLITE_ERROR)
        put_error(ew, "SQL_PARSE_ERROR", "SQLite error: %s", sqlite3_errmsg(s->db));
    else
        put_error(ew, sqlite_code_name(ext), "SQLite error: %s", sqlite3_errmsg(s->db));
}

/* SRC's text as one value of W (a failed SRC fails W). */
static void put_writer(struct api_jw *w, const struct api_jw *src)
{
    if (src->failed || src->len == 0)
        w->failed = 1;
    else
        api_jw_raw(w, src->p, src->len);
}

void agent_hrana_value_write(struct api_jw *w, sqlite3_value *v)
{
    api_jw_object(w);
    api_jw_key(w, "type");
    switch (sqlite3_value_type(v)) {
    case SQLITE_INTEGER:
        api_jw_cstring(w, "integer");
        api_jw_key(w, "value");
        api_jw_int_string(w, (long long)sqlite3_value_int64(v));
        break;
    case SQLITE_FLOAT: {
        double d = sqlite3_value_double(v);
        if (!isfinite(d)) {
            api_jw_cstring(w, "null");
            break;
        }
        api_jw_cstring(w, "float");
        api_jw_key(w, "value");
        api_jw_real(w, d);
        break;
    }
    case SQLITE_TEXT: {
        const unsigned char *t = sqlite3_value_text(v);
        api_jw_cstring(w, "text");
        api_jw_key(w, "value");
        put_text(w, t ? (const char *)t : "", (size_t)sqlite3_value_bytes(v));
        break;
    }
    case SQLITE_BLOB: {
        size_t len = (size_t)sqlite3_value_bytes(v);
        size_t cap = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
        char small[512], *b64 = cap <= sizeof(small) ? small : malloc(cap);
        api_jw_cstring(w, "blob");
        api_jw_key(w, "base64");
        if (b64 == NULL) {
            w->failed = 1;
            break;
        }
        sodium_bin2base64(b64, cap, len ? sqlite3_value_blob(v) : (const void *)"", len,
                          sodium_base64_VARIANT_ORIGINAL);
        api_jw_cstring(w, b64);
        if (b64 != small)
            free(b64);
        break;
    }
    default:
        api_jw_cstring(w, "null");
    }
    api_jw_object_end(w);
}

/* Binds JSON value V to parameter I. Returns 0, or -1 with MSG for a
 * protocol error (the value itself is malformed). With ST NULL it only
 * checks V, exactly as binding would. */
static int bind_value(sqlite3_stmt *st, int i, const struct api_jv *v, char *msg, size_t cap)
{
    const char *type = api_jv_string(api_jv_get(v, "type"));
    const struct api_jv *val = api_jv_get(v, "value");

    if (!api_jv_is(v, API_JV_OBJECT) || type == NULL) {
        snprintf(msg, cap, "a value must be an object with a \"type\"");
        return -1;
    }
    if (strcmp(type, "null") == 0)
        return st != NULL ? sqlite3_bind_null(st, i) : 0, 0;
    if (strcmp(type, "integer") == 0) {
        char *end;
        long long n;
        if (api_jv_is(val, API_JV_INTEGER)) {
            n = api_jv_integer(val);
        } else {
            const char *str = api_jv_string(val);
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
        if (!api_jv_is_number(val)) {
            snprintf(msg, cap, "a float value must be a JSON number");
            return -1;
        }
        return st != NULL ? sqlite3_bind_double(st, i, api_jv_number(val)) : 0, 0;
    }
    if (strcmp(type, "text") == 0) {
        if (!api_jv_is(val, API_JV_STRING)) {
            snprintf(msg, cap, "a text value must be a string");
            return -1;
        }
        return st != NULL ? sqlite3_bind_text64(st, i, api_jv_string(val), api_jv_strlen(val),
                                                SQLITE_TRANSIENT, SQLITE_UTF8)
                          : 0,
               0;
    }
    if (strcmp(type, "blob") == 0) {
        const char *b64 = api_jv_string(api_jv_get(v, "base64"));
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
static int stmt_sql(struct agent_hrana_stream *s, const struct api_jv *obj, const char **sql, struct api_err *err)
{
    const struct api_jv *text = api_jv_get(obj, "sql"), *id = api_jv_get(obj, "sql_id");
    int has_text = text != NULL && !api_jv_is(text, API_JV_NULL), has_id = id != NULL && !api_jv_is(id, API_JV_NULL);

    if (has_text && has_id)
        return api_err_set(err, API_EINVAL, "a statement has both \"sql\" and \"sql_id\"");
    if (!has_text && !has_id)
        return api_err_set(err, API_EINVAL, "a statement has neither \"sql\" nor \"sql_id\"");
    if (has_text) {
        if (!api_jv_is(text, API_JV_STRING))
            return api_err_set(err, API_EINVAL, "\"sql\" must be a string");
        *sql = api_jv_string(text);
        return API_OK;
    }
    if (!api_jv_is(id, API_JV_INTEGER))
        return api_err_set(err, API_EINVAL, "\"sql_id\" must be an integer");
    for (size_t i = 0; i < s->nstored; i++)
        if (s->stored[i].id == api_jv_integer(id)) {
            *sql = s->stored[i].sql;
            return API_OK;
        }
    return api_err_set(err, API_EINVAL, "SQL text with id %lld was not stored in this stream",
                       (long long)api_jv_integer(id));
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

/* Prepares exactly one statement. Returns 0 with *ST set, or 1 with *ST
 * NULL and an in-band error written to EW. */
static int prepare_one(struct agent_hrana_stream *s, const char *sql, sqlite3_stmt **st, struct api_jw *ew)
{
    const char *tail = NULL;
    sqlite3_stmt *extra = NULL;
    *st = NULL;
    s->timed_out = 0;
    if (s->stmts != NULL && (*st = agent_stmt_cache_take(s->stmts, sql, strlen(sql))) != NULL)
        return 0; /* it passed every check below when it was first prepared */
    if (sqlite3_prepare_v3(s->db, sql, -1, 0, st, &tail) != SQLITE_OK) {
        put_sqlite_error(s, ew, 1);
        sqlite3_finalize(*st);
        *st = NULL;
        return 1;
    }
    if (*st == NULL) {
        put_error(ew, "SQL_NO_STATEMENT", "SQL string does not contain any statement");
        return 1;
    }
    if (is_vacuum_into(sql, (size_t)(tail - sql))) {
        sqlite3_finalize(*st);
        *st = NULL;
        put_error(ew, "SQLITE_AUTH", "SQLite error: VACUUM INTO is not allowed: it writes outside the tenant");
        return 1;
    }
    if (tail != NULL && *tail != '\0') {
        /* Anything but white space and comments after it is a second statement. */
        if (sqlite3_prepare_v3(s->db, tail, -1, 0, &extra, NULL) != SQLITE_OK || extra != NULL) {
            sqlite3_finalize(extra);
            sqlite3_finalize(*st);
            *st = NULL;
            put_error(ew, "SQL_MANY_STATEMENTS", "SQL string contains more than one statement");
            return 1;
        }
    }
    return 0;
}

/* Binds args/named_args of STMT_OBJ. Returns API_OK (with *INBAND set and
 * the error written to EW for an argument error) or a protocol error. */
static int bind_args(sqlite3_stmt *st, const struct api_jv *stmt_obj, struct api_jw *ew, int *inband,
                     struct api_err *err)
{
    const struct api_jv *args = api_jv_get(stmt_obj, "args"), *named = api_jv_get(stmt_obj, "named_args");
    size_t nargs = api_jv_size(args), nnamed = api_jv_size(named);
    int count = sqlite3_bind_parameter_count(st);
    char msg[256];

    *inband = 0;
    if ((args != NULL && !api_jv_is(args, API_JV_NULL) && !api_jv_is(args, API_JV_ARRAY)) ||
        (named != NULL && !api_jv_is(named, API_JV_NULL) && !api_jv_is(named, API_JV_ARRAY)))
        return api_err_set(err, API_EINVAL, "\"args\" and \"named_args\" must be arrays");
    if (nargs > 0 && nnamed > 0) {
        put_error(ew, "ARGS_BOTH_POSITIONAL_AND_NAMED", "statement has both positional and named arguments");
        *inband = 1;
        return API_OK;
    }
    if ((int)nargs > count) {
        put_error(ew, "ARGS_INVALID", "%zu arguments given but the statement has %d parameters", nargs, count);
        *inband = 1;
        return API_OK;
    }
    for (int i = 1; i <= count; i++) {
        const char *name = sqlite3_bind_parameter_name(st, i);
        const struct api_jv *value = NULL;
        if (name == NULL) {
            value = (size_t)i <= nargs ? api_jv_at(args, (size_t)i - 1) : NULL;
        } else if (name[0] == '?') {
            long idx = strtol(name + 1, NULL, 10);
            value = (idx >= 1 && (size_t)idx <= nargs) ? api_jv_at(args, (size_t)idx - 1) : NULL;
        } else {
            for (size_t k = 0; k < nnamed && value == NULL; k++) {
                const struct api_jv *na = api_jv_at(named, k);
                const char *n = api_jv_string(api_jv_get(na, "name"));
                if (n == NULL)
                    return api_err_set(err, API_EINVAL, "a named argument needs a \"name\" string");
                if (strcmp(n, name) == 0 || strcmp(n, name + 1) == 0)
                    value = api_jv_get(na, "value");
            }
        }
        if (value == NULL) {
            put_error(ew, "ARGS_INVALID", "value for parameter %s not found", name ? name : "?");
            *inband = 1;
            return API_OK;
        }
        if (bind_value(st, i, value, msg, sizeof(msg)) != 0)
            return api_err_set(err, API_EINVAL, "%s", msg);
    }
    return API_OK;
}

/* A cursor entry, the text in S->line, goes to the stream's sink (which
 * may block for room until the running statement's deadline, or one time
 * limit from now between statements), or without a sink to the buffered
 * cursor's lines, one per line. */
static int emit_line(struct agent_hrana_stream *s, struct api_err *err)
{
    if (tl_scratch.line.failed)
        return api_err_set(err, API_ENOMEM, "out of memory");
    if (s->sink != NULL) {
        int64_t wait = s->limits.stmt_timeout_ms > 0 ? s->limits.stmt_timeout_ms : AGENT_HRANA_CURSOR_STALL_MS;
        int64_t deadline = s->deadline_ms > 0 ? s->deadline_ms : now_ms() + wait;
        return s->sink->entry(s->sink->ud, tl_scratch.line.p, tl_scratch.line.len, deadline, err);
    }
    api_jw_append(s->lines, tl_scratch.line.p, tl_scratch.line.len);
    api_jw_append(s->lines, "\n", 1);
    return s->lines->failed ? api_err_set(err, API_ENOMEM, "out of memory") : API_OK;
}

/* step_begin for the current step, once SQLite has produced a first row or
 * finished: a statement that fails before that sends only its step_error. */
static int emit_begin(struct agent_hrana_stream *s, struct api_err *err)
{
    api_jw_reset(&tl_scratch.line);
    api_jw_object(&tl_scratch.line);
    api_jw_key(&tl_scratch.line, "type");
    api_jw_cstring(&tl_scratch.line, "step_begin");
    api_jw_key(&tl_scratch.line, "step");
    api_jw_int(&tl_scratch.line, (long long)s->cursor_step);
    api_jw_key(&tl_scratch.line, "cols");
    put_writer(&tl_scratch.line, &tl_scratch.cols);
    api_jw_object_end(&tl_scratch.line);
    return emit_line(s, err);
}

/* How a statement ended: its result (or in-band error) went out already. */
struct stmt_done {
    int ok; /* ran; else its in-band error is in the error writer */
    long long affected;
    int has_rowid;
    long long rowid;
};

/* ST's result columns as JSON into tl_scratch.cols: kept with a cached
 * statement (their names and declared types are cold in SQLite's
 * statement) until SQLite re-prepares it. */
static void columns_json(struct agent_hrana_stream *s, sqlite3_stmt *st)
{
    size_t note_len = 0;
    const char *note = s->stmts != NULL ? agent_stmt_cache_note(s->stmts, st, &note_len) : NULL;
    api_jw_reset(&tl_scratch.cols);
    if (note != NULL) {
        api_jw_append(&tl_scratch.cols, note, note_len);
        return;
    }
    put_columns(&tl_scratch.cols, st);
    if (s->stmts != NULL && !tl_scratch.cols.failed)
        agent_stmt_cache_set_note(s->stmts, st, tl_scratch.cols.p, tl_scratch.cols.len);
}

/* Runs one Stmt. With W (a pipeline's execute, a batch step) its result
 * object goes to W; in a cursor (W NULL) step_begin and each row go out as
 * entries (emit_line) as SQLite produces them. An in-band error goes to EW
 * (DONE->ok 0), and nothing of the statement stays in W; a buffered cursor
 * drops its step_begin and rows too, a streamed one has sent them. The
 * response size cap applies except under a sink, whose error (and a
 * protocol error) is returned. */
static int execute_stmt(struct agent_hrana_stream *s, const struct api_jv *stmt_obj, struct api_jw *w,
                        struct api_jw *ew, struct stmt_done *done, struct agent_hrana_outcome *out,
                        struct api_err *err)
{
    const char *sql = NULL;
    sqlite3_stmt *st = NULL;
    const struct api_jv *want = api_jv_get(stmt_obj, "want_rows");
    int want_rows = want == NULL || api_jv_is(want, API_JV_NULL) || api_jv_is(want, API_JV_TRUE);
    int rc, inband;
    int64_t t0 = now_ms();
    struct api_jw_mark mark = {0};

    memset(done, 0, sizeof(*done));
    if (!api_jv_is(stmt_obj, API_JV_OBJECT))
        return api_err_set(err, API_EINVAL, "\"stmt\" must be an object");
    if (want != NULL && !api_jv_is(want, API_JV_NULL) && !api_jv_is_boolean(want))
        return api_err_set(err, API_EINVAL, "\"want_rows\" must be a boolean");
    if ((rc = stmt_sql(s, stmt_obj, &sql, err)) != API_OK)
        return rc;
    if (prepare_one(s, sql, &st, ew))
        return API_OK;
    if ((rc = bind_args(st, stmt_obj, ew, &inband, err)) != API_OK || inband) {
        sqlite3_finalize(st);
        return rc;
    }
    struct api_jw *dest = w != NULL ? w : s->lines; /* what an error rewinds (NULL under a sink) */
    if (dest != NULL)
        api_jw_mark(dest, &mark);
    sqlite3_int64 changes_before = sqlite3_total_changes64(s->db);
    uint64_t nrows = 0;
    int begun = 0, sink_rc = API_OK;
    int capped = s->sink == NULL && s->limits.max_response_bytes > 0;
    s->timed_out = 0;
    stmt_clock_start(s);
    rc = sqlite3_step(st);
    /* the columns after the first step: SQLite re-prepares a statement
     * whose schema changed there, and its columns may have changed with it
     * (before, a read right after an ALTER TABLE named the old ones) */
    int ncols = sqlite3_column_count(st);
    columns_json(s, st);
    if (w != NULL) {
        api_jw_object(w);
        api_jw_key(w, "cols");
        put_writer(w, &tl_scratch.cols);
        api_jw_key(w, "rows");
        api_jw_array(w);
    }
    for (; rc == SQLITE_ROW; rc = sqlite3_step(st)) {
        nrows++;
        if (w == NULL && !begun) {
            begun = 1;
            if ((sink_rc = emit_begin(s, err)) != API_OK)
                break;
        }
        if (!want_rows)
            continue;
        struct api_jw *rw = w;
        if (w == NULL) {
            rw = &tl_scratch.line;
            api_jw_reset(rw);
            api_jw_object(rw);
            api_jw_key(rw, "type");
            api_jw_cstring(rw, "row");
            api_jw_key(rw, "row");
        }
        api_jw_array(rw);
        for (int c = 0; c < ncols; c++) {
            sqlite3_value *v = sqlite3_column_value(st, c);
            s->response_bytes += 16 + (size_t)sqlite3_value_bytes(v);
            agent_hrana_value_write(rw, v);
        }
        api_jw_array_end(rw);
        if (w == NULL) {
            api_jw_object_end(rw);
            if ((sink_rc = emit_line(s, err)) != API_OK)
                break;
        }
        if (capped && s->response_bytes > s->limits.max_response_bytes) {
            rc = -1;
            break;
        }
    }
    stmt_clock_stop(s);
    if (sink_rc == API_OK && rc == SQLITE_DONE && w == NULL && !begun)
        sink_rc = emit_begin(s, err);
    if (sink_rc != API_OK) {
        sqlite3_reset(st);
        sqlite3_finalize(st);
        if (dest != NULL)
            api_jw_rewind(dest, &mark);
        return sink_rc;
    }
    if (rc != SQLITE_DONE) {
        if (rc == -1)
            put_error(ew, "RESPONSE_TOO_LARGE", "the response is larger than %zu bytes", s->limits.max_response_bytes);
        else
            put_sqlite_error(s, ew, 0);
        sqlite3_reset(st);
        sqlite3_finalize(st);
        if (dest != NULL)
            api_jw_rewind(dest, &mark);
        return API_OK;
    }
    int readonly = sqlite3_stmt_readonly(st);
    int changed = sqlite3_total_changes64(s->db) != changes_before;
    done->ok = 1;
    done->affected = (changed && !readonly) ? (long long)sqlite3_changes64(s->db) : 0;
    if (changed && (starts_with_keyword(sql, "insert") || starts_with_keyword(sql, "replace") ||
                    starts_with_keyword(sql, "with"))) {
        done->has_rowid = 1;
        done->rowid = (long long)sqlite3_last_insert_rowid(s->db);
    }
    if (!readonly)
        out->wrote = 1;
    out->rows_read += nrows;
    out->rows_written += (uint64_t)done->affected;
    /* Only plain queries are kept: a PRAGMA can be read-only and still be
     * one that only some tokens may run (the authorizer ran at prepare). */
    if (s->stmts != NULL && (starts_with_keyword(sql, "select") || starts_with_keyword(sql, "with")))
        agent_stmt_cache_give(s->stmts, sql, strlen(sql), st);
    else
        sqlite3_finalize(st);
    if (w != NULL) {
        api_jw_array_end(w); /* rows */
        api_jw_key(w, "affected_row_count");
        api_jw_int(w, done->affected);
        api_jw_key(w, "last_insert_rowid");
        if (done->has_rowid)
            api_jw_int_string(w, done->rowid);
        else
            api_jw_null(w);
        api_jw_key(w, "replication_index");
        api_jw_null(w);
        api_jw_key(w, "rows_read");
        api_jw_int(w, (long long)nrows);
        api_jw_key(w, "rows_written");
        api_jw_int(w, done->affected);
        api_jw_key(w, "query_duration_ms");
        api_jw_real(w, (double)(now_ms() - t0));
        api_jw_object_end(w);
    }
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* batches                                                             */

enum { STEP_SKIPPED = 0, STEP_OK = 1, STEP_FAILED = 2 };

/* Checks a condition's shape and that it refers only to earlier steps. */
static int cond_check(const struct api_jv *c, size_t current, int version, int depth, struct api_err *err)
{
    const char *type = api_jv_string(api_jv_get(c, "type"));
    if (depth > 64)
        return api_err_set(err, API_EINVAL, "batch condition is nested too deeply");
    if (!api_jv_is(c, API_JV_OBJECT) || type == NULL)
        return api_err_set(err, API_EINVAL, "a batch condition must be an object with a \"type\"");
    if (strcmp(type, "ok") == 0 || strcmp(type, "error") == 0) {
        const struct api_jv *step = api_jv_get(c, "step");
        if (!api_jv_is(step, API_JV_INTEGER) || api_jv_integer(step) < 0 ||
            (size_t)api_jv_integer(step) >= current)
            return api_err_set(err, API_EINVAL, "Invalid reference to step in a batch condition");
        return API_OK;
    }
    if (strcmp(type, "not") == 0)
        return cond_check(api_jv_get(c, "cond"), current, version, depth + 1, err);
    if (strcmp(type, "and") == 0 || strcmp(type, "or") == 0) {
        const struct api_jv *conds = api_jv_get(c, "conds");
        if (!api_jv_is(conds, API_JV_ARRAY))
            return api_err_set(err, API_EINVAL, "\"%s\" condition needs a \"conds\" array", type);
        for (size_t i = 0; i < api_jv_size(conds); i++) {
            int rc = cond_check(api_jv_at(conds, i), current, version, depth + 1, err);
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

static int cond_eval(struct agent_hrana_stream *s, const struct api_jv *c, const unsigned char *state)
{
    const char *type = api_jv_string(api_jv_get(c, "type"));
    if (strcmp(type, "ok") == 0)
        return state[api_jv_integer(api_jv_get(c, "step"))] == STEP_OK;
    if (strcmp(type, "error") == 0)
        return state[api_jv_integer(api_jv_get(c, "step"))] == STEP_FAILED;
    if (strcmp(type, "not") == 0)
        return !cond_eval(s, api_jv_get(c, "cond"), state);
    if (strcmp(type, "and") == 0 || strcmp(type, "or") == 0) {
        int is_and = type[0] == 'a';
        const struct api_jv *conds = api_jv_get(c, "conds");
        for (size_t i = 0; i < api_jv_size(conds); i++) {
            int v = cond_eval(s, api_jv_at(conds, i), state);
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
static int batch_check(const struct api_jv *batch, int version, struct api_err *err)
{
    const struct api_jv *steps = api_jv_get(batch, "steps");
    int rc;

    if (!api_jv_is(batch, API_JV_OBJECT) || !api_jv_is(steps, API_JV_ARRAY))
        return api_err_set(err, API_EINVAL, "\"batch\" must be an object with a \"steps\" array");
    for (size_t i = 0; i < api_jv_size(steps); i++) {
        const struct api_jv *step = api_jv_at(steps, i), *cond = api_jv_get(step, "condition");
        if (!api_jv_is(step, API_JV_OBJECT) || !api_jv_is(api_jv_get(step, "stmt"), API_JV_OBJECT))
            return api_err_set(err, API_EINVAL, "batch step %zu needs a \"stmt\" object", i);
        if (cond != NULL && !api_jv_is(cond, API_JV_NULL) && (rc = cond_check(cond, i, version, 0, err)) != API_OK)
            return rc;
    }
    return API_OK;
}

static int execute_batch(struct agent_hrana_stream *s, const struct api_jv *batch, int version, struct api_jw *w,
                         struct agent_hrana_outcome *out, struct api_err *err)
{
    const struct api_jv *steps = api_jv_get(batch, "steps");
    size_t n;
    unsigned char *state;
    int rc;

    if ((rc = batch_check(batch, version, err)) != API_OK)
        return rc;
    n = api_jv_size(steps);
    if ((state = calloc(n ? n : 1, 1)) == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    /* step_results go out as they come; step_errors wait in their own writer */
    api_jw_reset(&tl_scratch.step_errors);
    api_jw_array(&tl_scratch.step_errors);
    api_jw_object(w);
    api_jw_key(w, "step_results");
    api_jw_array(w);
    for (size_t i = 0; i < n; i++) {
        const struct api_jv *step = api_jv_at(steps, i), *cond = api_jv_get(step, "condition");
        struct stmt_done done;
        if (cond != NULL && !api_jv_is(cond, API_JV_NULL) && !cond_eval(s, cond, state)) {
            api_jw_null(w);
            api_jw_null(&tl_scratch.step_errors);
            continue;
        }
        api_jw_reset(&tl_scratch.ew);
        if ((rc = execute_stmt(s, api_jv_get(step, "stmt"), w, &tl_scratch.ew, &done, out, err)) != API_OK) {
            free(state);
            return rc;
        }
        state[i] = done.ok ? STEP_OK : STEP_FAILED;
        if (done.ok) {
            api_jw_null(&tl_scratch.step_errors);
        } else {
            api_jw_null(w);
            put_writer(&tl_scratch.step_errors, &tl_scratch.ew);
        }
    }
    free(state);
    api_jw_array_end(w);
    api_jw_array_end(&tl_scratch.step_errors);
    api_jw_key(w, "step_errors");
    put_writer(w, &tl_scratch.step_errors);
    api_jw_key(w, "replication_index");
    api_jw_null(w);
    api_jw_object_end(w);
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* sequence, describe, store                                           */

/* Runs SQL's statements in turn: 0, or 1 with the first failure's in-band
 * error written to EW. */
static int execute_sequence(struct agent_hrana_stream *s, const char *sql, struct api_jw *ew,
                            struct agent_hrana_outcome *out)
{
    const char *p = sql;
    while (p != NULL && *p != '\0') {
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        s->timed_out = 0;
        if (sqlite3_prepare_v3(s->db, p, -1, 0, &st, &tail) != SQLITE_OK) {
            sqlite3_finalize(st);
            put_sqlite_error(s, ew, 1);
            return 1;
        }
        if (st == NULL)
            break; /* only white space or comments left */
        if (is_vacuum_into(p, (size_t)(tail - p))) {
            sqlite3_finalize(st);
            put_error(ew, "SQLITE_AUTH", "SQLite error: VACUUM INTO is not allowed: it writes outside the tenant");
            return 1;
        }
        int rc;
        stmt_clock_start(s);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            ;
        stmt_clock_stop(s);
        if (rc != SQLITE_DONE) {
            put_sqlite_error(s, ew, 0);
            sqlite3_finalize(st);
            return 1;
        }
        if (!sqlite3_stmt_readonly(st))
            out->wrote = 1;
        sqlite3_finalize(st);
        p = tail;
    }
    return 0;
}

/* Describes REQ's statement: its result object to W (*OK 1), or its
 * in-band error to EW; or a protocol error. */
static int describe(struct agent_hrana_stream *s, const struct api_jv *req, struct api_jw *w, struct api_jw *ew,
                    int *ok, struct api_err *err)
{
    const char *sql;
    sqlite3_stmt *st;
    int rc;

    *ok = 0;
    if ((rc = stmt_sql(s, req, &sql, err)) != API_OK)
        return rc;
    if (prepare_one(s, sql, &st, ew))
        return API_OK;
    api_jw_object(w);
    api_jw_key(w, "params");
    api_jw_array(w);
    for (int i = 1; i <= sqlite3_bind_parameter_count(st); i++) {
        const char *name = sqlite3_bind_parameter_name(st, i);
        api_jw_object(w);
        api_jw_key(w, "name");
        put_text_or_null(w, name);
        api_jw_object_end(w);
    }
    api_jw_array_end(w);
    api_jw_key(w, "cols");
    put_columns(w, st);
    api_jw_key(w, "is_explain");
    api_jw_bool(w, sqlite3_stmt_isexplain(st) != 0);
    api_jw_key(w, "is_readonly");
    api_jw_bool(w, sqlite3_stmt_readonly(st) != 0);
    api_jw_object_end(w);
    sqlite3_finalize(st);
    *ok = 1;
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* the pipeline                                                        */

/* {"type":"ok","response":{"type":TYPE ... : the fields follow, then ok_end. */
static void ok_begin(struct api_jw *w, const char *type)
{
    api_jw_object(w);
    api_jw_key(w, "type");
    api_jw_cstring(w, "ok");
    api_jw_key(w, "response");
    api_jw_object(w);
    api_jw_key(w, "type");
    api_jw_cstring(w, type);
}

static void ok_end(struct api_jw *w)
{
    api_jw_object_end(w);
    api_jw_object_end(w);
}

static void ok_result(struct api_jw *w, const char *type)
{
    ok_begin(w, type);
    ok_end(w);
}

/* {"type":"error","error":EW} */
static void error_result(struct api_jw *w, const struct api_jw *ew, struct agent_hrana_outcome *out)
{
    api_jw_object(w);
    api_jw_key(w, "type");
    api_jw_cstring(w, "error");
    api_jw_key(w, "error");
    put_writer(w, ew);
    api_jw_object_end(w);
    out->failed = 1;
}

static int execute_one(struct agent_hrana_stream *s, const struct api_jv *req, int version, struct api_jw *w,
                       struct agent_hrana_outcome *out, struct api_err *err)
{
    const char *type = api_jv_string(api_jv_get(req, "type"));
    struct api_jw_mark mark;
    int rc;

    if (!api_jv_is(req, API_JV_OBJECT) || type == NULL)
        return api_err_set(err, API_EINVAL, "each request must be an object with a \"type\"");
    if (s->closed)
        return api_err_set(err, API_EINVAL, "request '%.20s' after the stream was closed", type);
    api_jw_reset(&tl_scratch.ew);
    api_jw_mark(w, &mark);
    if (strcmp(type, "execute") == 0) {
        struct stmt_done done;
        ok_begin(w, "execute");
        api_jw_key(w, "result");
        if ((rc = execute_stmt(s, api_jv_get(req, "stmt"), w, &tl_scratch.ew, &done, out, err)) != API_OK)
            return rc;
        if (done.ok) {
            ok_end(w);
        } else {
            api_jw_rewind(w, &mark);
            error_result(w, &tl_scratch.ew, out);
        }
    } else if (strcmp(type, "batch") == 0) {
        ok_begin(w, "batch");
        api_jw_key(w, "result");
        if ((rc = execute_batch(s, api_jv_get(req, "batch"), version, w, out, err)) != API_OK)
            return rc;
        ok_end(w);
    } else if (strcmp(type, "sequence") == 0) {
        const char *sql;
        if ((rc = stmt_sql(s, req, &sql, err)) != API_OK)
            return rc;
        if (execute_sequence(s, sql, &tl_scratch.ew, out))
            error_result(w, &tl_scratch.ew, out);
        else
            ok_result(w, "sequence");
    } else if (strcmp(type, "describe") == 0) {
        int ok;
        ok_begin(w, "describe");
        api_jw_key(w, "result");
        if ((rc = describe(s, req, w, &tl_scratch.ew, &ok, err)) != API_OK)
            return rc;
        if (ok) {
            ok_end(w);
        } else {
            api_jw_rewind(w, &mark);
            error_result(w, &tl_scratch.ew, out);
        }
    } else if (strcmp(type, "store_sql") == 0) {
        const struct api_jv *id = api_jv_get(req, "sql_id"), *sql = api_jv_get(req, "sql");
        if (!api_jv_is(id, API_JV_INTEGER) || !api_jv_is(sql, API_JV_STRING))
            return api_err_set(err, API_EINVAL, "store_sql needs an integer \"sql_id\" and a string \"sql\"");
        for (size_t i = 0; i < s->nstored; i++)
            if (s->stored[i].id == api_jv_integer(id))
                return api_err_set(err, API_EINVAL, "SQL text with id %lld is already stored",
                                   (long long)api_jv_integer(id));
        if (s->nstored >= STORE_MAX) {
            put_error(&tl_scratch.ew, "SQL_STORE_TOO_MANY", "at most %d SQL texts per stream", STORE_MAX);
            error_result(w, &tl_scratch.ew, out);
        } else if (api_jv_strlen(sql) > STORE_SQL_MAX) {
            put_error(&tl_scratch.ew, "SQL_STORE_TOO_LARGE", "stored SQL texts are limited to %d bytes", STORE_SQL_MAX);
            error_result(w, &tl_scratch.ew, out);
        } else {
            char *copy = strdup(api_jv_string(sql));
            if (copy == NULL)
                return api_err_set(err, API_ENOMEM, "out of memory");
            s->stored[s->nstored].id = (int32_t)api_jv_integer(id);
            s->stored[s->nstored].sql = copy;
            s->nstored++;
            ok_result(w, "store_sql");
        }
    } else if (strcmp(type, "close_sql") == 0) {
        const struct api_jv *id = api_jv_get(req, "sql_id");
        if (!api_jv_is(id, API_JV_INTEGER))
            return api_err_set(err, API_EINVAL, "close_sql needs an integer \"sql_id\"");
        for (size_t i = 0; i < s->nstored; i++)
            if (s->stored[i].id == api_jv_integer(id)) {
                free(s->stored[i].sql);
                s->stored[i] = s->stored[--s->nstored];
                break;
            }
        ok_result(w, "close_sql");
    } else if (strcmp(type, "close") == 0) {
        s->closed = 1;
        out->closed = 1;
        ok_result(w, "close");
    } else if (strcmp(type, "get_autocommit") == 0) {
        if (version < 3)
            return api_err_set(err, API_EINVAL, "get_autocommit needs Hrana 3 (/v3/pipeline)");
        ok_begin(w, "get_autocommit");
        api_jw_key(w, "is_autocommit");
        api_jw_bool(w, sqlite3_get_autocommit(s->db) != 0);
        ok_end(w);
    } else {
        return api_err_set(err, API_EINVAL, "unknown request type '%.20s'", type);
    }
    if (w->failed)
        return api_err_set(err, API_ENOMEM, "out of memory");
    return API_OK;
}

int agent_hrana_execute(struct agent_hrana_stream *s, const struct api_jv *requests, int version,
                        struct api_jw *results, struct agent_hrana_outcome *out, struct api_err *err)
{
    int rc = API_OK;

    memset(out, 0, sizeof(*out));
    if (!api_jv_is(requests, API_JV_ARRAY))
        return api_err_set(err, API_EINVAL, "\"requests\" must be an array");
    s->response_bytes = 0;
    s->active = 1;
    api_jw_array(results);
    for (size_t i = 0; i < api_jv_size(requests) && rc == API_OK; i++)
        rc = execute_one(s, api_jv_at(requests, i), version, results, out, err);
    api_jw_array_end(results);
    s->active = 0;
    out->in_txn = !sqlite3_get_autocommit(s->db);
    scratch_trim();
    return rc;
}

/* ------------------------------------------------------------------ */
/* cursors                                                             */

/* 1 if executing STMT_OBJ cannot raise a protocol error: what execute_stmt,
 * stmt_sql, bind_args and bind_value check as they go, checked here for
 * every argument whether or not the statement would use it. */
static int stmt_well_formed(struct agent_hrana_stream *s, const struct api_jv *stmt_obj)
{
    const struct api_jv *want = api_jv_get(stmt_obj, "want_rows");
    const struct api_jv *args = api_jv_get(stmt_obj, "args"), *named = api_jv_get(stmt_obj, "named_args");
    const char *sql;
    struct api_err err;
    char msg[256];
    const struct api_jv *v;

    if (!api_jv_is(stmt_obj, API_JV_OBJECT) ||
        (want != NULL && !api_jv_is(want, API_JV_NULL) && !api_jv_is_boolean(want)))
        return 0;
    if (stmt_sql(s, stmt_obj, &sql, &err) != API_OK)
        return 0;
    if ((args != NULL && !api_jv_is(args, API_JV_NULL) && !api_jv_is(args, API_JV_ARRAY)) ||
        (named != NULL && !api_jv_is(named, API_JV_NULL) && !api_jv_is(named, API_JV_ARRAY)))
        return 0;
    for (size_t i = 0; (v = api_jv_at(args, i)) != NULL; i++)
        if (bind_value(NULL, 0, v, msg, sizeof(msg)) != 0)
            return 0;
    for (size_t i = 0; (v = api_jv_at(named, i)) != NULL; i++)
        if (!api_jv_is(api_jv_get(v, "name"), API_JV_STRING) ||
            bind_value(NULL, 0, api_jv_get(v, "value"), msg, sizeof(msg)) != 0)
            return 0;
    return 1;
}

int agent_hrana_cursor_check(struct agent_hrana_stream *s, const struct api_jv *batch, int version)
{
    struct api_err err;
    const struct api_jv *step, *steps = api_jv_get(batch, "steps");

    if (batch_check(batch, version, &err) != API_OK)
        return 0;
    for (size_t i = 0; (step = api_jv_at(steps, i)) != NULL; i++)
        if (!stmt_well_formed(s, api_jv_get(step, "stmt")))
            return 0;
    return 1;
}

/* A cursor's walk over BATCH: each executed step's entries go out
 * (emit_line) as they are produced: step_begin and rows from execute_stmt,
 * then step_end or step_error here. Skipped steps produce nothing. */
static int cursor_batch(struct agent_hrana_stream *s, const struct api_jv *batch, int version,
                        struct agent_hrana_outcome *out, struct api_err *err)
{
    const struct api_jv *steps = api_jv_get(batch, "steps");
    unsigned char *state;
    size_t n;
    int rc;

    if ((rc = batch_check(batch, version, err)) != API_OK)
        return rc;
    n = api_jv_size(steps);
    if ((state = calloc(n ? n : 1, 1)) == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const struct api_jv *step = api_jv_at(steps, i), *cond = api_jv_get(step, "condition");
        struct stmt_done done;
        if (cond != NULL && !api_jv_is(cond, API_JV_NULL) && !cond_eval(s, cond, state))
            continue; /* skipped: no entries */
        s->cursor_step = i;
        api_jw_reset(&tl_scratch.ew);
        if ((rc = execute_stmt(s, api_jv_get(step, "stmt"), NULL, &tl_scratch.ew, &done, out, err)) != API_OK)
            break;
        state[i] = done.ok ? STEP_OK : STEP_FAILED;
        api_jw_reset(&tl_scratch.line);
        api_jw_object(&tl_scratch.line);
        api_jw_key(&tl_scratch.line, "type");
        if (done.ok) {
            api_jw_cstring(&tl_scratch.line, "step_end");
            api_jw_key(&tl_scratch.line, "affected_row_count");
            api_jw_int(&tl_scratch.line, done.affected);
            api_jw_key(&tl_scratch.line, "last_insert_rowid");
            if (done.has_rowid)
                api_jw_int_string(&tl_scratch.line, done.rowid);
            else
                api_jw_null(&tl_scratch.line);
        } else {
            api_jw_cstring(&tl_scratch.line, "step_error");
            api_jw_key(&tl_scratch.line, "step");
            api_jw_int(&tl_scratch.line, (long long)i);
            api_jw_key(&tl_scratch.line, "error");
            put_writer(&tl_scratch.line, &tl_scratch.ew);
        }
        api_jw_object_end(&tl_scratch.line);
        if ((rc = emit_line(s, err)) != API_OK)
            break;
    }
    free(state);
    return rc;
}

/* cursor_batch with the entries going to LINES (buffered) or SINK (streamed). */
static int run_cursor(struct agent_hrana_stream *s, const struct api_jv *batch, int version, struct api_jw *lines,
                      const struct agent_hrana_sink *sink, struct agent_hrana_outcome *out, struct api_err *err)
{
    int rc;

    memset(out, 0, sizeof(*out));
    s->response_bytes = 0;
    s->active = 1;
    s->lines = lines;
    s->sink = sink;
    rc = cursor_batch(s, batch, version, out, err);
    s->lines = NULL;
    s->sink = NULL;
    s->active = 0;
    out->in_txn = !sqlite3_get_autocommit(s->db);
    scratch_trim();
    return rc;
}

int agent_hrana_cursor(struct agent_hrana_stream *s, const struct api_jv *batch, int version, struct api_jw *lines,
                       struct agent_hrana_outcome *out, struct api_err *err)
{
    return run_cursor(s, batch, version, lines, NULL, out, err);
}

int agent_hrana_cursor_stream(struct agent_hrana_stream *s, const struct api_jv *batch, int version,
                              const struct agent_hrana_sink *sink, struct agent_hrana_outcome *out,
                              struct api_err *err)
{
    return run_cursor(s, batch, version, NULL, sink, out, err);
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
int agent_hrana_reads_only(sqlite3 *db, const struct api_jv *requests)
{
    return api_pipeline_reads_only(requests, sqlite_reads_only, db);
}

int agent_hrana_batch_reads_only(sqlite3 *db, const struct api_jv *batch)
{
    return api_batch_reads_only(batch, sqlite_reads_only, db);
}
