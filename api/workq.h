/*
 * api/workq.h: a pool of worker threads for blocking work (SQLite,
 * outgoing HTTP, etcd) that event loops must not do themselves.
 *
 * Ordering: a key maps to one of NSLOTS slots; the jobs of a slot run one
 * at a time, in submission order, so per-tenant work is serialised without
 * a lock per tenant. A slot is not a thread: any idle thread runs whichever
 * slot has work, and a slot's state (api_workq_slot_local) travels with it.
 * More slots than threads means fewer unrelated keys queue behind each
 * other's jobs (and take turns running in place, api_workq_try_run).
 *
 * Wake-ups: a pool may cap how many threads run jobs at once (the active
 * cap, e.g. the number of cores). A thread that finishes a job takes the
 * next ready slot itself, and a submit wakes a sleeping thread only while
 * fewer than the cap are running, so a steady stream of short jobs for many
 * keys keeps a few threads busy instead of waking one per key. A job about
 * to block (fdatasync, a network call) says so (api_workq_block_begin/end)
 * and stops counting against the cap. A job that blocks without saying so,
 * or runs long, delays others only briefly (OVERDUE_US): one sleeping thread
 * watches the ready slots and takes any that waited that long.
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

/* Starts NTHREADS threads serving NSLOTS slots (0: as many as threads), all
 * threads allowed to run at once. ON_EXIT (may be NULL) runs on each worker
 * thread just before it ends, to free thread-local state. */
int api_workq_new(size_t nthreads, size_t nslots, void (*on_exit)(void), struct api_workq **out,
                  struct api_err *err);

/* At most CAP threads run jobs at once outside api_workq_block_begin/end
 * (0 or more than the threads: no cap), except that a slot ready for
 * OVERDUE_US microseconds is run anyway by a watching thread if one sleeps.
 * Call before the first submit. */
void api_workq_set_active_cap(struct api_workq *q, size_t cap, int64_t overdue_us);

/* SLOT_EXIT runs once per slot when the pool is freed, with that slot
 * current (api_workq_slot_local points at its state), to free that state. */
void api_workq_set_slot_exit(struct api_workq *q, void (*slot_exit)(void));

/* Queues FN(ARG) on the slot chosen by KEY. */
void api_workq_submit(struct api_workq *q, uint64_t key, api_job_fn fn, void *arg);

/* Runs FN(ARG) at once on the calling thread as a job of KEY's slot, if
 * that slot is idle (no job queued or running); the jobs submitted to the
 * slot meanwhile run after it, on the pool. Inside FN the calling thread is
 * the slot's worker: api_workq_slot_local, api_workq_block_begin/end and the
 * order of the slot's jobs work as in a submitted job, and it counts against
 * the active cap (without waiting for it: the caller is running already).
 * Saves the two thread switches of submitting a job and waiting for it.
 * If another thread's FN runs in place on the slot and nothing is queued
 * behind it, waits for it (spinning, at most 50 µs): event loops reading one
 * tenant take turns. Returns 1 if FN ran, 0 if the slot was busy or the pool
 * is stopping (FN not run: submit it instead). For threads that are not the
 * pool's own (a pool thread would run the slot while holding another). */
int api_workq_try_run(struct api_workq *q, uint64_t key, api_job_fn fn, void *arg);

/* The slot KEY's jobs run on, as an index: jobs of keys with the same slot
 * run one at a time in submission order, so a caller may submit one job that
 * does the work of several such keys. */
size_t api_workq_slot(const struct api_workq *q, uint64_t key);

/* Inside a job: the address of its slot's state pointer (NULL at first),
 * which stays with the slot whichever thread runs it next. NULL outside a
 * job (and in SLOT_EXIT's absence of a pool). */
void **api_workq_slot_local(void);

/* Inside a job, around a call that waits (disk sync, network): the thread
 * stops counting against the active cap meanwhile, so another may run.
 * Both do nothing outside a job. */
void api_workq_block_begin(void);
void api_workq_block_end(void);

/* Runs every queued job, then stops and joins the threads. Accepts NULL. */
void api_workq_free(struct api_workq *q);

/* An idle pool thread busy-waits up to SPIN_US microseconds for the next
 * job before it sleeps, when no other pool thread runs a job, none spins
 * already, and jobs have lately come within three spins of the pool
 * running out of them; 0 (the default) never spins. Saves the wake-up of an
 * idle CPU per job at light load (see api_server_set_spin). Call before
 * the first submit. */
void api_workq_set_spin(struct api_workq *q, int64_t spin_us);
/* How many spins have started (for tests and metrics). */
uint64_t api_workq_spins(struct api_workq *q);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t api_now_ns(void);

/* A pause instruction for busy-wait loops. */
static inline void api_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* FNV-1a of a string, for keys. */
uint64_t api_hash_str(const char *s, size_t len);

#endif
