/* api/workq.c: keyed worker threads (see workq.h). */
#include "api/workq.h"

#include <pthread.h>
#include <stdlib.h>

struct job {
    struct job *next;
    api_job_fn fn;
    void *arg;
};

struct worker {
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *head, *tail;
    int stopping;
    void (*on_exit)(void);
};

struct api_workq {
    struct worker *workers;
    size_t n;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (w->head == NULL && !w->stopping)
            pthread_cond_wait(&w->cv, &w->mu);
        struct job *j = w->head;
        if (j == NULL) { /* stopping and drained */
            pthread_mutex_unlock(&w->mu);
            break;
        }
        w->head = j->next;
        if (w->head == NULL)
            w->tail = NULL;
        pthread_mutex_unlock(&w->mu);
        j->fn(j->arg);
        free(j);
    }
    if (w->on_exit != NULL)
        w->on_exit();
    return NULL;
}

int api_workq_new(size_t nthreads, void (*on_exit)(void), struct api_workq **out, struct api_err *err)
{
    struct api_workq *q = calloc(1, sizeof(*q));

    if (nthreads == 0)
        nthreads = 1;
    if (q == NULL || (q->workers = calloc(nthreads, sizeof(*q->workers))) == NULL) {
        free(q);
        return api_err_set(err, API_ENOMEM, "worker pool: out of memory");
    }
    for (size_t i = 0; i < nthreads; i++) {
        struct worker *w = &q->workers[i];
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        w->on_exit = on_exit;
        if (pthread_create(&w->tid, NULL, worker_main, w) != 0) {
            q->n = i;
            api_workq_free(q);
            return api_err_set(err, API_EINTERNAL, "worker pool: cannot start thread %zu", i);
        }
        q->n = i + 1;
    }
    *out = q;
    return API_OK;
}

void api_workq_submit(struct api_workq *q, uint64_t key, api_job_fn fn, void *arg)
{
    struct worker *w = &q->workers[key % q->n];
    struct job *j = malloc(sizeof(*j));

    if (j == NULL)
        abort(); /* nothing sensible to do: the caller holds a request it must answer */
    j->next = NULL;
    j->fn = fn;
    j->arg = arg;
    pthread_mutex_lock(&w->mu);
    if (w->tail != NULL)
        w->tail->next = j;
    else
        w->head = j;
    w->tail = j;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

size_t api_workq_slot(const struct api_workq *q, uint64_t key)
{
    return (size_t)(key % q->n);
}

void api_workq_free(struct api_workq *q)
{
    if (q == NULL)
        return;
    for (size_t i = 0; i < q->n; i++) {
        struct worker *w = &q->workers[i];
        pthread_mutex_lock(&w->mu);
        w->stopping = 1;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
    for (size_t i = 0; i < q->n; i++) {
        pthread_join(q->workers[i].tid, NULL);
        pthread_mutex_destroy(&q->workers[i].mu);
        pthread_cond_destroy(&q->workers[i].cv);
    }
    free(q->workers);
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
