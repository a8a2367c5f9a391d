/* Unary calls (QUEUE and AFFINITY routing) and the blocking calls. */
#include "client_internal.h"

psrpc_status psrpc_client_call(uint64_t *call_id_out, psrpc_client *client,
                               const psrpc_method *method, const void *data, size_t len,
                               const psrpc_call_options *opts, psrpc_call_cb cb, void *user_data) {
    if (call_id_out)
        *call_id_out = 0;
    int rc = psrpc__call_check(client, data, len);
    if (rc != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(cb, "callback is NULL");
    psrpc__call_req req = {PSRPC_CALL_KIND_UNARY, method, data, len, opts};
    call *k;
    if ((rc = psrpc__call_new(&k, client, &req)) != PSRPC_OK)
        return rc;
    k->cb = cb;
    k->user_data = user_data;
    if ((rc = psrpc__call_start(k, call_id_out)) != PSRPC_OK)
        psrpc__call_free(k);
    return rc;
}

/* ---- blocking call ---- */

typedef struct sync_slot {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool done;
    bool want_error; /* keep an owned copy of the error object */
    int status;
    char message[512];
    psrpc_error *error; /* owned copy (want_error), NULL if the copy failed */
    psrpc_msg *response;
} sync_slot;

static void sync_done(uint64_t id, const psrpc_msg *response, const psrpc_error *error,
                      const char *server_id, void *user_data) {
    (void)id;
    (void)server_id;
    sync_slot *s = user_data;
    psrpc_error *copy = NULL;
    if (error && s->want_error && psrpc_error_copy(&copy, error) != PSRPC_OK)
        copy = NULL; /* out of memory: the caller builds one from status + message */
    pthread_mutex_lock(&s->mu);
    if (error) {
        s->status = error->status;
        s->error = copy;
        snprintf(s->message, sizeof s->message, "%s", error->message);
    } else {
        s->response = psrpc_msg_retain(response);
    }
    s->done = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

/* An owned error object for a failure that has no wire error (a local
 * refusal, or a copy that ran out of memory): the status's wire code
 * ("internal" for local-only statuses). NULL if memory ran out. */
static psrpc_error *local_error(int status, const char *message) {
    psrpc_error view;
    memset(&view, 0, sizeof view);
    view.status = status;
    view.code = psrpc_status_code(status);
    view.message = message;
    psrpc_error *e = NULL;
    if (psrpc_error_copy(&e, &view) != PSRPC_OK)
        return NULL;
    return e;
}

static int call_sync(psrpc_msg **out, psrpc_error **error_out, psrpc_client *client,
                     const psrpc_method *method, const void *data, size_t len,
                     const psrpc_call_options *opts) {
    if (psrpc__on_any_loop_thread())
        return psrpc__error(PSRPC_WOULD_DEADLOCK,
                            "psrpc_client_call_sync called on a loop thread (inside a callback) "
                            "would deadlock; use psrpc_client_call");
    sync_slot s;
    memset(&s, 0, sizeof s);
    s.want_error = error_out != NULL;
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cond, NULL);
    int rc = psrpc_client_call(NULL, client, method, data, len, opts, sync_done, &s);
    if (rc == PSRPC_OK) {
        pthread_mutex_lock(&s.mu);
        while (!s.done)
            pthread_cond_wait(&s.cond, &s.mu);
        pthread_mutex_unlock(&s.mu);
        if (s.status != PSRPC_OK) {
            if (error_out)
                *error_out = s.error ? s.error : local_error(s.status, s.message);
            rc = psrpc__error(s.status, "%s", s.message);
        } else {
            *out = s.response;
        }
    }
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cond);
    return rc;
}

psrpc_status psrpc_client_call_sync(psrpc_msg **out, psrpc_client *client,
                                    const psrpc_method *method, const void *data, size_t len,
                                    const psrpc_call_options *opts) {
    PSRPC__CHECK_ARG(out, "out is NULL");
    *out = NULL;
    return call_sync(out, NULL, client, method, data, len, opts);
}

psrpc_status psrpc_client_call_sync_ex(psrpc_msg **out, psrpc_error **error_out,
                                       psrpc_client *client, const psrpc_method *method,
                                       const void *data, size_t len,
                                       const psrpc_call_options *opts) {
    if (error_out)
        *error_out = NULL;
    if (out)
        *out = NULL;
    int rc = out ? call_sync(out, error_out, client, method, data, len, opts)
                 : psrpc__error(PSRPC_INVALID_ARGUMENT, "out is NULL");
    if (rc != PSRPC_OK && error_out && !*error_out) {
        /* refused before anything was sent: the last error says why */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", psrpc_last_error());
        *error_out = local_error(rc, msg);
        psrpc__error(rc, "%s", msg);
    }
    return rc;
}
