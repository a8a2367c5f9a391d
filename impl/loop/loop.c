/* The loop thread: a libuv loop woken through uv_async_t to drain a mutex
 * protected FIFO of tasks posted from other threads. Tasks posted on the loop
 * thread itself (a completion callback issuing the next call, a handler
 * responding) wake nothing: the drain in progress picks them up, or the
 * prepare handle runs them before the loop next blocks in epoll_wait. That
 * saves an eventfd write, a poll and an eventfd read per such task. */
#include "loop.h"

#include <openssl/crypto.h>
#include <pthread.h>

#include "common.h"

/* Pooled nodes (caller_owned false) and the callers' own (loop.h). */
typedef psrpc__task_node task;

struct psrpc__loop {
    uv_loop_t uv;
    uv_async_t async;
    uv_prepare_t prepare; /* runs tasks posted on the loop thread */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    task *head, *tail;
    task *spare; /* finished task nodes kept for reuse (under mu) */
    size_t nspare;
    bool stopping;          /* under mu: no more posts */
    bool finished;          /* under mu: the thread left uv_run */
    bool self_free;         /* under mu: the thread frees the loop on exit (it detached itself) */
    bool joined;            /* under mu: another thread joined it */
    psrpc__task_fn exit_fn; /* under mu: psrpc__loop_on_exit */
    void *exit_arg;
    bool exiting;      /* under mu: the thread took the exit hook */
    unsigned fork_gen; /* psrpc__fork_generation() at start */
};

static _Thread_local const psrpc__loop *current_loop;

/* ---- fork ---- */

static atomic_uint fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void after_fork_child(void) { atomic_fetch_add(&fork_gen, 1); }

static void fork_init(void) { pthread_atfork(NULL, NULL, after_fork_child); }

void psrpc__fork_watch(void) { pthread_once(&fork_once, fork_init); }

unsigned psrpc__fork_generation(void) {
    return atomic_load_explicit(&fork_gen, memory_order_relaxed);
}

int psrpc__fork_error(void) {
    return psrpc__error(PSRPC_FAILED_PRECONDITION,
                        "bus was opened in the parent process (fork): its loop thread does not "
                        "exist in this process; open a new bus here");
}

/* Tasks drain() runs before it returns to libuv even if more keep coming. */
#define DRAIN_BUDGET 1024
/* Task nodes kept for reuse: posting then costs no malloc/free in steady
 * state (a call posts about six tasks). */
#define SPARE_MAX 1024

/* Gives run task nodes back (under mu); returns what did not fit, to free
 * outside the lock. */
static task *give_back(psrpc__loop *loop, task *first, task *last, size_t n) {
    if (!first || loop->nspare >= SPARE_MAX)
        return first;
    last->next = loop->spare;
    loop->spare = first;
    loop->nspare += n;
    return NULL;
}

static void free_chain(task *t) {
    while (t) {
        task *next = t->next;
        free(t);
        t = next;
    }
}

/* Runs queued tasks, also those they post (a completion callback issuing the
 * next call runs at once, without a loop turn), but returns to libuv after
 * DRAIN_BUDGET tasks: a queue that never empties must not starve timers, I/O
 * and close callbacks (deadlines would never fire, and handles closed with
 * uv_close, with the memory they hold, would never be freed). Called from the
 * async handle (posts from other threads) and the prepare handle (posts from
 * the loop thread, which wake nothing). */
static void drain(psrpc__loop *loop) {
    size_t ran = 0;
    task *done = NULL, *done_last = NULL;
    size_t ndone = 0;
    for (;;) {
        pthread_mutex_lock(&loop->mu);
        task *extra = give_back(loop, done, done_last, ndone);
        done = done_last = NULL;
        ndone = 0;
        task *t = loop->head;
        loop->head = loop->tail = NULL;
        bool stopping = loop->stopping;
        pthread_mutex_unlock(&loop->mu);
        free_chain(extra);
        if (!t) {
            if (stopping && !uv_is_closing((uv_handle_t *)&loop->async)) {
                uv_close((uv_handle_t *)&loop->async, NULL);
                uv_close((uv_handle_t *)&loop->prepare, NULL);
            }
            return;
        }
        while (t) {
            /* Read before fn runs: fn may free a node its caller owns. */
            task *next = t->next;
            bool owned = t->caller_owned;
            t->fn(t->arg);
            if (!owned) {
                t->next = NULL;
                if (done_last)
                    done_last->next = t;
                else
                    done = t;
                done_last = t;
                ndone++;
            }
            t = next;
            ran++;
        }
        if (ran >= DRAIN_BUDGET) {
            /* Tasks posted on this thread meanwhile woke nothing, and a stop
             * seen above has not either (posting ends with it): make sure
             * the loop comes back without blocking. */
            pthread_mutex_lock(&loop->mu);
            extra = give_back(loop, done, done_last, ndone);
            pthread_mutex_unlock(&loop->mu);
            free_chain(extra);
            uv_async_send(&loop->async);
            return;
        }
    }
}

static void on_async(uv_async_t *async) { drain(async->data); }

/* Before every poll; an uncontended lock when there is nothing to run. */
static void on_prepare(uv_prepare_t *prepare) { drain(prepare->data); }

static void close_stray(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void psrpc__sigpipe_block(sigset_t *old) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, old);
}

void psrpc__sigmask_restore(const sigset_t *old) { pthread_sigmask(SIG_SETMASK, old, NULL); }

static void *thread_main(void *arg) {
    psrpc__loop *loop = arg;
    /* Already blocked (inherited from psrpc__loop_start); again in case the
     * creator's mask changed in between. */
    sigset_t ignored;
    psrpc__sigpipe_block(&ignored);
    current_loop = loop;
    uv_run(&loop->uv, UV_RUN_DEFAULT);
    /* Anything still open is a bug elsewhere; close it so the loop can end. */
    uv_walk(&loop->uv, close_stray, NULL);
    uv_run(&loop->uv, UV_RUN_DEFAULT);
    uv_loop_close(&loop->uv);
    pthread_mutex_lock(&loop->mu);
    loop->exiting = true;
    psrpc__task_fn exit_fn = loop->exit_fn;
    void *exit_arg = loop->exit_arg;
    pthread_mutex_unlock(&loop->mu);
    if (exit_fn)
        exit_fn(exit_arg); /* may free the loop's owner, and ask to free the loop */
    current_loop = NULL;
    /* libcrypto keeps per-thread state (SHA-256 of the Redis lock, TLS):
     * release it before the thread ends, or it shows as a leak. */
    OPENSSL_thread_stop();
    pthread_mutex_lock(&loop->mu);
    loop->finished = true;
    bool self_free = loop->self_free;
    pthread_cond_broadcast(&loop->cond);
    pthread_mutex_unlock(&loop->mu);
    if (self_free) {
        pthread_mutex_destroy(&loop->mu);
        pthread_cond_destroy(&loop->cond);
        free_chain(loop->spare);
        free(loop);
    }
    return NULL;
}

int psrpc__loop_start(psrpc__loop **out) {
    *out = NULL;
    psrpc__loop *loop = calloc(1, sizeof *loop);
    if (!loop)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    if (uv_loop_init(&loop->uv) != 0) {
        free(loop);
        return psrpc__error(PSRPC_INTERNAL, "uv_loop_init failed");
    }
    psrpc__fork_watch();
    loop->fork_gen = psrpc__fork_generation();
    loop->uv.data = loop;
    uv_async_init(&loop->uv, &loop->async, on_async);
    loop->async.data = loop;
    uv_prepare_init(&loop->uv, &loop->prepare);
    loop->prepare.data = loop;
    uv_prepare_start(&loop->prepare, on_prepare);
    uv_unref((uv_handle_t *)&loop->prepare); /* the async keeps the loop alive */
    pthread_mutex_init(&loop->mu, NULL);
    pthread_cond_init(&loop->cond, NULL);
    /* The thread starts with SIGPIPE blocked (and so does every thread it
     * creates, e.g. nats.c's reconnect thread). */
    sigset_t old;
    psrpc__sigpipe_block(&old);
    int rc = pthread_create(&loop->thread, NULL, thread_main, loop);
    psrpc__sigmask_restore(&old);
    if (rc != 0) {
        uv_close((uv_handle_t *)&loop->async, NULL);
        uv_close((uv_handle_t *)&loop->prepare, NULL);
        uv_run(&loop->uv, UV_RUN_DEFAULT);
        uv_loop_close(&loop->uv);
        pthread_mutex_destroy(&loop->mu);
        pthread_cond_destroy(&loop->cond);
        free_chain(loop->spare);
        free(loop);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "cannot start the loop thread");
    }
    *out = loop;
    return PSRPC_OK;
}

int psrpc__loop_post(psrpc__loop *loop, psrpc__task_fn fn, void *arg) {
    if (loop->fork_gen != psrpc__fork_generation())
        return psrpc__fork_error();
    pthread_mutex_lock(&loop->mu);
    task *t = loop->spare;
    if (t) {
        loop->spare = t->next;
        loop->nspare--;
    } else {
        pthread_mutex_unlock(&loop->mu);
        t = malloc(sizeof *t);
        if (!t)
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        pthread_mutex_lock(&loop->mu);
    }
    t->next = NULL;
    t->fn = fn;
    t->arg = arg;
    t->caller_owned = false;
    if (loop->stopping) {
        t->next = loop->spare;
        loop->spare = t;
        loop->nspare++;
        pthread_mutex_unlock(&loop->mu);
        return psrpc__error(PSRPC_CANCELED, "bus is closed");
    }
    if (loop->tail)
        loop->tail->next = t;
    else
        loop->head = t;
    loop->tail = t;
    if (current_loop != loop)
        uv_async_send(&loop->async);
    pthread_mutex_unlock(&loop->mu);
    return PSRPC_OK;
}

int psrpc__loop_post_node(psrpc__loop *loop, psrpc__task_node *node, psrpc__task_fn fn, void *arg) {
    node->next = NULL;
    node->fn = fn;
    node->arg = arg;
    node->caller_owned = true;
    if (loop->fork_gen != psrpc__fork_generation())
        return psrpc__fork_error();
    pthread_mutex_lock(&loop->mu);
    if (loop->stopping) {
        pthread_mutex_unlock(&loop->mu);
        return psrpc__error(PSRPC_CANCELED, "bus is closed");
    }
    if (loop->tail)
        loop->tail->next = node;
    else
        loop->head = node;
    loop->tail = node;
    if (current_loop != loop)
        uv_async_send(&loop->async);
    pthread_mutex_unlock(&loop->mu);
    return PSRPC_OK;
}

void psrpc__loop_stop(psrpc__loop *loop) {
    pthread_mutex_lock(&loop->mu);
    if (!loop->stopping) {
        loop->stopping = true;
        uv_async_send(&loop->async);
    }
    pthread_mutex_unlock(&loop->mu);
}

void psrpc__loop_wait(psrpc__loop *loop) {
    pthread_mutex_lock(&loop->mu);
    bool join = !loop->joined && !loop->self_free;
    loop->joined = true;
    pthread_mutex_unlock(&loop->mu);
    if (join)
        pthread_join(loop->thread, NULL); /* the thread has fully ended when this returns */
    pthread_mutex_lock(&loop->mu);
    while (!loop->finished)
        pthread_cond_wait(&loop->cond, &loop->mu);
    pthread_mutex_unlock(&loop->mu);
}

void psrpc__loop_free(psrpc__loop *loop) {
    if (!loop)
        return;
    psrpc__loop_stop(loop);
    pthread_mutex_lock(&loop->mu);
    if (psrpc__loop_on_thread(loop)) {
        /* From a callback: nobody can join us; the thread frees the loop. */
        if (!loop->joined)
            pthread_detach(loop->thread);
        loop->self_free = true;
        pthread_mutex_unlock(&loop->mu);
        return;
    }
    pthread_mutex_unlock(&loop->mu);
    psrpc__loop_wait(loop);
    pthread_mutex_destroy(&loop->mu);
    pthread_cond_destroy(&loop->cond);
    free_chain(loop->spare);
    free(loop);
}

void psrpc__loop_release(psrpc__loop *loop) {
    if (!loop)
        return;
    psrpc__loop_stop(loop);
    pthread_mutex_lock(&loop->mu);
    if (loop->self_free) {
        pthread_mutex_unlock(&loop->mu);
        return;
    }
    if (!loop->joined)
        pthread_detach(loop->thread);
    loop->joined = true;
    if (!loop->finished) {
        /* The thread frees it when it exits (it reads self_free under mu). */
        loop->self_free = true;
        pthread_mutex_unlock(&loop->mu);
        return;
    }
    /* Finished: the thread no longer touches the loop. */
    pthread_mutex_unlock(&loop->mu);
    pthread_mutex_destroy(&loop->mu);
    pthread_cond_destroy(&loop->cond);
    free_chain(loop->spare);
    free(loop);
}

bool psrpc__loop_on_exit(psrpc__loop *loop, psrpc__task_fn fn, void *arg) {
    pthread_mutex_lock(&loop->mu);
    bool ok = !loop->exiting;
    if (ok) {
        loop->exit_fn = fn;
        loop->exit_arg = arg;
    }
    pthread_mutex_unlock(&loop->mu);
    return ok;
}

uv_loop_t *psrpc__loop_uv(psrpc__loop *loop) { return &loop->uv; }

psrpc__loop *psrpc__loop_of(uv_loop_t *uv) { return uv->data; }

bool psrpc__loop_on_thread(const psrpc__loop *loop) { return current_loop == loop; }

bool psrpc__on_any_loop_thread(void) { return current_loop != NULL; }
