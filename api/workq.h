/*
 * api/workq.h: a fixed pool of worker threads for blocking work (SQLite,
 * outgoing HTTP, etcd) that event loops must not do themselves.
 *
 * Ordering: jobs with the same key run on the same thread, in submission
 * order, so per-tenant work is serialised without a lock per tenant. The
 * price is that a slow job delays other keys that hash to the same thread;
 * with more threads than cores and short jobs that is acceptable.
 *
 * Thread-safety: api_workq_submit may be called from any thread.
 */
#ifndef SHOAL_API_WORKQ_H
#define SHOAL_API_WORKQ_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"

struct api_workq;

typedef void (*api_job_fn)(void *arg);

/* Starts NTHREADS threads. ON_EXIT (may be NULL) runs on each worker thread
 * just before it ends, to free thread-local state. */
int api_workq_new(size_t nthreads, void (*on_exit)(void), struct api_workq **out, struct api_err *err);

/* Queues FN(ARG) on the thread chosen by KEY. */
void api_workq_submit(struct api_workq *q, uint64_t key, api_job_fn fn, void *arg);

/* The thread KEY's jobs run on, as an index: jobs of keys with the same
 * slot run on one thread in submission order, so a caller may submit one
 * job that does the work of several such keys. */
size_t api_workq_slot(const struct api_workq *q, uint64_t key);

/* Runs every queued job, then stops and joins the threads. Accepts NULL. */
void api_workq_free(struct api_workq *q);

/* FNV-1a of a string, for keys. */
uint64_t api_hash_str(const char *s, size_t len);

#endif
