/*
 * api/map.h: a string-keyed hash map (chained, power-of-two buckets, grows at
 * load 1). Keys are copied; values are borrowed pointers the caller owns.
 * Not thread-safe: the owner locks around it. O(1) expected per operation,
 * which is what "thousands of tenants per node" needs.
 */
#ifndef SHOAL_API_MAP_H
#define SHOAL_API_MAP_H

#include <stddef.h>

struct api_map;

struct api_map *api_map_new(void);
/* Frees the map and its keys; FREE_VALUE (may be NULL) is called on each value. */
void api_map_free(struct api_map *m, void (*free_value)(void *));
void *api_map_get(const struct api_map *m, const char *key);
/* Sets KEY to VALUE; returns the previous value (or NULL). *ERR_OOM set on allocation failure. */
void *api_map_put(struct api_map *m, const char *key, void *value, int *err_oom);
/* Removes KEY; returns its value or NULL. */
void *api_map_del(struct api_map *m, const char *key);
size_t api_map_len(const struct api_map *m);
/* The most entries one bucket holds (a test's look at the hash's spread). */
size_t api_map_longest_chain(const struct api_map *m);
/* Calls FN for each entry (order unspecified); FN must not modify the map. */
void api_map_foreach(const struct api_map *m, void (*fn)(void *ud, const char *key, void *value), void *ud);

/* A growable list of names (tenant or node IDs, under 64 bytes). */
struct api_names {
    char (*v)[64];
    size_t n, cap;
};
/* Appends NAME (truncated to 63 bytes); -1 on OOM (the list is unchanged). */
int api_names_add(struct api_names *l, const char *name);
void api_names_free(struct api_names *l);

#endif
