/* api/map.c: chained string hash map (see map.h). */
#include "api/map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/workq.h"

struct entry {
    struct entry *next;
    unsigned long long hash;
    void *value;
    char key[];
};

struct api_map {
    struct entry **buckets;
    size_t nbuckets; /* power of two */
    size_t len;
};

struct api_map *api_map_new(void)
{
    struct api_map *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->nbuckets = 64;
    if ((m->buckets = calloc(m->nbuckets, sizeof(*m->buckets))) == NULL) {
        free(m);
        return NULL;
    }
    return m;
}

void api_map_free(struct api_map *m, void (*free_value)(void *))
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct entry *e = m->buckets[i];
        while (e != NULL) {
            struct entry *next = e->next;
            if (free_value != NULL)
                free_value(e->value);
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    free(m);
}

/* The bucket hash: api_hash_str with its bits mixed. Callers partition
 * keys by the low bits of api_hash_str (a worker slot is key % slots, and
 * each slot keeps its own map of its tenants), so the raw low bits of all
 * keys in such a map are alike: with 64 slots, a slot's 16 tenants shared
 * one bucket of 64 and every lookup walked the chain. The mix
 * (splitmix64's finalizer) spreads every input bit over the low ones. */
static unsigned long long key_hash(const char *key, size_t len)
{
    unsigned long long h = api_hash_str(key, len);
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

static struct entry **find(const struct api_map *m, const char *key, unsigned long long h)
{
    struct entry **pp = &m->buckets[h & (m->nbuckets - 1)];
    while (*pp != NULL && ((*pp)->hash != h || strcmp((*pp)->key, key) != 0))
        pp = &(*pp)->next;
    return pp;
}

void *api_map_get(const struct api_map *m, const char *key)
{
    struct entry **pp = find(m, key, key_hash(key, strlen(key)));
    return *pp ? (*pp)->value : NULL;
}

static void grow(struct api_map *m)
{
    size_t n = m->nbuckets * 2;
    struct entry **nb = calloc(n, sizeof(*nb));
    if (nb == NULL)
        return; /* stay at the current size: slower, still correct */
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct entry *e = m->buckets[i];
        while (e != NULL) {
            struct entry *next = e->next;
            e->next = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = nb;
    m->nbuckets = n;
}

void *api_map_put(struct api_map *m, const char *key, void *value, int *err_oom)
{
    size_t klen = strlen(key);
    unsigned long long h = key_hash(key, klen);
    struct entry **pp = find(m, key, h), *e;

    if (err_oom != NULL)
        *err_oom = 0;
    if (*pp != NULL) {
        void *old = (*pp)->value;
        (*pp)->value = value;
        return old;
    }
    if ((e = malloc(sizeof(*e) + klen + 1)) == NULL) {
        if (err_oom != NULL)
            *err_oom = 1;
        return NULL;
    }
    memcpy(e->key, key, klen + 1);
    e->hash = h;
    e->value = value;
    e->next = NULL;
    *pp = e;
    if (++m->len > m->nbuckets)
        grow(m);
    return NULL;
}

void *api_map_del(struct api_map *m, const char *key)
{
    struct entry **pp = find(m, key, key_hash(key, strlen(key)));
    struct entry *e = *pp;
    void *v;

    if (e == NULL)
        return NULL;
    *pp = e->next;
    v = e->value;
    free(e);
    m->len--;
    return v;
}

size_t api_map_longest_chain(const struct api_map *m)
{
    size_t longest = 0;
    for (size_t i = 0; i < m->nbuckets; i++) {
        size_t n = 0;
        for (const struct entry *e = m->buckets[i]; e != NULL; e = e->next)
            n++;
        if (n > longest)
            longest = n;
    }
    return longest;
}

size_t api_map_len(const struct api_map *m)
{
    return m->len;
}

void api_map_foreach(const struct api_map *m, void (*fn)(void *ud, const char *key, void *value), void *ud)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (struct entry *e = m->buckets[i]; e != NULL; e = e->next)
            fn(ud, e->key, e->value);
}

int api_names_add(struct api_names *l, const char *name)
{
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 64;
        void *nv = realloc(l->v, ncap * sizeof(*l->v));
        if (nv == NULL)
            return -1;
        l->v = nv;
        l->cap = ncap;
    }
    snprintf(l->v[l->n++], sizeof(l->v[0]), "%s", name);
    return 0;
}

void api_names_free(struct api_names *l)
{
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}
