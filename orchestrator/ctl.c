/*
 * orchestrator/ctl.c: shoalctl (see ctl.h).
 *
 * Every command is one or a few admin API calls; --json prints the API's
 * JSON unchanged, the default is aligned text for people. `sql` mints a
 * short-lived token and runs one Hrana pipeline against the router (or the
 * tenant's primary), so it exercises the same path a client does.
 */
#include "orchestrator/ctl.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <sodium.h>
#include <sqlite3.h>

#include "api/http.h"
#include "api/names.h"
#include "api/token.h"

struct ctl {
    const char *url;
    const char *token;
    const char *router;
    int json;
    struct api_http_client *http;
};

/* ------------------------------------------------------------------ */
/* formatting                                                          */

static size_t utf8_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}

void ctl_print_table(FILE *out, const char *const *headers, size_t ncols, const char *const *cells, size_t nrows)
{
    size_t *width = calloc(ncols ? ncols : 1, sizeof(*width));
    if (width == NULL)
        return;
    for (size_t c = 0; c < ncols; c++)
        width[c] = utf8_width(headers[c]);
    for (size_t r = 0; r < nrows; r++)
        for (size_t c = 0; c < ncols; c++)
            if (utf8_width(cells[r * ncols + c]) > width[c])
                width[c] = utf8_width(cells[r * ncols + c]);
    for (size_t r = 0; r <= nrows; r++) {
        for (size_t c = 0; c < ncols; c++) {
            const char *v = r == 0 ? headers[c] : cells[(r - 1) * ncols + c];
            fputs(v, out);
            if (c + 1 < ncols)
                for (size_t pad = utf8_width(v); pad < width[c] + 2; pad++)
                    fputc(' ', out);
        }
        fputc('\n', out);
    }
    free(width);
}

/* A Hrana value as people read it; malloc'd. */
static char *value_text(const json_t *v)
{
    const char *type = json_string_value(json_object_get(v, "type"));
    char *out = NULL;
    if (type == NULL || strcmp(type, "null") == 0)
        return strdup("NULL");
    if (strcmp(type, "integer") == 0 || strcmp(type, "text") == 0) {
        const char *s = json_string_value(json_object_get(v, "value"));
        return strdup(s ? s : "");
    }
    if (strcmp(type, "float") == 0) {
        char buf[64];
        double d = json_number_value(json_object_get(v, "value"));
        snprintf(buf, sizeof(buf), "%.17g", d);
        /* shortest form that reads back the same */
        for (int p = 1; p <= 17; p++) {
            snprintf(buf, sizeof(buf), "%.*g", p, d);
            if (strtod(buf, NULL) == d)
                break;
        }
        return strdup(buf);
    }
    if (strcmp(type, "blob") == 0) {
        const char *b64 = json_string_value(json_object_get(v, "base64"));
        size_t len = b64 ? strlen(b64) : 0, n = 0;
        unsigned char *bin = malloc(len + 1);
        while (len > 0 && b64[len - 1] == '=')
            len--;
        if (bin == NULL || (len > 0 && sodium_base642bin(bin, len + 1, b64, len, NULL, &n, NULL,
                                                         sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0)) {
            free(bin);
            return strdup("x'?'");
        }
        out = malloc(n * 2 + 4);
        if (out != NULL) {
            strcpy(out, "x'");
            for (size_t i = 0; i < n; i++)
                sprintf(out + 2 + i * 2, "%02x", bin[i]);
            strcat(out, "'");
        }
        free(bin);
        return out;
    }
    return strdup("?");
}

void ctl_print_result(FILE *out, const json_t *result)
{
    json_t *cols = json_object_get(result, "cols"), *rows = json_object_get(result, "rows");
    size_t ncols = json_array_size(cols), nrows = json_array_size(rows);
    long long affected = (long long)json_integer_value(json_object_get(result, "affected_row_count"));

    if (ncols > 0) {
        const char **headers = calloc(ncols, sizeof(*headers));
        char **cells = calloc(nrows * ncols + 1, sizeof(*cells));
        if (headers != NULL && cells != NULL) {
            for (size_t c = 0; c < ncols; c++) {
                const char *n = json_string_value(json_object_get(json_array_get(cols, c), "name"));
                headers[c] = n ? n : "";
            }
            for (size_t r = 0; r < nrows; r++)
                for (size_t c = 0; c < ncols; c++)
                    cells[r * ncols + c] = value_text(json_array_get(json_array_get(rows, r), c));
            ctl_print_table(out, headers, ncols, (const char *const *)cells, nrows);
            for (size_t i = 0; i < nrows * ncols; i++)
                free(cells[i]);
        }
        free(headers);
        free(cells);
        fprintf(out, "(%zu row%s)\n", nrows, nrows == 1 ? "" : "s");
    } else {
        fprintf(out, "(%lld row%s affected)\n", affected, affected == 1 ? "" : "s");
    }
}

json_t *ctl_sql_arg(const char *arg)
{
    char *end;
    if (strcmp(arg, "NULL") == 0)
        return json_pack("{s:s}", "type", "null");
    if (*arg != '\0' && !isspace((unsigned char)*arg)) {
        /* an integer only in its canonical form: "007" or "+1" stay text */
        errno = 0;
        long long n = strtoll(arg, &end, 10);
        if (*end == '\0' && errno == 0) {
            char buf[32];
            snprintf(buf, sizeof(buf), "%lld", n);
            if (strcmp(buf, arg) == 0)
                return json_pack("{s:s,s:s}", "type", "integer", "value", buf);
        }
        /* a float only when it looks like one: digits with '.' or an exponent */
        errno = 0;
        double d = strtod(arg, &end);
        if (*end == '\0' && errno == 0 && isfinite(d) && strpbrk(arg, ".eE") != NULL &&
            strpbrk(arg, "xXnNiI") == NULL)
            return json_pack("{s:s,s:f}", "type", "float", "value", d);
    }
    return json_pack("{s:s,s:s}", "type", "text", "value", arg);
}

void ctl_format_api_error(char *buf, size_t cap, long status, const char *body)
{
    json_t *doc = body ? json_loads(body, 0, NULL) : NULL;
    json_t *e = json_object_get(doc, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *code = json_string_value(json_object_get(e, "code"));
    if (msg == NULL)
        msg = json_string_value(json_object_get(doc, "message"));
    if (code == NULL)
        code = json_string_value(json_object_get(doc, "code"));
    if (msg != NULL)
        snprintf(buf, cap, "error: %s (%s, HTTP %ld)", msg, code ? code : "no code", status);
    else
        snprintf(buf, cap, "error: HTTP %ld: %.200s", status, body && *body ? body : "(empty body)");
    json_decref(doc);
}

/* ------------------------------------------------------------------ */
/* HTTP                                                                */

/* Calls the admin API. Returns the HTTP status (0 when unreachable, with a
 * message printed) and sets *OUT to the parsed body (may be NULL). */
static long api_call(struct ctl *c, const char *method, const char *path, json_t *body, json_t **out)
{
    char url[2048], auth[1024];
    const char *headers[3] = {"Content-Type: application/json", NULL, NULL};
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    struct api_http_resp resp;
    struct api_err err;

    *out = NULL;
    snprintf(url, sizeof(url), "%s%s", c->url, path);
    if (c->token != NULL && c->token[0]) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", c->token);
        headers[1] = auth;
    }
    struct api_http_req rq = {.method = method, .url = url, .headers = headers, .body = text,
                              .body_len = text ? strlen(text) : 0, .timeout_ms = 30000};
    if (api_http_do(c->http, &rq, &resp, &err) != API_OK) {
        fprintf(stderr, "shoalctl: cannot reach the admin API at %s: %s\n", c->url, err.msg);
        free(text);
        return 0;
    }
    free(text);
    long status = resp.status;
    if (status >= 400) {
        char line[1024];
        ctl_format_api_error(line, sizeof(line), status, resp.body);
        fprintf(stderr, "%s\n", line);
    } else if (resp.body_len > 0) {
        *out = json_loadb(resp.body, resp.body_len, 0, NULL);
    }
    api_http_resp_fini(&resp);
    return status;
}

static void print_json(const json_t *doc)
{
    char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s != NULL) {
        puts(s);
        free(s);
    }
}

static const char *str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "-";
}

static char *url_escape(const char *s)
{
    char *out = malloc(strlen(s) * 3 + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (; *s; s++) {
        if (isalnum((unsigned char)*s) || strchr("-_.~", *s))
            *o++ = *s;
        else
            o += sprintf(o, "%%%02X", (unsigned char)*s);
    }
    *o = '\0';
    return out;
}

/* ------------------------------------------------------------------ */
/* usage                                                               */

static const char usage_text[] =
    "usage: shoalctl [--url URL] [--token TOKEN] [--router URL] [--json] COMMAND ...\n"
    "\n"
    "commands:\n"
    "  tenants create ID [--region R] [--replicas N] [--placement auto|pinned] [--durability async|quorum]\n"
    "  tenants list [--region R]\n"
    "  tenants show ID\n"
    "  tenants delete ID --yes\n"
    "  tenants token ID [--ro] [--ttl SECONDS]\n"
    "  handover ID (--to-region R | --to-node N) [--no-wait] [--timeout SECONDS]\n"
    "  nodes list | show NODE | drain NODE\n"
    "  sql ID \"SQL\" [ARG...]\n"
    "  keygen DIR              create cluster.key, cluster.pub and admin.token in DIR\n"
    "\n"
    "--url defaults to $SHOAL_URL, else http://127.0.0.1:7400; --token to $SHOAL_TOKEN;\n"
    "--router (for sql) to $SHOAL_ROUTER, else the tenant's primary. --json prints the API's JSON.\n"
    "sql runs several statements separated by ';' one after another, stopping at the first that\n"
    "fails (exit 1); ARGs bind to a single statement's ? placeholders.\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("shoalctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(see shoalctl --help)\n", stderr);
    return 2;
}

/* Pulls "--name value" options out of ARGV (in place); positionals stay. */
struct opt {
    const char *name;
    int takes_value;
    const char *value;
    int seen;
};

static int take_opts(int *argc, char **argv, struct opt *opts)
{
    int n = 0;
    for (int i = 0; i < *argc; i++) {
        struct opt *o = NULL;
        if (strncmp(argv[i], "--", 2) == 0) {
            for (struct opt *p = opts; p->name != NULL; p++)
                if (strcmp(argv[i] + 2, p->name) == 0)
                    o = p;
            if (o == NULL)
                return usage_error("unknown option '%s'", argv[i]);
            o->seen = 1;
            if (o->takes_value) {
                if (i + 1 >= *argc)
                    return usage_error("option '%s' needs a value", argv[i]);
                o->value = argv[++i];
            }
            continue;
        }
        argv[n++] = argv[i];
    }
    *argc = n;
    return 0;
}

static int check_id(const char *what, const char *id)
{
    struct api_err err;
    if (strcmp(what, "tenant") == 0 ? api_tenant_id_check(id, strlen(id), &err) != API_OK
                                    : api_node_name_check(id, strlen(id), &err) != API_OK)
        return usage_error("%s", err.msg);
    return 0;
}

/* ------------------------------------------------------------------ */
/* tenants                                                             */

static void print_tenant(const json_t *t)
{
    const json_t *p = json_object_get(t, "primary");
    printf("tenant      %s\n", str(t, "id"));
    printf("region      %s\n", str(t, "region"));
    printf("placement   %s\n", str(t, "placement"));
    printf("durability  %s\n", str(t, "durability"));
    printf("replicas    %lld\n", (long long)json_integer_value(json_object_get(t, "replicas")));
    if (json_is_object(p))
        printf("primary     %s (%s) %s epoch %lld\n", str(p, "node"), str(p, "region"), str(p, "url"),
               (long long)json_integer_value(json_object_get(p, "epoch")));
    else
        printf("primary     none yet (no agent holds the lease)\n");
    printf("created     %s\n\n", str(t, "created_at"));
    json_t *inst = json_object_get(t, "instances");
    size_t n = json_array_size(inst);
    const char *headers[] = {"NODE", "REGION", "ROLE", "STATE", "TXID", "CHECKSUM", "LAG_MS", "URL"};
    const char **cells = calloc(n * 8 + 1, sizeof(*cells));
    char (*lag)[24] = calloc(n + 1, sizeof(*lag));
    if (cells == NULL || lag == NULL) {
        free(cells);
        free(lag);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(inst, i), *l = json_object_get(x, "lag_ms");
        if (json_is_integer(l))
            snprintf(lag[i], sizeof(lag[i]), "%lld", (long long)json_integer_value(l));
        else
            strcpy(lag[i], "-");
        const char *row[8] = {str(x, "node"), str(x, "region"), str(x, "role"), str(x, "state"), str(x, "txid"),
                              str(x, "checksum"), lag[i], str(x, "url")};
        memcpy(cells + i * 8, row, sizeof(row));
    }
    ctl_print_table(stdout, headers, 8, cells, n);
    for (size_t i = 0; i < n; i++) {
        const char *note = json_string_value(json_object_get(json_array_get(inst, i), "note"));
        if (note != NULL)
            printf("note: %s: %s\n", str(json_array_get(inst, i), "node"), note);
    }
    free(cells);
    free(lag);
}

static int cmd_tenants(struct ctl *c, int argc, char **argv)
{
    struct opt opts[] = {{"region", 1, NULL, 0}, {"replicas", 1, NULL, 0}, {"placement", 1, NULL, 0},
                         {"durability", 1, NULL, 0}, {"yes", 0, NULL, 0}, {"ro", 0, NULL, 0},
                         {"ttl", 1, NULL, 0}, {NULL, 0, NULL, 0}};
    json_t *out = NULL;
    long st;
    char path[1024];

    if (argc < 1)
        return usage_error("tenants needs a subcommand: create, list, show, delete, token");
    const char *sub = argv[0];
    argc--;
    argv++;
    if (take_opts(&argc, argv, opts) != 0)
        return 2;
    if (strcmp(sub, "list") == 0) {
        if (argc != 0)
            return usage_error("tenants list takes no arguments");
        char *cursor = NULL;
        json_t *all = json_array();
        for (;;) {
            char *reg = opts[0].value ? url_escape(opts[0].value) : NULL;
            char *cur = cursor ? url_escape(cursor) : NULL;
            snprintf(path, sizeof(path), "/v1/tenants?limit=1000%s%s%s%s", reg ? "&region=" : "", reg ? reg : "",
                     cur ? "&cursor=" : "", cur ? cur : "");
            free(reg);
            free(cur);
            free(cursor);
            cursor = NULL;
            st = api_call(c, "GET", path, NULL, &out);
            if (st != 200) {
                json_decref(all);
                json_decref(out);
                return 1;
            }
            json_array_extend(all, json_object_get(out, "tenants"));
            const char *next = json_string_value(json_object_get(out, "next_cursor"));
            cursor = next ? strdup(next) : NULL;
            json_decref(out);
            if (cursor == NULL)
                break;
        }
        if (c->json) {
            json_t *doc = json_pack("{s:o,s:n}", "tenants", all, "next_cursor");
            print_json(doc);
            json_decref(doc);
            return 0;
        }
        size_t n = json_array_size(all);
        const char *headers[] = {"ID", "REGION", "PRIMARY", "EPOCH", "REPLICAS", "PLACEMENT", "DURABILITY"};
        const char **cells = calloc(n * 7 + 1, sizeof(*cells));
        char (*nums)[2][24] = calloc(n + 1, sizeof(*nums));
        for (size_t i = 0; cells && nums && i < n; i++) {
            json_t *t = json_array_get(all, i), *p = json_object_get(t, "primary");
            snprintf(nums[i][0], 24, "%lld", (long long)json_integer_value(json_object_get(p, "epoch")));
            snprintf(nums[i][1], 24, "%lld", (long long)json_integer_value(json_object_get(t, "replicas")));
            const char *row[7] = {str(t, "id"), str(t, "region"), json_is_object(p) ? str(p, "node") : "-",
                                  json_is_object(p) ? nums[i][0] : "-", nums[i][1], str(t, "placement"),
                                  str(t, "durability")};
            memcpy(cells + i * 7, row, sizeof(row));
        }
        if (cells && nums)
            ctl_print_table(stdout, headers, 7, cells, n);
        free(cells);
        free(nums);
        json_decref(all);
        return 0;
    }
    if (argc < 1)
        return usage_error("tenants %s needs a tenant ID", sub);
    const char *id = argv[0];
    if (check_id("tenant", id) != 0)
        return 2;
    if (strcmp(sub, "create") == 0) {
        json_t *body = json_pack("{s:s}", "id", id);
        if (opts[0].value)
            json_object_set_new(body, "region", json_string(opts[0].value));
        if (opts[1].value) {
            char *end;
            long n = strtol(opts[1].value, &end, 10);
            if (*end || n < 0 || n > 15) {
                json_decref(body);
                return usage_error("--replicas must be a number from 0 to 15");
            }
            json_object_set_new(body, "replicas", json_integer(n));
        }
        if (opts[2].value)
            json_object_set_new(body, "placement", json_string(opts[2].value));
        if (opts[3].value)
            json_object_set_new(body, "durability", json_string(opts[3].value));
        st = api_call(c, "POST", "/v1/tenants", body, &out);
        json_decref(body);
        if (st != 201) {
            json_decref(out);
            return 1;
        }
        if (c->json)
            print_json(out);
        else
            print_tenant(out);
        json_decref(out);
        return 0;
    }
    if (strcmp(sub, "show") == 0) {
        snprintf(path, sizeof(path), "/v1/tenants/%s", id);
        if ((st = api_call(c, "GET", path, NULL, &out)) != 200) {
            json_decref(out);
            return 1;
        }
        if (c->json)
            print_json(out);
        else
            print_tenant(out);
        json_decref(out);
        return 0;
    }
    if (strcmp(sub, "delete") == 0) {
        if (!opts[4].seen)
            return usage_error("tenants delete removes the tenant's data everywhere: add --yes to confirm");
        snprintf(path, sizeof(path), "/v1/tenants/%s", id);
        if ((st = api_call(c, "DELETE", path, NULL, &out)) != 204) {
            json_decref(out);
            return 1;
        }
        if (c->json)
            printf("{}\n");
        else
            printf("deleted tenant %s\n", id);
        return 0;
    }
    if (strcmp(sub, "token") == 0) {
        json_t *body = json_pack("{s:s}", "access", opts[5].seen ? "ro" : "rw");
        if (opts[6].value) {
            char *end;
            long long ttl = strtoll(opts[6].value, &end, 10);
            if (*end || ttl < 1) {
                json_decref(body);
                return usage_error("--ttl must be a positive number of seconds");
            }
            json_object_set_new(body, "ttl_s", json_integer(ttl));
        }
        snprintf(path, sizeof(path), "/v1/tenants/%s/tokens", id);
        st = api_call(c, "POST", path, body, &out);
        json_decref(body);
        if (st != 200 && st != 201) {
            json_decref(out);
            return 1;
        }
        if (c->json)
            print_json(out);
        else
            printf("%s\n", str(out, "token"));
        json_decref(out);
        return 0;
    }
    return usage_error("unknown tenants subcommand '%s'", sub);
}

/* ------------------------------------------------------------------ */
/* nodes, handover                                                     */

static int cmd_nodes(struct ctl *c, int argc, char **argv)
{
    json_t *out = NULL;
    char path[512];
    long st;

    if (argc < 1)
        return usage_error("nodes needs a subcommand: list, show, drain");
    if (strcmp(argv[0], "list") == 0) {
        if ((st = api_call(c, "GET", "/v1/nodes", NULL, &out)) != 200) {
            json_decref(out);
            return 1;
        }
        if (c->json) {
            print_json(out);
        } else {
            json_t *nodes = json_object_get(out, "nodes");
            size_t n = json_array_size(nodes);
            const char *headers[] = {"NODE", "REGION", "HEALTH", "TENANTS", "PRIMARIES", "URL"};
            const char **cells = calloc(n * 6 + 1, sizeof(*cells));
            char (*nums)[2][24] = calloc(n + 1, sizeof(*nums));
            for (size_t i = 0; cells && nums && i < n; i++) {
                json_t *x = json_array_get(nodes, i);
                snprintf(nums[i][0], 24, "%lld", (long long)json_integer_value(json_object_get(x, "tenants")));
                snprintf(nums[i][1], 24, "%lld", (long long)json_integer_value(json_object_get(x, "primaries")));
                const char *row[6] = {str(x, "node"), str(x, "region"), str(x, "health"), nums[i][0], nums[i][1],
                                      str(x, "url")};
                memcpy(cells + i * 6, row, sizeof(row));
            }
            if (cells && nums)
                ctl_print_table(stdout, headers, 6, cells, n);
            free(cells);
            free(nums);
        }
        json_decref(out);
        return 0;
    }
    if (argc < 2)
        return usage_error("nodes %s needs a node name", argv[0]);
    if (check_id("node", argv[1]) != 0)
        return 2;
    if (strcmp(argv[0], "show") == 0) {
        snprintf(path, sizeof(path), "/v1/nodes/%s", argv[1]);
        if ((st = api_call(c, "GET", path, NULL, &out)) != 200) {
            json_decref(out);
            return 1;
        }
        if (c->json)
            print_json(out);
        else
            printf("node        %s\nregion      %s\nhealth      %s\ntenants     %lld\nprimaries   %lld\nurl         "
                   "%s\n",
                   str(out, "node"), str(out, "region"), str(out, "health"),
                   (long long)json_integer_value(json_object_get(out, "tenants")),
                   (long long)json_integer_value(json_object_get(out, "primaries")), str(out, "url"));
        json_decref(out);
        return 0;
    }
    if (strcmp(argv[0], "drain") == 0) {
        snprintf(path, sizeof(path), "/v1/nodes/%s/drain", argv[1]);
        st = api_call(c, "POST", path, NULL, &out);
        if (st < 200 || st > 202) {
            json_decref(out);
            return 1;
        }
        if (c->json)
            print_json(out);
        else
            printf("drain of %s started: operation %s\n", argv[1], str(out, "id"));
        json_decref(out);
        return 0;
    }
    return usage_error("unknown nodes subcommand '%s'", argv[0]);
}

static int cmd_handover(struct ctl *c, int argc, char **argv)
{
    struct opt opts[] = {{"to-region", 1, NULL, 0}, {"to-node", 1, NULL, 0}, {"no-wait", 0, NULL, 0},
                         {"timeout", 1, NULL, 0}, {NULL, 0, NULL, 0}};
    json_t *out = NULL, *body;
    char path[512];
    long st;
    double timeout_s = 60;

    if (take_opts(&argc, argv, opts) != 0)
        return 2;
    if (argc != 1)
        return usage_error("handover needs exactly one tenant ID");
    if (check_id("tenant", argv[0]) != 0)
        return 2;
    if (!!opts[0].value == !!opts[1].value)
        return usage_error("handover needs exactly one of --to-region and --to-node");
    if (opts[3].value && ((timeout_s = strtod(opts[3].value, NULL)) <= 0))
        return usage_error("--timeout must be a positive number of seconds");
    body = opts[0].value ? json_pack("{s:s}", "to_region", opts[0].value) : json_pack("{s:s}", "to_node", opts[1].value);
    snprintf(path, sizeof(path), "/v1/tenants/%s/handover", argv[0]);
    st = api_call(c, "POST", path, body, &out);
    json_decref(body);
    if (st != 202 && st != 200) {
        json_decref(out);
        return 1;
    }
    if (opts[2].seen) {
        if (c->json)
            print_json(out);
        else
            printf("handover of %s started: operation %s\n", argv[0], str(out, "id"));
        json_decref(out);
        return 0;
    }
    char op[128];
    snprintf(op, sizeof(op), "%s", str(out, "id"));
    json_decref(out);
    size_t shown = 0;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        snprintf(path, sizeof(path), "/v1/operations/%s", op);
        if ((st = api_call(c, "GET", path, NULL, &out)) != 200) {
            json_decref(out);
            return 1;
        }
        json_t *steps = json_object_get(out, "steps");
        for (; !c->json && shown < json_array_size(steps); shown++) {
            json_t *s = json_array_get(steps, shown);
            printf("  +%lldms %s  %s\n", (long long)json_integer_value(json_object_get(s, "at_ms")), str(s, "step"),
                   json_string_value(json_object_get(s, "detail")) ?: "");
        }
        const char *state = str(out, "state");
        if (strcmp(state, "done") == 0 || strcmp(state, "failed") == 0) {
            int failed = strcmp(state, "failed") == 0;
            if (c->json)
                print_json(out);
            else if (failed)
                fprintf(stderr, "handover failed: %s\n", str(out, "error"));
            else
                printf("stall %lld ms, final txid %s\n", (long long)json_integer_value(json_object_get(out, "stall_ms")),
                       str(out, "final_txid"));
            json_decref(out);
            return failed ? 1 : 0;
        }
        json_decref(out);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9 > timeout_s) {
            fprintf(stderr, "shoalctl: handover of %s still running after %.0f s (operation %s)\n", argv[0],
                    timeout_s, op);
            return 1;
        }
        usleep(50000);
    }
}

/* ------------------------------------------------------------------ */
/* sql                                                                 */

/* 1 if SQL[0..LEN) holds nothing but spaces, comments and ';'. */
static int blank_sql(const char *sql, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (isspace((unsigned char)sql[i]) || sql[i] == ';')
            continue;
        if (sql[i] == '-' && i + 1 < len && sql[i + 1] == '-') {
            while (i < len && sql[i] != '\n')
                i++;
        } else if (sql[i] == '/' && i + 1 < len && sql[i + 1] == '*') {
            for (i += 2; i + 1 < len && !(sql[i] == '*' && sql[i + 1] == '/'); i++) {
            }
            i++; /* onto the '/' (or past the end of an open comment) */
        } else {
            return 0;
        }
    }
    return 1;
}

/* Appends SQL[0..LEN) trimmed to OUT unless it is blank; -1 if it cannot
 * (out of memory, or text that is not UTF-8). */
static int append_trimmed(json_t *out, const char *sql, size_t len)
{
    while (len > 0 && isspace((unsigned char)*sql)) {
        sql++;
        len--;
    }
    while (len > 0 && isspace((unsigned char)sql[len - 1]))
        len--;
    if (blank_sql(sql, len))
        return 0;
    return json_array_append_new(out, json_stringn(sql, len));
}

json_t *ctl_split_sql(const char *sql)
{
    json_t *out = json_array();
    size_t n = strlen(sql), start = 0;
    char *buf = malloc(n + 1);
    if (out == NULL || buf == NULL)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        if (sql[i] != ';')
            continue;
        memcpy(buf, sql + start, i + 1 - start);
        buf[i + 1 - start] = '\0';
        if (!sqlite3_complete(buf))
            continue; /* the ';' is inside a string, a comment or a trigger */
        if (append_trimmed(out, sql + start, i + 1 - start) != 0)
            goto oom;
        start = i + 1;
    }
    if (append_trimmed(out, sql + start, n - start) != 0)
        goto oom;
    free(buf);
    return out;
oom:
    free(buf);
    json_decref(out);
    return NULL;
}

/* The request for STMTS (ctl_split_sql): one statement with ARGS as an
 * "execute"; several as a "batch" whose every step runs only if the one
 * before it succeeded, as the sqlite3 shell with -bail. Steals ARGS. */
static json_t *sql_request(const json_t *stmts, json_t *args)
{
    if (json_array_size(stmts) <= 1)
        return json_pack("{s:[{s:s,s:{s:O,s:o}},{s:s}]}", "requests", "type", "execute", "stmt", "sql",
                         json_array_get(stmts, 0), "args", args, "type", "close");
    json_t *steps = json_array();
    for (size_t i = 0; i < json_array_size(stmts); i++) {
        json_t *step = json_pack("{s:{s:O}}", "stmt", "sql", json_array_get(stmts, i));
        if (i > 0 && step != NULL)
            json_object_set_new(step, "condition", json_pack("{s:s,s:I}", "type", "ok", "step", (json_int_t)(i - 1)));
        json_array_append_new(steps, step);
    }
    json_decref(args);
    return json_pack("{s:[{s:s,s:{s:o}},{s:s}]}", "requests", "type", "batch", "batch", "steps", steps, "type",
                     "close");
}

/* Prints the results of a batch of NSTMTS statements (one after another,
 * a blank line between): 0, or 1 at the first that failed. */
static int print_batch(struct ctl *c, const json_t *result, size_t nstmts)
{
    const json_t *results = json_object_get(result, "step_results"), *errors = json_object_get(result, "step_errors");
    if (c->json) {
        print_json((json_t *)result);
        for (size_t i = 0; i < nstmts; i++)
            if (json_is_object(json_array_get(errors, i)))
                return 1;
        return 0;
    }
    for (size_t i = 0; i < nstmts; i++) {
        const json_t *r = json_array_get(results, i), *e = json_array_get(errors, i);
        if (json_is_object(e)) {
            fprintf(stderr, "error in statement %zu of %zu: %s (%s)\n", i + 1, nstmts, str(e, "message"),
                    str(e, "code"));
            return 1;
        }
        if (!json_is_object(r))
            break; /* not run: cannot happen after a step that succeeded */
        if (i > 0)
            fputc('\n', stdout);
        ctl_print_result(stdout, r);
    }
    return 0;
}

static int cmd_sql(struct ctl *c, int argc, char **argv)
{
    json_t *out = NULL, *args, *req, *body;
    char path[512], url[2048], auth[1024];
    const char *base = c->router;
    char *primary_url = NULL, *token;
    long st;

    if (argc < 2)
        return usage_error("sql needs a tenant ID and an SQL statement");
    if (check_id("tenant", argv[0]) != 0)
        return 2;
    json_t *stmts = ctl_split_sql(argv[1]);
    if (stmts == NULL) {
        fprintf(stderr, "shoalctl: cannot take the SQL (is it UTF-8?)\n");
        return 1;
    }
    size_t nstmts = json_array_size(stmts);
    if (nstmts == 0) {
        json_decref(stmts);
        return usage_error("sql needs an SQL statement, not blank text");
    }
    if (nstmts > 1 && argc > 2) {
        json_decref(stmts);
        return usage_error("arguments bind to one statement; the SQL has %zu", nstmts);
    }
    snprintf(path, sizeof(path), "/v1/tenants/%s/tokens", argv[0]);
    body = json_pack("{s:s,s:i}", "access", "rw", "ttl_s", 300);
    st = api_call(c, "POST", path, body, &out);
    json_decref(body);
    if (st != 200 && st != 201) {
        json_decref(out);
        json_decref(stmts);
        return 1;
    }
    token = strdup(str(out, "token"));
    json_decref(out);
    if (base == NULL || base[0] == '\0') {
        snprintf(path, sizeof(path), "/v1/tenants/%s", argv[0]);
        if ((st = api_call(c, "GET", path, NULL, &out)) != 200) {
            json_decref(out);
            json_decref(stmts);
            free(token);
            return 1;
        }
        const char *u = json_string_value(json_object_get(json_object_get(out, "primary"), "url"));
        primary_url = u ? strdup(u) : NULL;
        json_decref(out);
        if (primary_url == NULL) {
            fprintf(stderr, "shoalctl: tenant %s has no primary right now\n", argv[0]);
            json_decref(stmts);
            free(token);
            return 1;
        }
        base = primary_url;
    }
    args = json_array();
    for (int i = 2; i < argc; i++)
        json_array_append_new(args, ctl_sql_arg(argv[i]));
    req = sql_request(stmts, args);
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    snprintf(url, sizeof(url), "%s/t/%s/v2/pipeline", base, argv[0]);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    const char *headers[] = {"Content-Type: application/json", auth, NULL};
    struct api_http_req rq = {.method = "POST", .url = url, .headers = headers, .body = text,
                              .body_len = text ? strlen(text) : 0, .timeout_ms = 60000};
    struct api_http_resp resp;
    struct api_err err;
    int rc = 1;
    if (api_http_do(c->http, &rq, &resp, &err) != API_OK) {
        fprintf(stderr, "shoalctl: cannot reach %s: %s\n", base, err.msg);
    } else if (resp.status != 200) {
        char line[1024];
        ctl_format_api_error(line, sizeof(line), resp.status, resp.body);
        fprintf(stderr, "%s\n", line);
        api_http_resp_fini(&resp);
    } else {
        json_t *doc = json_loadb(resp.body, resp.body_len, 0, NULL);
        json_t *first = json_array_get(json_object_get(doc, "results"), 0);
        const char *type = json_string_value(json_object_get(first, "type"));
        if (type != NULL && strcmp(type, "ok") == 0) {
            json_t *result = json_object_get(json_object_get(first, "response"), "result");
            if (nstmts > 1) {
                rc = print_batch(c, result, nstmts);
            } else {
                if (c->json)
                    print_json(result);
                else
                    ctl_print_result(stdout, result);
                rc = 0;
            }
        } else if (type != NULL) {
            json_t *e = json_object_get(first, "error");
            fprintf(stderr, "error: %s (%s)\n", str(e, "message"), str(e, "code"));
        } else {
            fprintf(stderr, "shoalctl: unexpected reply from %s\n", url);
        }
        json_decref(doc);
        api_http_resp_fini(&resp);
    }
    free(text);
    free(token);
    free(primary_url);
    json_decref(stmts);
    return rc;
}

/* ------------------------------------------------------------------ */
/* main                                                                */

int ctl_main(int argc, char **argv)
{
    struct ctl c = {0};
    struct api_err err;
    char **rest = calloc((size_t)argc + 1, sizeof(*rest));
    int n = 0, rc;

    c.url = getenv("SHOAL_URL");
    c.token = getenv("SHOAL_TOKEN");
    c.router = getenv("SHOAL_ROUTER");
    if (c.url == NULL || c.url[0] == '\0')
        c.url = "http://127.0.0.1:7400";
    if (rest == NULL)
        return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_text, stdout);
            free(rest);
            return 0;
        }
        if (strcmp(a, "--version") == 0) {
            printf("shoalctl %s\n", SHOAL_VERSION);
            free(rest);
            return 0;
        }
        if (strcmp(a, "--json") == 0) {
            c.json = 1;
        } else if (strcmp(a, "--url") == 0 || strcmp(a, "--token") == 0 || strcmp(a, "--router") == 0) {
            if (i + 1 >= argc) {
                free(rest);
                return usage_error("%s needs a value", a);
            }
            const char **dst = a[2] == 'u' ? &c.url : a[2] == 't' ? &c.token : &c.router;
            *dst = argv[++i];
        } else {
            rest[n++] = argv[i];
        }
    }
    if (n == 0) {
        fputs(usage_text, stderr);
        free(rest);
        return 2;
    }
    if (strcmp(rest[0], "keygen") == 0) {
        if (n != 2) {
            free(rest);
            return usage_error("keygen needs exactly one directory");
        }
        if (api_token_init(&err) != API_OK || api_token_keygen_files(rest[1], &err) != API_OK) {
            fprintf(stderr, "shoalctl: %s\n", err.msg);
            free(rest);
            return 1;
        }
        printf("%s/cluster.key\n%s/cluster.pub\n%s/admin.token\n", rest[1], rest[1], rest[1]);
        free(rest);
        return 0;
    }
    if (api_http_global_init(&err) != API_OK || sodium_init() < 0 || (c.http = api_http_client_new()) == NULL) {
        fprintf(stderr, "shoalctl: cannot initialise\n");
        free(rest);
        return 1;
    }
    if (strcmp(rest[0], "tenants") == 0)
        rc = cmd_tenants(&c, n - 1, rest + 1);
    else if (strcmp(rest[0], "nodes") == 0)
        rc = cmd_nodes(&c, n - 1, rest + 1);
    else if (strcmp(rest[0], "handover") == 0)
        rc = cmd_handover(&c, n - 1, rest + 1);
    else if (strcmp(rest[0], "sql") == 0)
        rc = cmd_sql(&c, n - 1, rest + 1);
    else
        rc = usage_error("unknown command '%s'", rest[0]);
    api_http_client_free(c.http);
    api_http_global_cleanup();
    free(rest);
    return rc;
}
