/* api/workq.c: keyed slots served by a shared pool of threads (see workq.h). */
#include "api/workq.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

struct job {
    struct job *next;
    api_job_fn fn;
    void *arg;
};

enum slot_state { SLOT_IDLE, SLOT_READY, SLOT_RUNNING };

struct slot {
    struct job *head, *tail;
    struct slot *next_ready;
    enum slot_state state;
    int in_place; /* running a job of api_workq_try_run's; atomic, written under mu */
    int64_t ready_since_ns;
    void *local;
};

struct api_workq {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* sleeping threads */
    struct slot *slots;
    size_t nslots;
    struct slot *ready_head, *ready_tail;
    size_t nready; /* written under mu, read atomically by a spinning thread */
    pthread_t *threads;
    size_t nthreads;
    size_t cap;     /* at most this many active */
    int64_t overdue_ns; /* a ready slot waiting this long is run over the cap */
    size_t active;  /* running a job outside a blocking section */
    size_t running; /* running a job at all */
    size_t sleeping;
    size_t waking; /* signalled, not yet awake */
    int watching;  /* a sleeping thread waits with a timeout */
    int stopping; /* written under mu, read atomically by a spinning thread */
    int spinning; /* a thread busy-waits for a job (api_workq_set_spin) */
    int64_t spin_ns;
    int64_t idle_since_ns; /* when the pool's threads last ran out of jobs (0: not idle) */
    int64_t gap_ns;        /* average time from then to the next submit */
    uint64_t spins;        /* spins started */
    void (*on_exit)(void);
    void (*slot_exit)(void);
};

/* A thread spins while the next job has lately come within this many spins
 * of the pool running out: the gap, measured at submit, includes the
 * submitting loop's own wake-up (100-200 us here) when the job's request
 * came after a quiet moment, so a client that waits for each reply shows
 * gaps of one to two spins. */
#define SPIN_GAP_FACTOR 3

/* how long api_workq_try_run waits for another thread's job in place */
#define TRY_RUN_WAIT_NS 50000

static __thread struct api_workq *tl_q;
static __thread struct slot *tl_slot;
static __thread int tl_blocked; /* nesting depth of api_workq_block_begin */

int64_t api_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void ready_push(struct api_workq *q, struct slot *s)
{
    s->state = SLOT_READY;
    s->next_ready = NULL;
    s->ready_since_ns = q->cap < q->nthreads ? api_now_ns() : 0; /* only the cap makes a slot wait */
    if (q->ready_tail != NULL)
        q->ready_tail->next_ready = s;
    else
        q->ready_head = s;
    q->ready_tail = s;
    __atomic_store_n(&q->nready, q->nready + 1, __ATOMIC_RELEASE);
}

static struct slot *ready_pop(struct api_workq *q)
{
    struct slot *s = q->ready_head;
    q->ready_head = s->next_ready;
    if (q->ready_head == NULL)
        q->ready_tail = NULL;
    __atomic_store_n(&q->nready, q->nready - 1, __ATOMIC_RELEASE);
    s->state = SLOT_RUNNING;
    return s;
}

/* With Q->mu held: wake one sleeping thread if a ready slot would otherwise
 * wait for a running one to finish while the cap allows another, or, at the
 * cap, if no sleeping thread watches the ready slots yet (it will). A
 * spinning thread takes the first ready slot itself. */
static void maybe_wake(struct api_workq *q)
{
    if (q->nready <= q->waking + (size_t)q->spinning || q->sleeping <= q->waking)
        return;
    if (q->active + q->waking < q->cap || (!q->watching && q->waking == 0)) {
        q->waking++;
        pthread_cond_signal(&q->cv);
    }
}

/* With Q->mu held: may this thread take the first ready slot now? */
static int may_take(struct api_workq *q)
{
    if (q->nready == 0)
        return 0;
    if (q->active < q->cap)
        return 1;
    return api_now_ns() - q->ready_head->ready_since_ns >= q->overdue_ns;
}

static void run_slot(struct api_workq *q, struct slot *s)
{
    /* with q->mu held on entry and on return */
    for (;;) {
        struct job *j = s->head;
        s->head = j->next;
        if (s->head == NULL)
            s->tail = NULL;
        pthread_mutex_unlock(&q->mu);
        tl_slot = s;
        j->fn(j->arg);
        tl_slot = NULL;
        free(j);
        pthread_mutex_lock(&q->mu);
        if (tl_blocked > 0) { /* a job that ended inside a blocking section */
            tl_blocked = 0;
            q->active++;
        }
        if (s->head == NULL) {
            s->state = SLOT_IDLE;
            return;
        }
        if (q->nready > 0) { /* take turns with the other ready slots */
            ready_push(q, s);
            return;
        }
    }
}

/*
 * With Q->mu held on entry and on return: busy-wait, unlocked, for a ready
 * slot for up to spin_ns. Why: on a VM an idle vCPU halts, and a job
 * submitted to a sleeping thread waits for the host to wake that vCPU
 * (100-200 us measured here; see api/server.c, spin_for_reply). Only when
 * no other thread runs a job, so at light load, where the spin takes a CPU
 * no job needs; only while jobs have been coming soon after the pool ran
 * out (gap_ns, SPIN_GAP_FACTOR): writes spaced a millisecond apart would
 * otherwise cost a whole spin each, for nothing; and one thread at a time.
 * maybe_wake counts the spinner as a thread on its way, so a submit does
 * not also wake a sleeper.
 */
static void spin_for_job(struct api_workq *q)
{
    q->spinning = 1;
    q->spins++;
    pthread_mutex_unlock(&q->mu);
    int64_t until = api_now_ns() + q->spin_ns;
    for (unsigned n = 1;
         __atomic_load_n(&q->nready, __ATOMIC_ACQUIRE) == 0 && !__atomic_load_n(&q->stopping, __ATOMIC_ACQUIRE);
         n++) {
        api_cpu_relax();
        if (n % 32 == 0 && api_now_ns() >= until)
            break;
    }
    pthread_mutex_lock(&q->mu);
    q->spinning = 0;
}

static void *worker_main(void *arg)
{
    struct api_workq *q = arg;

    tl_q = q;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        if (may_take(q)) {
            struct slot *s = ready_pop(q);
            q->active++;
            q->running++;
            maybe_wake(q);
            run_slot(q, s);
            q->active--;
            if (--q->running == 0 && q->spin_ns > 0)
                q->idle_since_ns = api_now_ns();
            if (q->stopping && q->running == 0)
                pthread_cond_broadcast(&q->cv); /* the others may be waiting for the last jobs to submit more */
            continue;
        }
        if (q->stopping && q->nready == 0 && q->running == 0)
            break;
        if (q->spin_ns > 0 && !q->spinning && !q->stopping && q->nready == 0 && q->running == 0 &&
            q->gap_ns < SPIN_GAP_FACTOR * q->spin_ns) {
            spin_for_job(q);
            if (may_take(q) || q->stopping)
                continue;
        }
        q->sleeping++;
        if (q->nready > 0 && !q->watching) {
            /* the cap holds ready slots back: watch for one that waits too long */
            struct timespec ts;
            int64_t due = q->ready_head->ready_since_ns + q->overdue_ns;
            ts.tv_sec = (time_t)(due / 1000000000LL);
            ts.tv_nsec = (long)(due % 1000000000LL);
            q->watching = 1;
            pthread_cond_timedwait(&q->cv, &q->mu, &ts);
            q->watching = 0;
        } else {
            pthread_cond_wait(&q->cv, &q->mu);
        }
        q->sleeping--;
        if (q->waking > 0)
            q->waking--;
    }
    pthread_mutex_unlock(&q->mu);
    if (q->on_exit != NULL)
        q->on_exit();
    tl_q = NULL;
    return NULL;
}

int api_workq_new(size_t nthreads, size_t nslots, void (*on_exit)(void), struct api_workq **out, struct api_err *err)
{
    struct api_workq *q = calloc(1, sizeof(*q));
    pthread_condattr_t ca;

    if (nthreads == 0)
        nthreads = 1;
    if (nslots == 0)
        nslots = nthreads;
    if (q == NULL || (q->slots = calloc(nslots, sizeof(*q->slots))) == NULL ||
        (q->threads = calloc(nthreads, sizeof(*q->threads))) == NULL) {
        if (q != NULL)
            free(q->slots);
        free(q);
        return api_err_set(err, API_ENOMEM, "worker pool: out of memory");
    }
    q->nslots = nslots;
    q->cap = nthreads;
    q->overdue_ns = 1000000;
    q->on_exit = on_exit;
    pthread_mutex_init(&q->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the watcher's deadline is on api_now_ns's clock */
    pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    for (size_t i = 0; i < nthreads; i++) {
        if (pthread_create(&q->threads[i], NULL, worker_main, q) != 0) {
            api_workq_free(q);
            return api_err_set(err, API_EINTERNAL, "worker pool: cannot start thread %zu", i);
        }
        q->nthreads = i + 1;
    }
    *out = q;
    return API_OK;
}

void api_workq_set_active_cap(struct api_workq *q, size_t cap, int64_t overdue_us)
{
    pthread_mutex_lock(&q->mu);
    q->cap = cap == 0 || cap > q->nthreads ? q->nthreads : cap;
    q->overdue_ns = (overdue_us > 0 ? overdue_us : 1) * 1000;
    pthread_mutex_unlock(&q->mu);
}

void api_workq_set_spin(struct api_workq *q, int64_t spin_us)
{
    pthread_mutex_lock(&q->mu);
    q->spin_ns = spin_us > 0 ? spin_us * 1000 : 0;
    pthread_mutex_unlock(&q->mu);
}

uint64_t api_workq_spins(struct api_workq *q)
{
    pthread_mutex_lock(&q->mu);
    uint64_t n = q->spins;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void api_workq_set_slot_exit(struct api_workq *q, void (*slot_exit)(void))
{
    q->slot_exit = slot_exit;
}

void api_workq_submit(struct api_workq *q, uint64_t key, api_job_fn fn, void *arg)
{
    struct slot *s = &q->slots[key % q->nslots];
    struct job *j = malloc(sizeof(*j));

    if (j == NULL)
        abort(); /* nothing sensible to do: the caller holds a request it must answer */
    j->next = NULL;
    j->fn = fn;
    j->arg = arg;
    pthread_mutex_lock(&q->mu);
    if (s->tail != NULL)
        s->tail->next = j;
    else
        s->head = j;
    s->tail = j;
    if (q->idle_since_ns != 0) { /* the first job after the pool ran out */
        q->gap_ns += (api_now_ns() - q->idle_since_ns - q->gap_ns) / 4;
        q->idle_since_ns = 0;
    }
    if (s->state == SLOT_IDLE) {
        ready_push(q, s);
        maybe_wake(q);
    }
    pthread_mutex_unlock(&q->mu);
}

int api_workq_try_run(struct api_workq *q, uint64_t key, api_job_fn fn, void *arg)
{
    struct slot *s = &q->slots[key % q->nslots];

    if (tl_q != NULL) /* a pool thread (of any pool) keeps to submitting */
        return 0;
    /* Another thread's job in place (an event loop's read, some µs) ends
     * sooner than a hand-off to the pool and back would: wait for it,
     * briefly, unless the slot has jobs queued behind it. */
    int64_t deadline = 0;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        if (s->state == SLOT_IDLE && !q->stopping)
            break;
        int wait = s->state == SLOT_RUNNING && s->in_place && s->head == NULL && !q->stopping;
        pthread_mutex_unlock(&q->mu);
        if (!wait)
            return 0;
        if (deadline == 0)
            deadline = api_now_ns() + TRY_RUN_WAIT_NS;
        while (__atomic_load_n(&s->in_place, __ATOMIC_ACQUIRE) && api_now_ns() < deadline) {
        }
        if (api_now_ns() >= deadline)
            return 0;
    }
    s->state = SLOT_RUNNING; /* no pool thread takes the slot now */
    __atomic_store_n(&s->in_place, 1, __ATOMIC_RELEASE);
    q->active++;
    q->running++;
    pthread_mutex_unlock(&q->mu);
    tl_q = q;
    tl_slot = s;
    fn(arg);
    tl_slot = NULL;
    tl_q = NULL;
    pthread_mutex_lock(&q->mu);
    __atomic_store_n(&s->in_place, 0, __ATOMIC_RELEASE);
    if (tl_blocked > 0) /* FN ended inside a blocking section: it no longer counted */
        tl_blocked = 0;
    else
        q->active--;
    q->running--;
    if (s->head != NULL) { /* submitted while FN ran: the pool runs them */
        ready_push(q, s);
        maybe_wake(q);
    } else {
        s->state = SLOT_IDLE;
    }
    if (q->stopping && q->running == 0)
        pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return 1;
}

size_t api_workq_slot(const struct api_workq *q, uint64_t key)
{
    return (size_t)(key % q->nslots);
}

void **api_workq_slot_local(void)
{
    return tl_slot != NULL ? &tl_slot->local : NULL;
}

void api_workq_block_begin(void)
{
    struct api_workq *q = tl_q;
    if (q == NULL || tl_slot == NULL || tl_blocked++ > 0)
        return;
    pthread_mutex_lock(&q->mu);
    q->active--;
    maybe_wake(q);
    pthread_mutex_unlock(&q->mu);
}

void api_workq_block_end(void)
{
    struct api_workq *q = tl_q;
    if (q == NULL || tl_slot == NULL || tl_blocked == 0 || --tl_blocked > 0)
        return;
    pthread_mutex_lock(&q->mu);
    q->active++; /* may go over the cap until this job ends: it was running first */
    pthread_mutex_unlock(&q->mu);
}

void api_workq_free(struct api_workq *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->mu);
    __atomic_store_n(&q->stopping, 1, __ATOMIC_RELEASE); /* read by a spinning thread */
    q->cap = q->nthreads; /* drain with every thread */
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    for (size_t i = 0; i < q->nthreads; i++)
        pthread_join(q->threads[i], NULL);
    if (q->slot_exit != NULL) {
        for (size_t i = 0; i < q->nslots; i++) {
            if (q->slots[i].local == NULL)
                continue;
            tl_slot = &q->slots[i];
            q->slot_exit();
            tl_slot = NULL;
        }
    }
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->threads);
    free(q->slots);
    free(q);
}

uint64_t api_hash_str(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}
