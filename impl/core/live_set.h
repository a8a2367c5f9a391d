/* A thread-safe set of live object addresses (psrpc_request handles), so a
 * call on a handle that was already consumed and freed is recognised without
 * touching freed memory. Any thread. */
#ifndef PSRPC_IMPL_LIVE_SET_H
#define PSRPC_IMPL_LIVE_SET_H

#include <stdbool.h>

/* Adds p; false when memory ran out. */
bool psrpc__live_add(const void *p);
/* Removes p (absent: nothing happens). */
void psrpc__live_del(const void *p);
/* Locks p's shard and returns whether p is live; the shard stays locked (so
 * p cannot be removed, and so not freed, meanwhile) until psrpc__live_unlock(p). */
bool psrpc__live_lock(const void *p);
void psrpc__live_unlock(const void *p);

#endif
