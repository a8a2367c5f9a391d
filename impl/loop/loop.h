/* One libuv loop on one thread, with a thread-safe task queue. The only place
 * that creates threads. */
#ifndef PSRPC_IMPL_LOOP_H
#define PSRPC_IMPL_LOOP_H

#include <signal.h>
#include <stdbool.h>
#include <uv.h>

typedef struct psrpc__loop psrpc__loop;
typedef void (*psrpc__task_fn)(void *arg);

/* fork(): a pthread_atfork child handler (installed by the first
 * psrpc__fork_watch or psrpc__loop_start) bumps a generation counter in every
 * child process. A loop started under another generation belongs to a parent
 * process: its thread does not exist here. Posting to it fails at once,
 * before taking its lock (which a parent thread may have held at the fork),
 * with PSRPC_FAILED_PRECONDITION (psrpc__fork_error). Any thread. */
void psrpc__fork_watch(void);
unsigned psrpc__fork_generation(void);
/* Sets psrpc__error to the fork message and returns PSRPC_FAILED_PRECONDITION. */
int psrpc__fork_error(void);

/* Blocks SIGPIPE on the calling thread, saving its mask in *old (restore
 * with psrpc__sigmask_restore). Threads inherit the mask of the thread that
 * creates them: library threads are created with SIGPIPE blocked. */
void psrpc__sigpipe_block(sigset_t *old);
void psrpc__sigmask_restore(const sigset_t *old);

/* Starts the thread, with SIGPIPE blocked: a write to a socket the peer
 * reset fails with EPIPE instead of killing the process (SIGPIPE raised by
 * write(2) is directed at the writing thread). Returns 0 or a psrpc_status. */
int psrpc__loop_start(psrpc__loop **out);

/* Runs fn(arg) on the loop thread, in posting order. Any thread. Returns 0, or
 * PSRPC_CANCELED once the loop is stopping, or PSRPC_FAILED_PRECONDITION in a
 * forked child (fn will not run; the caller still owns arg). */
int psrpc__loop_post(psrpc__loop *loop, psrpc__task_fn fn, void *arg);

/* A task node the caller owns (embedded in its object): posting it cannot
 * fail for lack of memory, for the paths that must not (a free, an answer).
 * The loop never frees it and does not touch it once fn starts, so fn may
 * free the object holding it. Post a node again only after its fn ran. */
typedef struct psrpc__task_node {
    struct psrpc__task_node *next;
    psrpc__task_fn fn;
    void *arg;
    bool caller_owned;
} psrpc__task_node;

/* psrpc__loop_post with the caller's node: 0, or PSRPC_CANCELED once the
 * loop is stopping, or PSRPC_FAILED_PRECONDITION in a forked child (fn will
 * not run). Any thread. */
int psrpc__loop_post_node(psrpc__loop *loop, psrpc__task_node *node, psrpc__task_fn fn, void *arg);

/* Asks the loop to stop: tasks already queued still run, then the loop closes
 * its handles and the thread exits. No task can be posted after this call.
 * Any thread. Every other handle on the loop must have been closed by then. */
void psrpc__loop_stop(psrpc__loop *loop);

/* Waits until the loop thread has exited (after psrpc__loop_stop). Must not be
 * called on the loop thread. */
void psrpc__loop_wait(psrpc__loop *loop);

/* Frees the loop. Off the loop thread: waits for the thread to exit. On the
 * loop thread: the thread frees the loop itself when it exits. */
void psrpc__loop_free(psrpc__loop *loop);

/* Frees the loop without ever waiting: stops it; if its thread already
 * finished, frees it now, else the thread (detached) frees it when it exits.
 * Any thread. */
void psrpc__loop_release(psrpc__loop *loop);

/* Has fn(arg) run on the loop thread once the loop has ended (uv_run
 * returned and every handle is closed), before the thread exits; the thread
 * still counts as this loop's thread then. One hook per loop. Returns false
 * (fn will not run) if the thread already got that far. Any thread. */
bool psrpc__loop_on_exit(psrpc__loop *loop, psrpc__task_fn fn, void *arg);

uv_loop_t *psrpc__loop_uv(psrpc__loop *loop);
/* The loop that owns uv (a uv loop made by psrpc__loop_start). */
psrpc__loop *psrpc__loop_of(uv_loop_t *uv);
bool psrpc__loop_on_thread(const psrpc__loop *loop);
/* True on any libpsrpc loop thread. */
bool psrpc__on_any_loop_thread(void);

#endif
