/*
 * Unit tests for api/workq.c, the keyed worker pool: per-key order with no
 * two jobs of a slot at once, slot-local state that follows the slot across
 * threads and is freed once per slot, the active cap, blocking sections,
 * the watcher that keeps a job blocking unannounced from stalling others,
 * draining at free (including jobs submitted by running jobs), and jobs run
 * on the caller's thread (api_workq_try_run) keeping their slot's order,
 * and the spinning thread (api_workq_set_spin) that takes the next job
 * itself without a sleeper being woken, and lets free end at once.
 */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

#include "api/err.h"
#include "api/workq.h"

static void pause_us(long us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void spin_us(long us)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do
        clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}

/* ---- order and exclusion ---- */

#define NKEYS 5
#define PER_KEY 400

struct order_state {
    atomic_int in_slot[NKEYS]; /* jobs of the key running now */
    atomic_int overlaps;
    int last[NKEYS]; /* only touched by the key's own jobs */
    atomic_int out_of_order;
    atomic_int done;
};

struct order_job {
    struct order_state *s;
    int key, seq;
};

static void order_job_run(void *arg)
{
    struct order_job *j = arg;
    struct order_state *s = j->s;
    if (atomic_fetch_add(&s->in_slot[j->key], 1) != 0)
        atomic_fetch_add(&s->overlaps, 1);
    if (j->seq != s->last[j->key] + 1)
        atomic_fetch_add(&s->out_of_order, 1);
    s->last[j->key] = j->seq;
    if (j->seq % 50 == 0)
        pause_us(100); /* now and then a slow one, so slots change threads */
    atomic_fetch_sub(&s->in_slot[j->key], 1);
    atomic_fetch_add(&s->done, 1);
    free(j);
}

static void run_order(size_t cap)
{
    struct api_workq *q;
    struct api_err err;
    struct order_state s = {0};

    assert_int_equal(api_workq_new(NKEYS, 0, NULL, &q, &err), API_OK);
    api_workq_set_active_cap(q, cap, 1000);
    for (int seq = 1; seq <= PER_KEY; seq++)
        for (int k = 0; k < NKEYS; k++) {
            struct order_job *j = malloc(sizeof(*j));
            *j = (struct order_job){.s = &s, .key = k, .seq = seq};
            api_workq_submit(q, (uint64_t)k, order_job_run, j);
        }
    api_workq_free(q); /* runs everything queued */
    assert_int_equal(atomic_load(&s.done), NKEYS * PER_KEY);
    assert_int_equal(atomic_load(&s.overlaps), 0);
    assert_int_equal(atomic_load(&s.out_of_order), 0);
    for (int k = 0; k < NKEYS; k++)
        assert_int_equal(s.last[k], PER_KEY);
}

static void jobs_of_a_key_run_alone_and_in_order(void **state)
{
    (void)state;
    run_order(0); /* no cap */
    run_order(1);
    run_order(2);
}

/* ---- slot-local state ---- */

static atomic_int slot_exits;
static atomic_int local_mismatches;

struct local_job {
    int key;
};

static void local_job_run(void *arg)
{
    struct local_job *j = arg;
    void **local = api_workq_slot_local();
    if (local == NULL) {
        atomic_fetch_add(&local_mismatches, 1);
    } else if (*local == NULL) {
        int *v = malloc(sizeof(*v));
        *v = j->key;
        *local = v;
    } else if (*(int *)*local != j->key) {
        atomic_fetch_add(&local_mismatches, 1);
    }
    if (j->key == 0)
        pause_us(50);
    free(j);
}

static void free_local(void)
{
    void **local = api_workq_slot_local();
    free(*local);
    *local = NULL;
    atomic_fetch_add(&slot_exits, 1);
}

static void slot_state_follows_the_slot_and_is_freed_once(void **state)
{
    struct api_workq *q;
    struct api_err err;
    (void)state;

    atomic_store(&slot_exits, 0);
    atomic_store(&local_mismatches, 0);
    assert_null(api_workq_slot_local()); /* not in a job */
    assert_int_equal(api_workq_new(4, 0, NULL, &q, &err), API_OK);
    api_workq_set_slot_exit(q, free_local);
    for (int i = 0; i < 2000; i++) {
        struct local_job *j = malloc(sizeof(*j));
        j->key = i % 3; /* slots 0..2 used, slot 3 never */
        api_workq_submit(q, (uint64_t)j->key, local_job_run, j);
    }
    api_workq_free(q);
    assert_int_equal(atomic_load(&local_mismatches), 0);
    assert_int_equal(atomic_load(&slot_exits), 3);
}

/* ---- the active cap ---- */

struct cap_state {
    atomic_int running, max_running, done;
};

static void cap_job_run(void *arg)
{
    struct cap_state *s = arg;
    int now = atomic_fetch_add(&s->running, 1) + 1, prev = atomic_load(&s->max_running);
    while (now > prev && !atomic_compare_exchange_weak(&s->max_running, &prev, now))
        ;
    spin_us(20);
    atomic_fetch_sub(&s->running, 1);
    atomic_fetch_add(&s->done, 1);
}

static void blocked_job_run(void *arg)
{
    struct cap_state *s = arg;
    api_workq_block_begin();
    api_workq_block_begin(); /* nests */
    api_workq_block_end();
    pause_us(20000); /* "waits for the disk": does not count */
    api_workq_block_end();
    (void)s;
}

static void the_cap_bounds_running_jobs_but_not_blocked_ones(void **state)
{
    struct api_workq *q;
    struct api_err err;
    struct cap_state s = {0};
    (void)state;

    assert_int_equal(api_workq_new(12, 0, NULL, &q, &err), API_OK);
    /* the watcher is out of reach (a minute), so only the cap decides */
    api_workq_set_active_cap(q, 2, 60000000);
    /* six slots wait for the disk the whole time; the cap of 2 still lets
     * two of the four busy slots run at once, never three */
    for (int k = 6; k < 12; k++)
        api_workq_submit(q, (uint64_t)k, blocked_job_run, &s);
    pause_us(2000);
    for (int i = 0; i < 200; i++)
        for (int k = 0; k < 4; k++)
            api_workq_submit(q, (uint64_t)k, cap_job_run, &s);
    /* before api_workq_free, which lifts the cap to drain */
    for (int i = 0; i < 10000 && atomic_load(&s.done) < 800; i++)
        pause_us(1000);
    assert_int_equal(atomic_load(&s.done), 800);
    api_workq_free(q);
    assert_int_equal(atomic_load(&s.max_running), 2);
}

/* ---- the watcher ---- */

struct stall_state {
    atomic_int released;
    atomic_int gave_up;
};

static void stall_job_run(void *arg)
{
    struct stall_state *s = arg;
    /* blocks without saying so, until another slot's job runs */
    for (int i = 0; i < 5000 && !atomic_load(&s->released); i++)
        pause_us(1000);
    if (!atomic_load(&s->released))
        atomic_store(&s->gave_up, 1);
}

static void release_job_run(void *arg)
{
    struct stall_state *s = arg;
    atomic_store(&s->released, 1);
}

static void a_job_blocking_unannounced_stalls_others_only_briefly(void **state)
{
    struct api_workq *q;
    struct api_err err;
    struct stall_state s = {0};
    (void)state;

    assert_int_equal(api_workq_new(3, 0, NULL, &q, &err), API_OK);
    api_workq_set_active_cap(q, 1, 1000);
    api_workq_submit(q, 0, stall_job_run, &s);
    pause_us(1000);
    api_workq_submit(q, 1, release_job_run, &s); /* over the cap: only the watcher can run it */
    /* before api_workq_free, which lifts the cap to drain */
    for (int i = 0; i < 4000 && !atomic_load(&s.released); i++)
        pause_us(1000);
    assert_int_equal(atomic_load(&s.released), 1);
    api_workq_free(q);
    assert_int_equal(atomic_load(&s.gave_up), 0);
}

/* ---- draining ---- */

struct chain {
    struct api_workq *q;
    atomic_int left;
};

static void chain_job_run(void *arg)
{
    struct chain *c = arg;
    if (atomic_fetch_sub(&c->left, 1) > 1)
        api_workq_submit(c->q, (uint64_t)atomic_load(&c->left), chain_job_run, c);
}

static void free_runs_jobs_that_running_jobs_submit(void **state)
{
    struct api_err err;
    struct chain c;
    (void)state;

    atomic_store(&c.left, 100);
    assert_int_equal(api_workq_new(4, 0, NULL, &c.q, &err), API_OK);
    api_workq_set_active_cap(c.q, 1, 1000);
    api_workq_submit(c.q, 0, chain_job_run, &c);
    api_workq_free(c.q);
    assert_int_equal(atomic_load(&c.left), 0);
}

/* ---- running a job on the caller's thread ---- */

static atomic_int inline_nested_ok;

static void nested_try_job_run(void *arg)
{
    struct api_workq *q = arg;
    /* a pool thread never runs another slot inline */
    if (api_workq_try_run(q, 1, nested_try_job_run, q) == 0)
        atomic_fetch_add(&inline_nested_ok, 1);
}

static void try_run_keeps_a_slots_order_and_state(void **state)
{
    struct api_workq *q;
    struct api_err err;
    struct order_state s = {0};
    int ran_here = 0, queued = 0;
    (void)state;

    atomic_store(&slot_exits, 0);
    atomic_store(&local_mismatches, 0);
    atomic_store(&inline_nested_ok, 0);
    assert_int_equal(api_workq_new(NKEYS, 0, NULL, &q, &err), API_OK);
    api_workq_set_active_cap(q, 1, 1000);
    for (int seq = 1; seq <= PER_KEY; seq++)
        for (int k = 0; k < NKEYS; k++) {
            struct order_job *j = malloc(sizeof(*j));
            *j = (struct order_job){.s = &s, .key = k, .seq = seq};
            if (api_workq_try_run(q, (uint64_t)k, order_job_run, j)) {
                ran_here++;
            } else {
                api_workq_submit(q, (uint64_t)k, order_job_run, j);
                queued++;
            }
        }
    api_workq_free(q);
    assert_int_equal(atomic_load(&s.done), NKEYS * PER_KEY);
    assert_int_equal(atomic_load(&s.overlaps), 0);
    assert_int_equal(atomic_load(&s.out_of_order), 0);
    assert_true(ran_here > 0);

    /* the slot's state is the same whichever thread runs its jobs */
    assert_int_equal(api_workq_new(4, 0, NULL, &q, &err), API_OK);
    api_workq_set_slot_exit(q, free_local);
    for (int i = 0; i < 600; i++) {
        struct local_job *j = malloc(sizeof(*j));
        j->key = i % 3;
        if (i % 2 == 0 || !api_workq_try_run(q, (uint64_t)j->key, local_job_run, j))
            api_workq_submit(q, (uint64_t)j->key, local_job_run, j);
    }
    api_workq_submit(q, 0, nested_try_job_run, q);
    api_workq_free(q);
    assert_null(api_workq_slot_local()); /* the caller's thread is itself again */
    assert_int_equal(atomic_load(&local_mismatches), 0);
    assert_int_equal(atomic_load(&slot_exits), 3);
    assert_int_equal(atomic_load(&inline_nested_ok), 1);
}

/* ---- spinning ---- */

struct who_state {
    atomic_ulong thread[2];
    atomic_int done;
};

struct who_job {
    struct who_state *s;
    int i;
};

static void who_job_run(void *arg)
{
    struct who_job *j = arg;
    atomic_store(&j->s->thread[j->i], (unsigned long)pthread_self());
    atomic_fetch_add(&j->s->done, 1);
}

static void wait_done(atomic_int *done, int n)
{
    for (int i = 0; i < 10000 && atomic_load(done) < n; i++)
        pause_us(1000);
    assert_int_equal(atomic_load(done), n);
}

static void a_spinning_thread_takes_the_next_job_itself(void **state)
{
    struct api_workq *q;
    struct api_err err;
    struct who_state s = {0};
    struct who_job a = {&s, 0}, b = {&s, 1};
    (void)state;

    assert_int_equal(api_workq_new(4, 0, NULL, &q, &err), API_OK);
    api_workq_set_spin(q, 10 * 1000 * 1000); /* 10 s: far longer than the test */
    api_workq_submit(q, 1, who_job_run, &a);
    wait_done(&s.done, 1);
    pause_us(20000); /* A's thread, the only one that ran, spins now */
    api_workq_submit(q, 2, who_job_run, &b); /* another slot: any thread may take it */
    wait_done(&s.done, 2);
    /* the spinner took it: with no spin a sleeper would be woken instead
     * (glibc wakes the longest waiter, never A's thread, the newest) */
    assert_true(atomic_load(&s.thread[0]) == atomic_load(&s.thread[1]));

    /* jobs submitted faster than one thread runs them still all run, in
     * order per key, with a spinner among the threads */
    struct order_state o = {0};
    for (int seq = 1; seq <= PER_KEY; seq++)
        for (int k = 0; k < NKEYS; k++) {
            struct order_job *j = malloc(sizeof(*j));
            *j = (struct order_job){.s = &o, .key = k, .seq = seq};
            api_workq_submit(q, (uint64_t)k, order_job_run, j);
            if (seq % 100 == 0)
                pause_us(5000); /* let the pool go idle and a thread spin */
        }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    api_workq_free(q); /* must not wait out the 10 s spin */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 5);
    assert_int_equal(atomic_load(&o.done), NKEYS * PER_KEY);
    assert_int_equal(atomic_load(&o.overlaps), 0);
    assert_int_equal(atomic_load(&o.out_of_order), 0);
}

/* Jobs spaced further apart than the spin stop it; jobs that come as soon
 * as the last one ends bring it back. */
static void spinning_follows_how_soon_jobs_come(void **state)
{
    struct api_workq *q;
    struct api_err err;
    struct who_state s = {0};
    struct who_job j = {&s, 0};
    (void)state;

    assert_int_equal(api_workq_new(2, 0, NULL, &q, &err), API_OK);
    api_workq_set_spin(q, 5000); /* 5 ms */
    int done = 0;
    for (int i = 0; i < 12; i++) { /* 50 ms apart */
        api_workq_submit(q, 1, who_job_run, &j);
        wait_done(&s.done, ++done);
        pause_us(50000);
    }
    uint64_t spins = api_workq_spins(q);
    for (int i = 0; i < 5; i++) {
        api_workq_submit(q, 1, who_job_run, &j);
        wait_done(&s.done, ++done);
        pause_us(50000);
    }
    assert_true(api_workq_spins(q) == spins); /* the average gap is far above 5 ms now */
    for (int i = 0; i < 200; i++) { /* back to back: the next as soon as the last is done */
        api_workq_submit(q, 1, who_job_run, &j);
        ++done;
        for (int k = 0; k < 10000000 && atomic_load(&s.done) < done; k++)
            sched_yield();
        assert_int_equal(atomic_load(&s.done), done);
    }
    assert_true(api_workq_spins(q) > spins + 100);
    api_workq_free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(jobs_of_a_key_run_alone_and_in_order),
        cmocka_unit_test(slot_state_follows_the_slot_and_is_freed_once),
        cmocka_unit_test(the_cap_bounds_running_jobs_but_not_blocked_ones),
        cmocka_unit_test(a_job_blocking_unannounced_stalls_others_only_briefly),
        cmocka_unit_test(free_runs_jobs_that_running_jobs_submit),
        cmocka_unit_test(try_run_keeps_a_slots_order_and_state),
        cmocka_unit_test(a_spinning_thread_takes_the_next_job_itself),
        cmocka_unit_test(spinning_follows_how_soon_jobs_come),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
