/* Multi calls (MULTI routing, wire-protocol.md 9). */
#include "client_internal.h"

psrpc_status psrpc_client_call_multi(uint64_t *call_id_out, psrpc_client *client,
                                     const psrpc_method *method, const void *data, size_t len,
                                     const psrpc_call_options *opts, psrpc_call_cb on_result,
                                     psrpc_call_cb on_done, void *user_data) {
    if (call_id_out)
        *call_id_out = 0;
    int rc = psrpc__call_check(client, data, len);
    if (rc != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(on_result, "callback is NULL");
    PSRPC__CHECK_ARG(on_done, "on_done is NULL");
    psrpc__call_req req = {PSRPC_CALL_KIND_MULTI, method, data, len, opts};
    call *k;
    if ((rc = psrpc__call_new(&k, client, &req)) != PSRPC_OK)
        return rc;
    k->cb = on_result;
    k->on_done = on_done;
    k->user_data = user_data;
    if ((rc = psrpc__call_start(k, call_id_out)) != PSRPC_OK)
        psrpc__call_free(k);
    return rc;
}
