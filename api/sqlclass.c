/*
 * api/sqlclass.c: read-only classification of Hrana pipelines (sqlclass.h).
 *
 * The lexical classifier is a tokenizer just good enough to find each
 * statement's leading keyword: it skips quoted strings and identifiers
 * ('..', "..", `..`, [..]), line and block comments, and counts parentheses
 * so that the main verb of `WITH ... AS (...) SELECT` is found at depth 0.
 * It must never say "read" for a write that would succeed on a replica
 * otherwise unnoticed; it may say "write" for a read (the primary serves it).
 * Either mistake is caught by the agent, which checks exactly with SQLite.
 */
#include "api/sqlclass.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "api/names.h"
#include "api/workq.h"

enum stmt_kind { KIND_EMPTY, KIND_READ, KIND_WRITE };

struct lexer {
    const char *p;
    int bad; /* unterminated quote or comment */
};

/* Skips whitespace and comments. */
static void skip_space(struct lexer *lx)
{
    for (;;) {
        while (isspace((unsigned char)*lx->p))
            lx->p++;
        if (lx->p[0] == '-' && lx->p[1] == '-') {
            while (*lx->p && *lx->p != '\n')
                lx->p++;
        } else if (lx->p[0] == '/' && lx->p[1] == '*') {
            const char *end = strstr(lx->p + 2, "*/");
            if (end == NULL) {
                lx->bad = 1;
                lx->p += strlen(lx->p);
                return;
            }
            lx->p = end + 2;
        } else {
            return;
        }
    }
}

/* Skips a quoted token starting at lx->p (the opening quote). SQL doubles a
 * quote to escape it ('it''s'); [..] has no escape. */
static void skip_quoted(struct lexer *lx)
{
    char close = *lx->p == '[' ? ']' : *lx->p;
    lx->p++;
    for (;;) {
        if (*lx->p == '\0') {
            lx->bad = 1;
            return;
        }
        if (*lx->p == close) {
            if (close != ']' && lx->p[1] == close) {
                lx->p += 2;
                continue;
            }
            lx->p++;
            return;
        }
        lx->p++;
    }
}

/* The next token: a word (letters, digits, _) into WORD (upper-cased,
 * truncated), or a single punctuation character, or a quoted token (WORD
 * gets "\""). Returns 0 at the end of the statement (`;` or NUL, not
 * consumed). */
static int next_token(struct lexer *lx, char *word, size_t cap)
{
    skip_space(lx);
    if (*lx->p == '\0' || *lx->p == ';' || lx->bad)
        return 0;
    if (*lx->p == '\'' || *lx->p == '"' || *lx->p == '`' || *lx->p == '[') {
        skip_quoted(lx);
        snprintf(word, cap, "\"");
        return !lx->bad;
    }
    if (isalnum((unsigned char)*lx->p) || *lx->p == '_' || (unsigned char)*lx->p >= 0x80) {
        size_t n = 0;
        while (isalnum((unsigned char)*lx->p) || *lx->p == '_' || *lx->p == '$' || (unsigned char)*lx->p >= 0x80) {
            if (n + 1 < cap)
                word[n++] = (char)toupper((unsigned char)*lx->p);
            lx->p++;
        }
        word[n] = '\0';
        return 1;
    }
    word[0] = *lx->p++;
    word[1] = '\0';
    return 1;
}

static int word_in(const char *w, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(w, *list) == 0)
            return 1;
    return 0;
}

/* Pragmas that act even without a value; everything else read bare is a read. */
static const char *const acting_pragmas[] = {"OPTIMIZE", "INCREMENTAL_VACUUM", "WAL_CHECKPOINT", "SHRINK_MEMORY",
                                             NULL};
/* Pragmas whose argument in parentheses names what to read, not a new value. */
static const char *const reading_pragma_fns[] = {"TABLE_INFO",       "TABLE_XINFO", "INDEX_LIST", "INDEX_INFO",
                                                 "INDEX_XINFO",      "FOREIGN_KEY_LIST", "INTEGRITY_CHECK",
                                                 "QUICK_CHECK",      "FOREIGN_KEY_CHECK", "TABLE_LIST", NULL};

static enum stmt_kind classify_pragma(struct lexer *lx)
{
    char w[64], name[64] = "";
    while (next_token(lx, w, sizeof(w))) {
        if (strcmp(w, "=") == 0)
            return KIND_WRITE;
        if (strcmp(w, "(") == 0)
            return word_in(name, reading_pragma_fns) ? KIND_READ : KIND_WRITE;
        if (strcmp(w, ".") != 0 && strcmp(w, "\"") != 0)
            snprintf(name, sizeof(name), "%s", w); /* schema.name: the last word is the pragma */
    }
    if (lx->bad || name[0] == '\0')
        return KIND_WRITE;
    return word_in(name, acting_pragmas) ? KIND_WRITE : KIND_READ;
}

/* WITH [RECURSIVE] cte AS (...), ...: the verb at depth 0 after the CTEs. */
static enum stmt_kind classify_with(struct lexer *lx)
{
    static const char *const writes[] = {"INSERT", "UPDATE", "DELETE", "REPLACE", NULL};
    char w[64];
    int depth = 0;
    while (next_token(lx, w, sizeof(w))) {
        if (strcmp(w, "(") == 0) {
            depth++;
        } else if (strcmp(w, ")") == 0) {
            depth--;
        } else if (depth == 0) {
            if (strcmp(w, "SELECT") == 0 || strcmp(w, "VALUES") == 0)
                return KIND_READ;
            if (word_in(w, writes))
                return KIND_WRITE;
        }
    }
    return KIND_WRITE;
}

static enum stmt_kind classify_stmt(struct lexer *lx)
{
    char w[64];
    if (!next_token(lx, w, sizeof(w)))
        return lx->bad ? KIND_WRITE : KIND_EMPTY;
    if (strcmp(w, "SELECT") == 0 || strcmp(w, "VALUES") == 0 || strcmp(w, "EXPLAIN") == 0 ||
        strcmp(w, "COMMIT") == 0 || strcmp(w, "END") == 0 || strcmp(w, "ROLLBACK") == 0 ||
        strcmp(w, "SAVEPOINT") == 0 || strcmp(w, "RELEASE") == 0 || strcmp(w, "(") == 0) {
        /* "(" is a parenthesised SELECT; everything else above only reads
         * or only ends a transaction */
        return KIND_READ;
    }
    if (strcmp(w, "BEGIN") == 0) {
        /* BEGIN IMMEDIATE/EXCLUSIVE take the write lock at once:
         * sqlite3_stmt_readonly says "write" for them too */
        if (next_token(lx, w, sizeof(w)) && (strcmp(w, "IMMEDIATE") == 0 || strcmp(w, "EXCLUSIVE") == 0))
            return KIND_WRITE;
        return KIND_READ;
    }
    if (strcmp(w, "WITH") == 0)
        return classify_with(lx);
    if (strcmp(w, "PRAGMA") == 0)
        return classify_pragma(lx);
    return KIND_WRITE;
}

/* Each thread's last answers, by the statement's whole text: a service's
 * statements repeat, and lexing one costs about a thousand instructions, a
 * tenth of what a point read costs the agent besides SQLite and h2o. A hit
 * compares the text in full, so it answers exactly as the lexer did. */
#define MEMO_SETS 64
#define MEMO_TEXT 120

struct memo {
    uint32_t len; /* 0: empty */
    uint32_t reads;
    char text[MEMO_TEXT];
};

static __thread struct memo tl_memo[MEMO_SETS];

static int lex_reads_only(const char *sql);

int api_sql_reads_only(const char *sql)
{
    if (sql == NULL)
        return 0;
    size_t len = strnlen(sql, MEMO_TEXT + 1);
    if (len == 0 || len > MEMO_TEXT)
        return lex_reads_only(sql);
    uint64_t h = api_hash_str(sql, len); /* placement only: FNV's low bits mix poorly, the set takes high ones too */
    struct memo *m = &tl_memo[(h ^ (h >> 29)) % MEMO_SETS];
    if (m->len == len && memcmp(m->text, sql, len) == 0)
        return (int)m->reads;
    int reads = lex_reads_only(sql);
    m->len = (uint32_t)len;
    m->reads = (uint32_t)reads;
    memcpy(m->text, sql, len);
    return reads;
}

static int lex_reads_only(const char *sql)
{
    struct lexer lx = {.p = sql};
    char w[64];
    for (;;) {
        if (classify_stmt(&lx) == KIND_WRITE)
            return 0;
        /* the rest of this statement (the verb decided it) */
        while (next_token(&lx, w, sizeof(w)))
            ;
        if (lx.bad)
            return 0;
        if (*lx.p == '\0')
            return 1;
        lx.p++; /* ';' */
    }
}

static int stmt_reads(const struct api_jv *stmt, api_stmt_reads_fn fn, void *ud)
{
    const char *sql = api_jv_string(api_jv_get(stmt, "sql"));
    return sql != NULL && fn(ud, sql); /* sql_id needs the stream that stored it */
}

int api_pipeline_reads_only(const struct api_jv *requests, api_stmt_reads_fn fn, void *ud)
{
    if (!api_jv_is(requests, API_JV_ARRAY))
        return 0;
    for (size_t i = 0; i < api_jv_size(requests); i++) {
        const struct api_jv *req = api_jv_at(requests, i);
        const char *type = api_jv_string(api_jv_get(req, "type"));
        if (type == NULL)
            return 1; /* a protocol error: let the executor say so */
        if (strcmp(type, "close") == 0 || strcmp(type, "get_autocommit") == 0)
            continue;
        if (strcmp(type, "execute") == 0 || strcmp(type, "describe") == 0) {
            const struct api_jv *obj = strcmp(type, "execute") == 0 ? api_jv_get(req, "stmt") : req;
            if (!stmt_reads(obj, fn, ud))
                return 0;
        } else if (strcmp(type, "sequence") == 0) {
            if (!stmt_reads(req, fn, ud))
                return 0;
        } else if (strcmp(type, "batch") == 0) {
            if (!api_batch_reads_only(api_jv_get(req, "batch"), fn, ud))
                return 0;
        } else {
            return 0; /* store_sql/close_sql belong to a stream: the primary's */
        }
    }
    return 1;
}

int api_batch_reads_only(const struct api_jv *batch, api_stmt_reads_fn fn, void *ud)
{
    const struct api_jv *steps = api_jv_get(batch, "steps");
    for (size_t k = 0; k < api_jv_size(steps); k++)
        if (!stmt_reads(api_jv_get(api_jv_at(steps, k), "stmt"), fn, ud))
            return 0;
    return 1;
}

static int lexical_reads(void *ud, const char *sql)
{
    (void)ud;
    return api_sql_reads_only(sql);
}

void api_pipeline_inspect_doc(const struct api_jv *root, struct api_pipeline_info *out)
{
    memset(out, 0, sizeof(*out));
    if (!api_jv_is(root, API_JV_OBJECT))
        return;
    out->parsed = 1;
    const char *baton = api_jv_string(api_jv_get(root, "baton"));
    if (baton != NULL) {
        const char *dot = strchr(baton, '.');
        out->has_baton = 1;
        if (dot != NULL && api_name_valid(baton, (size_t)(dot - baton)))
            snprintf(out->baton_node, sizeof(out->baton_node), "%.*s", (int)(dot - baton), baton);
    }
    const struct api_jv *requests = api_jv_get(root, "requests");
    size_t n = api_jv_size(requests);
    const char *last = n ? api_jv_string(api_jv_get(api_jv_at(requests, n - 1), "type")) : NULL;
    out->ends_with_close = last != NULL && strcmp(last, "close") == 0;
    out->reads_only = api_jv_is(requests, API_JV_ARRAY) && api_pipeline_reads_only(requests, lexical_reads, NULL);
}

void api_pipeline_inspect_full(const char *body, size_t len, struct api_pipeline_info *out)
{
    struct api_jdoc *doc = NULL;
    memset(out, 0, sizeof(*out));
    if (api_jdoc_parse(body, len, &doc, NULL, 0) != 0)
        return;
    api_pipeline_inspect_doc(api_jdoc_root(doc), out);
    api_jdoc_free(doc);
}

/* ------------------------------------------------------------------ */
/* the fast path: a router inspects every pipeline on its event loop   */

/* A scanner for the plain JSON that clients send: ASCII, no backslash
 * escapes, ordinary numbers. Anything else makes it give up (-1) and
 * api_pipeline_inspect parses in full instead (api/jsonin.h, which reads
 * what jansson reads), so where the fast path answers, a full parse would
 * have read the same values. */
struct scan {
    const char *p, *end;
};

#define SCAN_MAX_DEPTH 32

static void scan_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* A string at s->p: sets *STR and *LEN to its raw contents. */
static int scan_string(struct scan *s, const char **str, size_t *len)
{
    const char *q;
    if (s->p >= s->end || *s->p != '"')
        return -1;
    for (q = s->p + 1; q < s->end && *q != '"'; q++)
        if (*q == '\\' || (unsigned char)*q < 0x20 || (unsigned char)*q >= 0x80)
            return -1;
    if (q >= s->end)
        return -1;
    *str = s->p + 1;
    *len = (size_t)(q - s->p - 1);
    s->p = q + 1;
    return 0;
}

static int scan_number(struct scan *s)
{
    const char *q = s->p;
    size_t digits = 0;
    if (q < s->end && *q == '-')
        q++;
    if (q < s->end && *q == '0') {
        q++;
        digits++;
    } else {
        while (q < s->end && *q >= '0' && *q <= '9') {
            q++;
            digits++;
        }
    }
    if (digits == 0)
        return -1;
    if (q < s->end && *q == '.') {
        size_t frac = 0;
        q++;
        while (q < s->end && *q >= '0' && *q <= '9') {
            q++;
            frac++;
        }
        if (frac == 0)
            return -1;
        digits += frac;
    }
    /* exponents and long numbers may overflow jansson's ranges: let it judge */
    if (digits > 15 || (q < s->end && (*q == 'e' || *q == 'E')))
        return -1;
    s->p = q;
    return 0;
}

static int scan_value(struct scan *s, int depth);

/* Calls FN for each member of the object at s->p (FN scans the value). */
static int scan_object(struct scan *s, int depth, int (*fn)(struct scan *s, const char *key, size_t klen, void *ud),
                       void *ud)
{
    if (depth > SCAN_MAX_DEPTH || s->p >= s->end || *s->p != '{')
        return -1;
    s->p++;
    scan_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    for (;;) {
        const char *key;
        size_t klen;
        scan_ws(s);
        if (scan_string(s, &key, &klen) != 0)
            return -1;
        scan_ws(s);
        if (s->p >= s->end || *s->p != ':')
            return -1;
        s->p++;
        scan_ws(s);
        if ((fn != NULL ? fn(s, key, klen, ud) : scan_value(s, depth + 1)) != 0)
            return -1;
        scan_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == '}') {
            s->p++;
            return 0;
        }
        return -1;
    }
}

/* Calls FN for each element of the array at s->p (FN scans the element). */
static int scan_array(struct scan *s, int depth, int (*fn)(struct scan *s, void *ud), void *ud)
{
    if (depth > SCAN_MAX_DEPTH || s->p >= s->end || *s->p != '[')
        return -1;
    s->p++;
    scan_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return 0;
    }
    for (;;) {
        scan_ws(s);
        if ((fn != NULL ? fn(s, ud) : scan_value(s, depth + 1)) != 0)
            return -1;
        scan_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == ']') {
            s->p++;
            return 0;
        }
        return -1;
    }
}

static int scan_literal(struct scan *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return -1;
    s->p += n;
    return 0;
}

static int scan_value(struct scan *s, int depth)
{
    const char *str;
    size_t len;
    if (s->p >= s->end)
        return -1;
    switch (*s->p) {
    case '{':
        return scan_object(s, depth, NULL, NULL);
    case '[':
        return scan_array(s, depth, NULL, NULL);
    case '"':
        return scan_string(s, &str, &len);
    case 't':
        return scan_literal(s, "true");
    case 'f':
        return scan_literal(s, "false");
    case 'n':
        return scan_literal(s, "null");
    default:
        return scan_number(s);
    }
}

static int key_is(const char *key, size_t klen, const char *want)
{
    return strlen(want) == klen && memcmp(key, want, klen) == 0;
}

struct fast_req {
    const char *type, *sql;
    size_t type_len, sql_len;
    int seen_type, seen_stmt, seen_sql;
};

static int on_stmt_member(struct scan *s, const char *key, size_t klen, void *ud)
{
    struct fast_req *r = ud;
    if (key_is(key, klen, "sql")) {
        if (r->seen_sql++ || scan_string(s, &r->sql, &r->sql_len) != 0)
            return -1; /* twice, or not a string: jansson's reading differs or errs */
        return 0;
    }
    return scan_value(s, 3);
}

static int on_req_member(struct scan *s, const char *key, size_t klen, void *ud)
{
    struct fast_req *r = ud;
    if (key_is(key, klen, "type")) {
        if (r->seen_type++ || scan_string(s, &r->type, &r->type_len) != 0)
            return -1;
        return 0;
    }
    if (key_is(key, klen, "stmt")) {
        if (r->seen_stmt++)
            return -1;
        return scan_object(s, 2, on_stmt_member, r);
    }
    return scan_value(s, 2);
}

struct fast_pipeline {
    struct api_pipeline_info *out;
    int seen_baton, seen_requests, last_is_close;
};

static int on_request(struct scan *s, void *ud)
{
    struct fast_pipeline *fp = ud;
    struct fast_req r;
    char sql[4096];

    memset(&r, 0, sizeof(r));
    if (scan_object(s, 1, on_req_member, &r) != 0 || !r.seen_type)
        return -1;
    fp->last_is_close = key_is(r.type, r.type_len, "close");
    if (fp->last_is_close)
        return 0;
    if (!key_is(r.type, r.type_len, "execute") || !r.seen_stmt)
        return -1; /* other request types: the full walk knows them */
    if (!r.seen_sql) {
        fp->out->reads_only = 0; /* sql_id: a stream's stored SQL */
        return 0;
    }
    if (r.sql_len >= sizeof(sql))
        return -1;
    memcpy(sql, r.sql, r.sql_len);
    sql[r.sql_len] = '\0';
    if (!api_sql_reads_only(sql))
        fp->out->reads_only = 0;
    return 0;
}

static int on_top_member(struct scan *s, const char *key, size_t klen, void *ud)
{
    struct fast_pipeline *fp = ud;
    if (key_is(key, klen, "baton")) {
        const char *b, *dot;
        size_t blen;
        if (fp->seen_baton++)
            return -1;
        if (scan_literal(s, "null") == 0)
            return 0;
        if (scan_string(s, &b, &blen) != 0)
            return -1;
        fp->out->has_baton = 1;
        dot = memchr(b, '.', blen);
        if (dot != NULL && api_name_valid(b, (size_t)(dot - b)))
            snprintf(fp->out->baton_node, sizeof(fp->out->baton_node), "%.*s", (int)(dot - b), b);
        return 0;
    }
    if (key_is(key, klen, "requests")) {
        if (fp->seen_requests++)
            return -1;
        fp->out->reads_only = 1;
        return scan_array(s, 1, on_request, fp);
    }
    return scan_value(s, 1);
}

/* 1 with *OUT set when the body is plain enough for the scanner, else 0. */
static int inspect_fast(const char *body, size_t len, struct api_pipeline_info *out)
{
    struct scan s = {.p = body, .end = body + len};
    struct fast_pipeline fp = {.out = out};

    memset(out, 0, sizeof(*out));
    scan_ws(&s);
    if (scan_object(&s, 0, on_top_member, &fp) != 0)
        return 0;
    scan_ws(&s);
    if (s.p != s.end || !fp.seen_requests)
        return 0;
    out->parsed = 1;
    out->ends_with_close = fp.last_is_close;
    return 1;
}

void api_pipeline_inspect(const char *body, size_t len, struct api_pipeline_info *out)
{
    if (!inspect_fast(body, len, out))
        api_pipeline_inspect_full(body, len, out);
}
