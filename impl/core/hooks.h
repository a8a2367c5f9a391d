/* Hook chains (psrpc_client_hooks, psrpc_server_hooks), the before-hook
 * handle, retries' options and the log callback (capi/psrpc.h, issue 16). */
#ifndef PSRPC_IMPL_CORE_HOOKS_H
#define PSRPC_IMPL_CORE_HOOKS_H

#include "core.h"

/* One registration, client or server (the same shape). */
typedef struct psrpc__hook {
    int (*before)(const psrpc_call_info *info, psrpc_hook_call *call, void *user_data);
    void (*outcome)(const psrpc_call_info *info, const psrpc_call_outcome *outcome,
                    void *user_data);
    void *user_data;
    psrpc_release_cb release;
} psrpc__hook;

/* An immutable chain. Adding makes a longer copy and keeps the older one
 * (calls in flight may still read it) until psrpc__hooks_free. */
typedef struct psrpc__hooks {
    size_t count;
    size_t before_count; /* entries with a before hook */
    struct psrpc__hooks *older;
    psrpc__hook items[];
} psrpc__hooks;

/* Appends h to the chain in *slot (any thread). */
int psrpc__hooks_add(_Atomic(psrpc__hooks *) *slot, const psrpc__hook *h);
/* Runs every release of the newest chain, frees every chain. */
void psrpc__hooks_free(psrpc__hooks *h);

/* The handle a before-hook gets: the metadata arrays it may edit. */
struct psrpc_hook_call {
    uint32_t magic;
    bool read_only; /* server side */
    char ***keys, ***values;
    size_t *count;
    int status; /* set by psrpc_hook_call_fail */
    char message[256];
};
void psrpc__hook_call_init(psrpc_hook_call *hc, char ***keys, char ***values, size_t *count,
                           bool read_only);

/* Runs the before hooks in order; 0, or the failing status with its message
 * in hc->message. */
int psrpc__hooks_run_before(const psrpc__hooks *h, const psrpc_call_info *info,
                            psrpc_hook_call *hc);
void psrpc__hooks_run_outcome(const psrpc__hooks *h, const psrpc_call_info *info,
                              const psrpc_call_outcome *outcome);

/* Monotonic nanoseconds. */
int64_t psrpc__mono_ns(void);

#endif
