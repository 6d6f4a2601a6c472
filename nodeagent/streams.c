/* nodeagent/streams.c: the stream table and batons (see streams.h). */
#include "nodeagent/streams.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "api/cluster.h"
#include "api/map.h"
#include "nodeagent/store.h"

#define MAC_BYTES 16
#define EXPIRED_REMEMBERED 4096 /* ids of expired streams kept to say "expired", not "invalid" */

struct agent_stream {
    uint64_t id;
    uint64_t seq;
    char tenant[API_NAME_MAX];
    unsigned char token_hash[16];
    sqlite3 *db;
    struct agent_hrana_stream *hs;
    int64_t expires_ms;
    int busy;
};

struct agent_streams {
    pthread_mutex_t mu;
    char node[API_NAME_MAX];
    unsigned char key[crypto_generichash_KEYBYTES];
    size_t max;
    int64_t idle_ms;
    struct api_map *by_id;   /* "%016llx" -> struct agent_stream* */
    struct api_map *expired; /* "%016llx" -> (void *)1, bounded */
    char expired_ring[EXPIRED_REMEMBERED][17];
    size_t expired_next;
};

int agent_streams_new(const char *node, size_t max_streams, int64_t idle_ms, struct agent_streams **out,
                      struct api_err *err)
{
    struct agent_streams *ss = calloc(1, sizeof(*ss));
    if (ss == NULL || (ss->by_id = api_map_new()) == NULL || (ss->expired = api_map_new()) == NULL) {
        if (ss != NULL)
            api_map_free(ss->by_id, NULL);
        free(ss);
        return api_err_set(err, API_ENOMEM, "streams: out of memory");
    }
    pthread_mutex_init(&ss->mu, NULL);
    snprintf(ss->node, sizeof(ss->node), "%s", node);
    randombytes_buf(ss->key, sizeof(ss->key));
    ss->max = max_streams;
    ss->idle_ms = idle_ms;
    *out = ss;
    return API_OK;
}

static void stream_free(struct agent_stream *st)
{
    if (st == NULL)
        return;
    agent_hrana_stream_free(st->hs);
    agent_store_close(st->db);
    free(st);
}

static void free_stream_value(void *v)
{
    stream_free(v);
}

void agent_streams_free(struct agent_streams *ss)
{
    if (ss == NULL)
        return;
    api_map_free(ss->by_id, free_stream_value);
    api_map_free(ss->expired, NULL);
    pthread_mutex_destroy(&ss->mu);
    sodium_memzero(ss->key, sizeof(ss->key));
    free(ss);
}

static void mac_of(const struct agent_streams *ss, uint64_t id, uint64_t seq, const char *tenant,
                   unsigned char mac[MAC_BYTES])
{
    crypto_generichash_state h;
    unsigned char buf[16];
    for (int i = 0; i < 8; i++) {
        buf[i] = (unsigned char)(id >> (56 - 8 * i));
        buf[8 + i] = (unsigned char)(seq >> (56 - 8 * i));
    }
    crypto_generichash_init(&h, ss->key, sizeof(ss->key), MAC_BYTES);
    crypto_generichash_update(&h, buf, sizeof(buf));
    crypto_generichash_update(&h, (const unsigned char *)tenant, strlen(tenant));
    crypto_generichash_final(&h, mac, MAC_BYTES);
}

/* The baton of ST at sequence number SEQ. */
static void make_baton_seq(const struct agent_streams *ss, const struct agent_stream *st, uint64_t seq, char *out,
                           size_t cap)
{
    unsigned char raw[16 + MAC_BYTES];
    char b64[64];
    for (int i = 0; i < 8; i++) {
        raw[i] = (unsigned char)(st->id >> (56 - 8 * i));
        raw[8 + i] = (unsigned char)(seq >> (56 - 8 * i));
    }
    mac_of(ss, st->id, seq, st->tenant, raw + 16);
    sodium_bin2base64(b64, sizeof(b64), raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    snprintf(out, cap, "%s.%s", ss->node, b64);
}

static void make_baton(const struct agent_streams *ss, const struct agent_stream *st, char *out, size_t cap)
{
    make_baton_seq(ss, st, st->seq, out, cap);
}

static void token_hash(const char *token, size_t len, unsigned char out[16])
{
    crypto_generichash(out, 16, (const unsigned char *)token, len, NULL, 0);
}

int agent_streams_take(struct agent_streams *ss, const char *baton, const char *tenant, const char *token,
                       size_t token_len, struct agent_stream **out, struct api_err *err)
{
    const char *dot = strchr(baton, '.');
    unsigned char raw[16 + MAC_BYTES], mac[MAC_BYTES], th[16];
    size_t rawlen = 0;
    uint64_t id = 0, seq = 0;
    char idkey[17];
    struct agent_stream *st;

    if (dot == NULL || (size_t)(dot - baton) != strlen(ss->node) || strncmp(baton, ss->node, strlen(ss->node)) != 0)
        return api_err_set(err, API_EBATON, "Received an invalid baton (it belongs to another node or is malformed)");
    if (sodium_base642bin(raw, sizeof(raw), dot + 1, strlen(dot + 1), NULL, &rawlen, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        rawlen != sizeof(raw))
        return api_err_set(err, API_EBATON, "Received an invalid baton");
    for (int i = 0; i < 8; i++) {
        id = id << 8 | raw[i];
        seq = seq << 8 | raw[8 + i];
    }
    mac_of(ss, id, seq, tenant, mac);
    if (sodium_memcmp(mac, raw + 16, MAC_BYTES) != 0)
        return api_err_set(err, API_EBATON, "Received an invalid baton");
    snprintf(idkey, sizeof(idkey), "%016llx", (unsigned long long)id);
    token_hash(token, token_len, th);
    pthread_mutex_lock(&ss->mu);
    st = api_map_get(ss->by_id, idkey);
    if (st == NULL) {
        int expired = api_map_get(ss->expired, idkey) != NULL;
        pthread_mutex_unlock(&ss->mu);
        if (expired)
            return api_err_set(err, API_ESTREAMEXPIRED, "The stream has expired due to inactivity");
        return api_err_set(err, API_EBATON, "Stream for this baton was closed");
    }
    if (st->busy) {
        pthread_mutex_unlock(&ss->mu);
        return api_err_set(err, API_ECONFLICT, "Received a baton that is in use by another request");
    }
    if (st->seq != seq) {
        pthread_mutex_unlock(&ss->mu);
        return api_err_set(err, API_EBATON, "Received a baton that has already been used");
    }
    if (sodium_memcmp(st->token_hash, th, sizeof(th)) != 0) {
        pthread_mutex_unlock(&ss->mu);
        return api_err_set(err, API_EBATON, "Received a baton opened with another token");
    }
    st->busy = 1;
    pthread_mutex_unlock(&ss->mu);
    *out = st;
    return API_OK;
}

int agent_streams_add(struct agent_streams *ss, const char *tenant, const char *token, size_t token_len, sqlite3 *db,
                      struct agent_hrana_stream *hs, struct agent_stream **out, struct api_err *err)
{
    struct agent_stream *st = calloc(1, sizeof(*st));
    char idkey[17];
    int oom = 0;

    if (st == NULL)
        return api_err_set(err, API_ENOMEM, "streams: out of memory");
    randombytes_buf(&st->id, sizeof(st->id));
    st->seq = 1;
    snprintf(st->tenant, sizeof(st->tenant), "%s", tenant);
    token_hash(token, token_len, st->token_hash);
    st->busy = 1;
    snprintf(idkey, sizeof(idkey), "%016llx", (unsigned long long)st->id);
    pthread_mutex_lock(&ss->mu);
    if (api_map_len(ss->by_id) >= ss->max) {
        pthread_mutex_unlock(&ss->mu);
        free(st);
        return api_err_set(err, API_ETOOMANY, "this node holds %zu open streams already; finish some transactions",
                           ss->max);
    }
    api_map_put(ss->by_id, idkey, st, &oom);
    pthread_mutex_unlock(&ss->mu);
    if (oom) {
        free(st);
        return api_err_set(err, API_ENOMEM, "streams: out of memory");
    }
    st->db = db;
    st->hs = hs;
    *out = st;
    return API_OK;
}

void agent_streams_release(struct agent_streams *ss, struct agent_stream *st, int closed, char *baton_out,
                           size_t cap)
{
    char idkey[17];
    snprintf(idkey, sizeof(idkey), "%016llx", (unsigned long long)st->id);
    pthread_mutex_lock(&ss->mu);
    if (closed) {
        api_map_del(ss->by_id, idkey);
        pthread_mutex_unlock(&ss->mu);
        stream_free(st);
        if (cap > 0)
            baton_out[0] = '\0';
        return;
    }
    st->seq++;
    st->expires_ms = api_now_ms() + ss->idle_ms;
    st->busy = 0;
    make_baton(ss, st, baton_out, cap);
    pthread_mutex_unlock(&ss->mu);
}

void agent_streams_next_baton(struct agent_streams *ss, const struct agent_stream *st, char *baton_out, size_t cap)
{
    pthread_mutex_lock(&ss->mu);
    make_baton_seq(ss, st, st->seq + 1, baton_out, cap);
    pthread_mutex_unlock(&ss->mu);
}

sqlite3 *agent_stream_db(const struct agent_stream *st)
{
    return st->db;
}

struct agent_hrana_stream *agent_stream_hrana(const struct agent_stream *st)
{
    return st->hs;
}

struct sweep {
    struct agent_stream **items;
    size_t n, cap;
    int64_t now;
};

static void find_expired(void *ud, const char *key, void *value)
{
    struct sweep *sw = ud;
    struct agent_stream *st = value;
    (void)key;
    if (st->busy || st->expires_ms > sw->now)
        return;
    if (sw->n == sw->cap) {
        size_t ncap = sw->cap ? sw->cap * 2 : 16;
        void *ni = realloc(sw->items, ncap * sizeof(*sw->items));
        if (ni == NULL)
            return;
        sw->items = ni;
        sw->cap = ncap;
    }
    sw->items[sw->n++] = st;
}

size_t agent_streams_sweep(struct agent_streams *ss, int64_t now_ms,
                           void (*close_fn)(void *ud, const char *tenant, sqlite3 *db, struct agent_hrana_stream *hs),
                           void *ud)
{
    struct sweep sw = {.now = now_ms};
    char idkey[17];
    int oom;

    pthread_mutex_lock(&ss->mu);
    api_map_foreach(ss->by_id, find_expired, &sw);
    for (size_t i = 0; i < sw.n; i++) {
        snprintf(idkey, sizeof(idkey), "%016llx", (unsigned long long)sw.items[i]->id);
        api_map_del(ss->by_id, idkey);
        char *slot = ss->expired_ring[ss->expired_next];
        if (slot[0] != '\0')
            api_map_del(ss->expired, slot);
        snprintf(slot, 17, "%s", idkey);
        api_map_put(ss->expired, slot, (void *)1, &oom);
        ss->expired_next = (ss->expired_next + 1) % EXPIRED_REMEMBERED;
    }
    pthread_mutex_unlock(&ss->mu);
    for (size_t i = 0; i < sw.n; i++) {
        close_fn(ud, sw.items[i]->tenant, sw.items[i]->db, sw.items[i]->hs);
        free(sw.items[i]);
    }
    free(sw.items);
    return sw.n;
}

size_t agent_streams_count(struct agent_streams *ss)
{
    size_t n;
    pthread_mutex_lock(&ss->mu);
    n = api_map_len(ss->by_id);
    pthread_mutex_unlock(&ss->mu);
    return n;
}
