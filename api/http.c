/*
 * api/http.c: blocking libcurl client (see http.h).
 *
 * Why blocking: every caller is a worker or control thread that has nothing
 * else to do while it waits, and one easy handle per thread gives connection
 * reuse without a shared multi handle and its locking.
 */
#include "api/http.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "api/workq.h"

#define HTTP_DEFAULT_MAX_BODY ((size_t)64 << 20)

struct api_http_client {
    CURL *easy;
};

struct transfer {
    const struct api_http_req *rq;
    struct api_http_resp *resp;
    api_http_chunk_fn on_chunk;
    void *ud;
    size_t cap;
    size_t alloc;
    int too_large;
    int stopped_by_reader;
};

int api_http_global_init(struct api_err *err)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return api_err_set(err, API_EINTERNAL, "curl_global_init failed");
    return API_OK;
}

void api_http_global_cleanup(void)
{
    curl_global_cleanup();
}

struct api_http_client *api_http_client_new(void)
{
    struct api_http_client *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    if ((c->easy = curl_easy_init()) == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

void api_http_client_free(struct api_http_client *c)
{
    if (c == NULL)
        return;
    curl_easy_cleanup(c->easy);
    free(c);
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *p)
{
    struct transfer *t = p;
    size_t n = size * nmemb;

    if (t->on_chunk != NULL) {
        if (t->on_chunk(t->ud, data, n) != 0) {
            t->stopped_by_reader = 1;
            return 0; /* makes curl abort with CURLE_WRITE_ERROR */
        }
        return n;
    }
    if (t->resp->body_len + n > t->cap) {
        t->too_large = 1;
        return 0;
    }
    if (t->resp->body_len + n + 1 > t->alloc) {
        size_t want = t->alloc ? t->alloc * 2 : 4096;
        while (want < t->resp->body_len + n + 1)
            want *= 2;
        char *nb = realloc(t->resp->body, want);
        if (nb == NULL)
            return 0;
        t->resp->body = nb;
        t->alloc = want;
    }
    memcpy(t->resp->body + t->resp->body_len, data, n);
    t->resp->body_len += n;
    t->resp->body[t->resp->body_len] = '\0';
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *p)
{
    struct transfer *t = p;
    size_t n = size * nmemb, len = n;
    char *colon;

    /* A new status line (after a 100-continue or a redirect) starts over. */
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        for (size_t i = 0; i < t->resp->nheaders; i++) {
            free(t->resp->headers[i].name);
            free(t->resp->headers[i].value);
        }
        t->resp->nheaders = 0;
        return n;
    }
    while (len > 0 && (data[len - 1] == '\r' || data[len - 1] == '\n'))
        len--;
    colon = memchr(data, ':', len);
    if (colon == NULL)
        return n;
    size_t nlen = (size_t)(colon - data);
    const char *v = colon + 1;
    size_t vlen = len - nlen - 1;
    while (vlen > 0 && isspace((unsigned char)*v)) {
        v++;
        vlen--;
    }
    while (vlen > 0 && isspace((unsigned char)v[vlen - 1]))
        vlen--;
    struct api_http_header *nh = realloc(t->resp->headers, (t->resp->nheaders + 1) * sizeof(*nh));
    if (nh == NULL)
        return 0;
    t->resp->headers = nh;
    char *name = strndup(data, nlen), *value = strndup(v, vlen);
    if (name == NULL || value == NULL) {
        free(name);
        free(value);
        return 0;
    }
    for (char *q = name; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    nh[t->resp->nheaders].name = name;
    nh[t->resp->nheaders].value = value;
    t->resp->nheaders++;
    return n;
}

static int on_progress(void *p, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct transfer *t = p;
    (void)dt, (void)dn, (void)ut, (void)un;
    return (t->rq->cancel != NULL && atomic_load(t->rq->cancel)) ? 1 : 0;
}

static int perform(struct api_http_client *c, const struct api_http_req *rq, api_http_chunk_fn on_chunk, void *ud,
                   struct api_http_resp *resp, struct api_err *err)
{
    struct transfer t = {.rq = rq, .resp = resp, .on_chunk = on_chunk, .ud = ud};
    struct curl_slist *hdrs = NULL;
    const char *method = rq->method ? rq->method : "GET";
    CURL *e = c->easy;
    CURLcode rc;
    int ret = API_OK;

    memset(resp, 0, sizeof(*resp));
    t.cap = rq->max_body ? rq->max_body : HTTP_DEFAULT_MAX_BODY;

    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, rq->url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, rq->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, rq->connect_timeout_ms ? rq->connect_timeout_ms : 2000L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* Reuse a kept-alive connection only while it is younger in idleness
     * than any server's idle timeout (h2o 2.2.5: 10 s; Node's http: 5 s):
     * a request written as the server closes the idle socket fails with
     * "Failure when receiving data from the peer", and a write that fails
     * that way cannot safely be sent again. */
    curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, 4L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (rq->cancel != NULL) {
        curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(e, CURLOPT_XFERINFODATA, &t);
        curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    }
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        if (rq->body != NULL || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body ? (const char *)rq->body : "");
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
        }
    }
    /* curl adds "Expect: 100-continue" to large POSTs; it costs a round trip. */
    hdrs = curl_slist_append(hdrs, "Expect:");
    for (const char *const *h = rq->headers; h != NULL && *h != NULL; h++)
        hdrs = curl_slist_append(hdrs, *h);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);

    api_workq_block_begin(); /* a worker waiting on the network lets another run */
    rc = curl_easy_perform(e);
    api_workq_block_end();
    if (rq->not_sent != NULL)
        *rq->not_sent = rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &resp->status);
    if (rc != CURLE_OK) {
        if (rc == CURLE_WRITE_ERROR && t.stopped_by_reader) {
            ret = API_OK;
        } else if (t.too_large) {
            ret = api_err_set(err, API_EUPSTREAM, "%s %s: response body over %zu bytes", method, rq->url, t.cap);
        } else if (rc == CURLE_OPERATION_TIMEDOUT) {
            ret = api_err_set(err, API_ETIMEOUT, "%s %s: timed out after %ld ms", method, rq->url, rq->timeout_ms);
        } else if (rc == CURLE_ABORTED_BY_CALLBACK) {
            ret = api_err_set(err, API_EUNAVAILABLE, "%s %s: cancelled", method, rq->url);
        } else {
            ret = api_err_set(err, API_EUPSTREAM, "%s %s: %s", method, rq->url, curl_easy_strerror(rc));
        }
    }
    curl_slist_free_all(hdrs);
    if (ret == API_OK && resp->body == NULL && on_chunk == NULL) {
        resp->body = calloc(1, 1);
        if (resp->body == NULL)
            ret = api_err_set(err, API_ENOMEM, "%s %s: out of memory", method, rq->url);
    }
    if (ret != API_OK)
        api_http_resp_fini(resp);
    return ret;
}

int api_http_do(struct api_http_client *c, const struct api_http_req *rq, struct api_http_resp *resp,
                struct api_err *err)
{
    return perform(c, rq, NULL, NULL, resp, err);
}

int api_http_stream(struct api_http_client *c, const struct api_http_req *rq, api_http_chunk_fn on_chunk, void *ud,
                    struct api_http_resp *resp, struct api_err *err)
{
    return perform(c, rq, on_chunk, ud, resp, err);
}

const char *api_http_resp_header(const struct api_http_resp *resp, const char *name)
{
    for (size_t i = 0; i < resp->nheaders; i++)
        if (strcasecmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    return NULL;
}

void api_http_resp_fini(struct api_http_resp *resp)
{
    if (resp == NULL)
        return;
    free(resp->body);
    for (size_t i = 0; i < resp->nheaders; i++) {
        free(resp->headers[i].name);
        free(resp->headers[i].value);
    }
    free(resp->headers);
    memset(resp, 0, sizeof(*resp));
}
