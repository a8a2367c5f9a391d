/* psrpc.i — the SWIG core of the Python binding (psrpc._core).
 *
 * SWIG sees capi/psrpc.h only. Everything is ignored by default and the
 * functions the Pythonic layer needs are listed below. Hand-written pieces:
 *   - typemaps: borrowed bytes in (Py_buffer), topics, method and option
 *     tuples, out-pointers, psrpc_status -> exception (through a Python hook);
 *   - C trampolines for every callback type: they take the GIL, call the
 *     Python callable held as user_data, report exceptions with
 *     PyErr_WriteUnraisable, and drop the reference in the release callback
 *     (one-shot callbacks: after their single call);
 *   - two small extension types, Request and Selection, that own a
 *     psrpc_request / psrpc_selection until it is answered (from any thread)
 *     and answer it themselves when garbage collected unanswered; Stream owns
 *     a reference to a psrpc_stream;
 *   - call_blocking: a unary call waited for in C with the GIL released.
 *
 * Build with `swig -python -threads`: every wrapped call releases the GIL.
 */
%module(package="psrpc", threads="1") _core

%{
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <psrpc.h>

#if PY_VERSION_HEX >= 0x030D0000
#define PSRPC_PY_FINALIZING() Py_IsFinalizing()
#else
#define PSRPC_PY_FINALIZING() _Py_IsFinalizing()
#endif

/* Set on a thread once it ran one of our trampolines: a bus loop thread. */
static _Thread_local int psrpc_py_loop_thread;

/* Python callable(status, message) -> exception instance (psrpc._errors). */
static PyObject *psrpc_py_error_hook;

/* Sets the Python exception for a failed psrpc call made on this thread. */
static void psrpc_py_raise_status(int status, const char *message) {
    if (psrpc_py_error_hook) {
        PyObject *exc = PyObject_CallFunction(psrpc_py_error_hook, "is", status,
                                              message ? message : "");
        if (exc) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        return;
    }
    PyErr_Format(PyExc_RuntimeError, "%s: %s", psrpc_status_name(status),
                 message ? message : "");
}

static void psrpc_py_raise_last(int status) {
    psrpc_py_raise_status(status, psrpc_last_error());
}

static PyObject *psrpc_py_str(const char *s) {
    if (!s)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

static PyObject *psrpc_py_msg(const psrpc_msg *m) {
    if (!m)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)psrpc_msg_data(m),
                                     (Py_ssize_t)psrpc_msg_size(m));
}

/* psrpc_error -> (status, code, message, ((type_url, value), ...)) or None. */
static PyObject *psrpc_py_error(const psrpc_error *e) {
    if (!e)
        Py_RETURN_NONE;
    PyObject *details = PyTuple_New((Py_ssize_t)e->details_count);
    if (!details)
        return NULL;
    for (size_t i = 0; i < e->details_count; i++) {
        const psrpc_error_detail *d = &e->details[i];
        PyObject *t = Py_BuildValue("(Ny#)", psrpc_py_str(d->type_url ? d->type_url : ""),
                                    (const char *)d->value, (Py_ssize_t)d->value_len);
        if (!t) {
            Py_DECREF(details);
            return NULL;
        }
        PyTuple_SET_ITEM(details, (Py_ssize_t)i, t);
    }
    return Py_BuildValue("(iNNN)", (int)e->status, psrpc_py_str(e->code ? e->code : ""),
                         psrpc_py_str(e->message ? e->message : ""), details);
}

/* Adds an out-parameter to a wrapper's result (None is replaced). Steals obj. */
static PyObject *psrpc_py_append(PyObject *result, PyObject *obj) {
    if (!obj) {
        Py_XDECREF(result);
        return NULL;
    }
    if (!result || result == Py_None) {
        Py_XDECREF(result);
        return obj;
    }
    PyObject *t = PyTuple_Pack(2, result, obj);
    Py_DECREF(result);
    Py_DECREF(obj);
    return t;
}

/* Calls cb(*args) (args is stolen), reporting an exception as unraisable. */
static void psrpc_py_invoke(PyObject *cb, PyObject *args) {
    if (!args) {
        PyErr_WriteUnraisable(cb);
        return;
    }
    PyObject *r = PyObject_CallObject(cb, args);
    Py_DECREF(args);
    if (!r)
        PyErr_WriteUnraisable(cb);
    else
        Py_DECREF(r);
}

#define PSRPC_TR_ENTER()                                                                  \
    if (PSRPC_PY_FINALIZING())                                                            \
        return;                                                                           \
    psrpc_py_loop_thread = 1;                                                             \
    PyGILState_STATE gil_ = PyGILState_Ensure()
#define PSRPC_TR_LEAVE() PyGILState_Release(gil_)

/* ---- Request: a psrpc_request owned by Python until answered ---- */

enum { PSRPC_PY_STAGE_HANDLE = 0, PSRPC_PY_STAGE_AFFINITY = 1 };

typedef struct {
    PyObject_HEAD
    psrpc_request *req; /* NULL once answered */
    int stage;
    PyObject *payload, *id, *client_id, *method, *topics, *metadata;
    long long sent_at_ns, expiry_ns;
} PsrpcPyRequest;

static PyTypeObject PsrpcPyRequest_Type;

static PyObject *psrpc_py_request_new(psrpc_request *req, int stage) {
    PsrpcPyRequest *self = PyObject_New(PsrpcPyRequest, &PsrpcPyRequest_Type);
    if (!self)
        return NULL;
    self->req = req;
    self->stage = stage;
    self->payload = psrpc_py_msg(psrpc_request_payload(req));
    self->id = psrpc_py_str(psrpc_request_id(req));
    self->client_id = psrpc_py_str(psrpc_request_client_id(req));
    self->method = psrpc_py_str(psrpc_request_method(req));
    size_t nt = psrpc_request_topic_count(req);
    self->topics = PyTuple_New((Py_ssize_t)nt);
    for (size_t i = 0; self->topics && i < nt; i++)
        PyTuple_SET_ITEM(self->topics, (Py_ssize_t)i, psrpc_py_str(psrpc_request_topic(req, i)));
    self->metadata = PyDict_New();
    size_t nm = psrpc_request_metadata_count(req);
    for (size_t i = 0; self->metadata && i < nm; i++) {
        const char *k = NULL, *v = NULL;
        if (psrpc_request_metadata_at(req, i, &k, &v) != PSRPC_OK)
            break;
        PyObject *pk = psrpc_py_str(k), *pv = psrpc_py_str(v);
        if (pk && pv)
            PyDict_SetItem(self->metadata, pk, pv);
        Py_XDECREF(pk);
        Py_XDECREF(pv);
    }
    self->sent_at_ns = psrpc_request_sent_at_ns(req);
    self->expiry_ns = psrpc_request_expiry_ns(req);
    if (!self->payload || !self->id || !self->client_id || !self->method || !self->topics ||
        !self->metadata) {
        Py_DECREF(self); /* fails the request */
        return NULL;
    }
    return (PyObject *)self;
}

static void psrpc_py_request_dealloc(PsrpcPyRequest *self) {
    psrpc_request *req = self->req;
    self->req = NULL;
    /* Dropped unanswered: the caller is not left waiting (handler stage:
     * fails it; affinity stage: declines). Any stage, never blocks. */
    if (req)
        psrpc_request_abandon(req, PSRPC_INTERNAL, "request dropped without an answer");
    Py_XDECREF(self->payload);
    Py_XDECREF(self->id);
    Py_XDECREF(self->client_id);
    Py_XDECREF(self->method);
    Py_XDECREF(self->topics);
    Py_XDECREF(self->metadata);
    PyObject_Free(self);
}

static psrpc_request *psrpc_py_request_take(PsrpcPyRequest *self, int stage) {
    if (!self->req) {
        psrpc_py_raise_status(PSRPC_FAILED_PRECONDITION, "request already answered");
        return NULL;
    }
    if (self->stage != stage) {
        psrpc_py_raise_status(PSRPC_INVALID_ARGUMENT,
                              stage == PSRPC_PY_STAGE_AFFINITY
                                  ? "claim() answers an affinity question, not a request"
                                  : "an affinity question is answered with claim()");
        return NULL;
    }
    psrpc_request *r = self->req;
    self->req = NULL;
    return r;
}

static PyObject *psrpc_py_request_respond(PsrpcPyRequest *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_CONTIG_RO) < 0)
        return NULL;
    psrpc_request *r = psrpc_py_request_take(self, PSRPC_PY_STAGE_HANDLE);
    if (!r) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_request_respond(r, view.buf, (size_t)view.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *psrpc_py_request_fail(PsrpcPyRequest *self, PyObject *args) {
    int status;
    const char *message = NULL;
    if (!PyArg_ParseTuple(args, "i|z:fail", &status, &message))
        return NULL;
    if (status >= 0)
        return PyErr_Format(PyExc_ValueError, "status %d is not an error", status);
    psrpc_request *r = psrpc_py_request_take(self, PSRPC_PY_STAGE_HANDLE);
    if (!r)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_request_fail(r, status, message);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* fail_details(code, message, ((type_url, value), ...)) */
static PyObject *psrpc_py_request_fail_details(PsrpcPyRequest *self, PyObject *args) {
    const char *code, *message = NULL;
    PyObject *details = NULL;
    if (!PyArg_ParseTuple(args, "s|zO:fail_details", &code, &message, &details))
        return NULL;
    PyObject *seq = NULL;
    Py_ssize_t n = 0;
    if (details && details != Py_None) {
        seq = PySequence_Fast(details, "details must be a sequence of (type_url, bytes)");
        if (!seq)
            return NULL;
        n = PySequence_Fast_GET_SIZE(seq);
    }
    psrpc_error_detail *d = n ? calloc((size_t)n, sizeof *d) : NULL;
    Py_buffer *views = n ? calloc((size_t)n, sizeof *views) : NULL;
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    if (n && (!d || !views)) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < n; got++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, got);
        PyObject *url, *value;
        if (!PyArg_ParseTuple(item, "UO:detail", &url, &value))
            goto done;
        d[got].type_url = PyUnicode_AsUTF8(url);
        if (!d[got].type_url)
            goto done;
        if (PyObject_GetBuffer(value, &views[got], PyBUF_CONTIG_RO) < 0)
            goto done;
        d[got].value = views[got].buf;
        d[got].value_len = (size_t)views[got].len;
    }
    {
        psrpc_request *r = psrpc_py_request_take(self, PSRPC_PY_STAGE_HANDLE);
        if (!r)
            goto done;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = psrpc_request_fail_details(r, code, message, d, (size_t)n);
        Py_END_ALLOW_THREADS
        /* consumed whatever it returned (a refused argument fails the
         * request with PSRPC_INTERNAL saying why) */
        if (rc < 0) {
            psrpc_py_raise_last(rc);
            goto done;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (Py_ssize_t i = 0; views && i < got; i++)
        PyBuffer_Release(&views[i]);
    free(views);
    free(d);
    Py_XDECREF(seq);
    return result;
}

static PyObject *psrpc_py_request_claim(PsrpcPyRequest *self, PyObject *arg) {
    double affinity = PyFloat_AsDouble(arg);
    if (affinity == -1.0 && PyErr_Occurred())
        return NULL;
    psrpc_request *r = psrpc_py_request_take(self, PSRPC_PY_STAGE_AFFINITY);
    if (!r)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_request_claim(r, (float)affinity);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* reject(code, message=None): answers with an error in either stage; in the
 * affinity stage without claiming (as Go answers an undecodable request). */
static PyObject *psrpc_py_request_reject(PsrpcPyRequest *self, PyObject *args) {
    const char *code, *message = NULL;
    if (!PyArg_ParseTuple(args, "s|z:reject", &code, &message))
        return NULL;
    if (!self->req) {
        psrpc_py_raise_status(PSRPC_FAILED_PRECONDITION, "request already answered");
        return NULL;
    }
    psrpc_request *r = self->req;
    self->req = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_request_reject(r, code, message, NULL, 0);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *psrpc_py_request_answered(PsrpcPyRequest *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->req == NULL);
}

static PyMethodDef psrpc_py_request_methods[] = {
    {"respond", (PyCFunction)psrpc_py_request_respond, METH_O,
     "respond(data): answers with serialized response bytes"},
    {"fail", (PyCFunction)psrpc_py_request_fail, METH_VARARGS,
     "fail(status, message=None): fails with a psrpc status"},
    {"fail_details", (PyCFunction)psrpc_py_request_fail_details, METH_VARARGS,
     "fail_details(code, message=None, details=()): fails with any code string"},
    {"claim", (PyCFunction)psrpc_py_request_claim, METH_O,
     "claim(affinity): answers an affinity question (negative declines)"},
    {"reject", (PyCFunction)psrpc_py_request_reject, METH_VARARGS,
     "reject(code, message=None): fails in either stage (affinity: without a claim)"},
    {NULL, NULL, 0, NULL}};

static PyMemberDef psrpc_py_request_members[] = {
    {"stage", T_INT, offsetof(PsrpcPyRequest, stage), READONLY, NULL},
    {"payload", T_OBJECT_EX, offsetof(PsrpcPyRequest, payload), READONLY, NULL},
    {"id", T_OBJECT_EX, offsetof(PsrpcPyRequest, id), READONLY, NULL},
    {"client_id", T_OBJECT_EX, offsetof(PsrpcPyRequest, client_id), READONLY, NULL},
    {"method", T_OBJECT_EX, offsetof(PsrpcPyRequest, method), READONLY, NULL},
    {"topics", T_OBJECT_EX, offsetof(PsrpcPyRequest, topics), READONLY, NULL},
    {"metadata", T_OBJECT_EX, offsetof(PsrpcPyRequest, metadata), READONLY, NULL},
    {"sent_at_ns", T_LONGLONG, offsetof(PsrpcPyRequest, sent_at_ns), READONLY, NULL},
    {"expiry_ns", T_LONGLONG, offsetof(PsrpcPyRequest, expiry_ns), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyGetSetDef psrpc_py_request_getset[] = {
    {"answered", (getter)psrpc_py_request_answered, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject PsrpcPyRequest_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "psrpc._core.Request",
    .tp_basicsize = sizeof(PsrpcPyRequest),
    .tp_dealloc = (destructor)psrpc_py_request_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A psrpc_request owned until answered (exactly once, any thread).",
    .tp_methods = psrpc_py_request_methods,
    .tp_members = psrpc_py_request_members,
    .tp_getset = psrpc_py_request_getset,
};

/* ---- Selection: a psrpc_selection owned until answered ---- */

typedef struct {
    PyObject_HEAD
    psrpc_selection *sel;
} PsrpcPySelection;

static PyTypeObject PsrpcPySelection_Type;

static void psrpc_py_selection_dealloc(PsrpcPySelection *self) {
    psrpc_selection *s = self->sel;
    self->sel = NULL;
    if (s)
        psrpc_selection_fail(s, PSRPC_UNAVAILABLE, "selection dropped without an answer");
    PyObject_Free(self);
}

static psrpc_selection *psrpc_py_selection_take(PsrpcPySelection *self) {
    psrpc_selection *s = self->sel;
    if (!s)
        psrpc_py_raise_status(PSRPC_FAILED_PRECONDITION, "selection already answered");
    self->sel = NULL;
    return s;
}

static PyObject *psrpc_py_selection_choose(PsrpcPySelection *self, PyObject *args) {
    const char *server_id;
    if (!PyArg_ParseTuple(args, "s:choose", &server_id))
        return NULL;
    psrpc_selection *s = psrpc_py_selection_take(self);
    if (!s)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_selection_choose(s, server_id);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *psrpc_py_selection_fail(PsrpcPySelection *self, PyObject *args) {
    int status;
    const char *message = NULL;
    if (!PyArg_ParseTuple(args, "i|z:fail", &status, &message))
        return NULL;
    if (status >= 0)
        return PyErr_Format(PyExc_ValueError, "status %d is not an error", status);
    psrpc_selection *s = psrpc_py_selection_take(self);
    if (!s)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_selection_fail(s, status, message);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef psrpc_py_selection_methods[] = {
    {"choose", (PyCFunction)psrpc_py_selection_choose, METH_VARARGS, "choose(server_id)"},
    {"fail", (PyCFunction)psrpc_py_selection_fail, METH_VARARGS, "fail(status, message=None)"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject PsrpcPySelection_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "psrpc._core.Selection",
    .tp_basicsize = sizeof(PsrpcPySelection),
    .tp_dealloc = (destructor)psrpc_py_selection_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A server selection owned until answered (choose or fail, any thread).",
    .tp_methods = psrpc_py_selection_methods,
};


/* ---- Stream: a reference to a psrpc_stream, released when collected ---- */

#define PSRPC_PY_KIND_OPEN 4
#define PSRPC_PY_KIND_CLOSE 5

typedef struct {
    PyObject_HEAD
    psrpc_stream *s;
} PsrpcPyStream;

static PyTypeObject PsrpcPyStream_Type;

/* Takes ownership of the reference s. */
static PyObject *psrpc_py_stream_new(psrpc_stream *s) {
    PsrpcPyStream *self = PyObject_New(PsrpcPyStream, &PsrpcPyStream_Type);
    if (!self) {
        psrpc_stream_free(s);
        return NULL;
    }
    self->s = s;
    return (PyObject *)self;
}

static void psrpc_py_stream_dealloc(PsrpcPyStream *self) {
    psrpc_stream *s = self->s;
    self->s = NULL;
    if (s)
        psrpc_stream_free(s); /* closes cleanly if still open */
    PyObject_Free(self);
}

/* stream message: cb(0, bytes) -> truthy to refuse (not acknowledged) */
static int psrpc_py_tr_stream_message(psrpc_stream *stream, const psrpc_msg *msg, void *ud) {
    (void)stream;
    if (PSRPC_PY_FINALIZING())
        return 1;
    psrpc_py_loop_thread = 1;
    PyGILState_STATE gil_ = PyGILState_Ensure();
    int refuse = 0;
    PyObject *args = Py_BuildValue("(iN)", 0, psrpc_py_msg(msg));
    PyObject *r = args ? PyObject_CallObject((PyObject *)ud, args) : NULL;
    Py_XDECREF(args);
    if (!r) {
        PyErr_WriteUnraisable((PyObject *)ud);
        refuse = 1;
    } else {
        refuse = r == Py_None ? 0 : PyObject_IsTrue(r);
        if (refuse < 0) {
            PyErr_Clear();
            refuse = 1;
        }
        Py_DECREF(r);
    }
    PyGILState_Release(gil_);
    return refuse;
}

/* stream close: cb(5, error) */
static void psrpc_py_tr_stream_close(psrpc_stream *stream, const psrpc_error *cause, void *ud) {
    (void)stream;
    PSRPC_TR_ENTER();
    psrpc_py_invoke((PyObject *)ud,
                    Py_BuildValue("(iN)", PSRPC_PY_KIND_CLOSE, psrpc_py_error(cause)));
    PSRPC_TR_LEAVE();
}

/* stream open outcome: cb(4, error) */
static void psrpc_py_tr_stream_open(const psrpc_error *error, void *ud) {
    PSRPC_TR_ENTER();
    psrpc_py_invoke((PyObject *)ud,
                    Py_BuildValue("(iN)", PSRPC_PY_KIND_OPEN, psrpc_py_error(error)));
    PSRPC_TR_LEAVE();
}

/* one-shot done (stream send): cb(error), then dropped */
static void psrpc_py_tr_done(const psrpc_error *error, void *ud) {
    PSRPC_TR_ENTER();
    PyObject *cb = ud;
    psrpc_py_invoke(cb, Py_BuildValue("(N)", psrpc_py_error(error)));
    Py_DECREF(cb);
    PSRPC_TR_LEAVE();
}

/* stream registration: cb(0, Stream) for an accepted stream */
static void psrpc_py_tr_stream_handler(psrpc_stream *stream, void *ud) {
    if (PSRPC_PY_FINALIZING())
        return;
    psrpc_py_loop_thread = 1;
    PyGILState_STATE gil_ = PyGILState_Ensure();
    PyObject *obj = psrpc_py_stream_new(stream);
    if (!obj)
        PyErr_WriteUnraisable((PyObject *)ud);
    else
        psrpc_py_invoke((PyObject *)ud, Py_BuildValue("(iN)", 0, obj));
    PyGILState_Release(gil_);
}

static psrpc_stream *psrpc_py_stream_ptr(PsrpcPyStream *self) {
    if (!self->s)
        psrpc_py_raise_status(PSRPC_CANCELED, "stream is released");
    return self->s;
}

/* send(data, timeout_ms=0, callback=None): callback(error) once acknowledged or failed */
static PyObject *psrpc_py_stream_send(PsrpcPyStream *self, PyObject *args) {
    Py_buffer view;
    long long timeout_ms = 0;
    PyObject *cb = Py_None;
    if (!PyArg_ParseTuple(args, "y*|LO:send", &view, &timeout_ms, &cb))
        return NULL;
    psrpc_stream *s = psrpc_py_stream_ptr(self);
    if (!s || (cb != Py_None && !PyCallable_Check(cb))) {
        if (s)
            PyErr_SetString(PyExc_TypeError, "callback must be callable");
        PyBuffer_Release(&view);
        return NULL;
    }
    if (cb != Py_None)
        Py_INCREF(cb);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_stream_send(s, view.buf, (size_t)view.len, timeout_ms,
                           cb != Py_None ? psrpc_py_tr_done : NULL, cb != Py_None ? cb : NULL);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc < 0) {
        if (cb != Py_None)
            Py_DECREF(cb);
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static void psrpc_py_blocking_done_cb(const psrpc_error *error, void *ud);

/* send_blocking(data, timeout_ms=0) -> None or error tuple; waits with the GIL released */
static PyObject *psrpc_py_stream_send_blocking(PsrpcPyStream *self, PyObject *args);

static PyObject *psrpc_py_stream_close(PsrpcPyStream *self, PyObject *args) {
    int status = 0;
    const char *message = NULL;
    if (!PyArg_ParseTuple(args, "|iz:close", &status, &message))
        return NULL;
    psrpc_stream *s = psrpc_py_stream_ptr(self);
    if (!s)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_stream_close(s, status, message);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* close_code(code=None, message=None): any wire code string; None/"" closes cleanly */
static PyObject *psrpc_py_stream_close_code(PsrpcPyStream *self, PyObject *args) {
    const char *code = NULL, *message = NULL;
    if (!PyArg_ParseTuple(args, "|zz:close_code", &code, &message))
        return NULL;
    psrpc_stream *s = psrpc_py_stream_ptr(self);
    if (!s)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_stream_close_code(s, code, message);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* set_callbacks(cb): cb(0, bytes) -> refuse?, cb(5, cause), cb(3, None) on release */
static void psrpc_py_tr_release_notify(void *ud);
static PyObject *psrpc_py_stream_set_callbacks(PsrpcPyStream *self, PyObject *cb) {
    if (!PyCallable_Check(cb)) {
        PyErr_SetString(PyExc_TypeError, "callback must be callable");
        return NULL;
    }
    psrpc_stream *s = psrpc_py_stream_ptr(self);
    if (!s)
        return NULL;
    Py_INCREF(cb);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_stream_set_callbacks(s, psrpc_py_tr_stream_message, psrpc_py_tr_stream_close, cb,
                                    psrpc_py_tr_release_notify);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        Py_DECREF(cb);
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *psrpc_py_stream_get_id(PsrpcPyStream *self, void *c) {
    (void)c;
    return self->s ? psrpc_py_str(psrpc_stream_id(self->s)) : (Py_INCREF(Py_None), Py_None);
}
static PyObject *psrpc_py_stream_get_node_id(PsrpcPyStream *self, void *c) {
    (void)c;
    return self->s ? psrpc_py_str(psrpc_stream_node_id(self->s)) : (Py_INCREF(Py_None), Py_None);
}
static PyObject *psrpc_py_stream_get_method(PsrpcPyStream *self, void *c) {
    (void)c;
    return self->s ? psrpc_py_str(psrpc_stream_method(self->s)) : (Py_INCREF(Py_None), Py_None);
}
static PyObject *psrpc_py_stream_get_metadata(PsrpcPyStream *self, void *c) {
    (void)c;
    PyObject *d = PyDict_New();
    if (!d || !self->s)
        return d;
    size_t n = psrpc_stream_metadata_count(self->s);
    for (size_t i = 0; i < n; i++) {
        const char *k = NULL, *v = NULL;
        if (psrpc_stream_metadata_at(self->s, i, &k, &v) != PSRPC_OK)
            break;
        PyObject *pk = psrpc_py_str(k), *pv = psrpc_py_str(v);
        if (!pk || !pv || PyDict_SetItem(d, pk, pv) < 0) {
            Py_XDECREF(pk);
            Py_XDECREF(pv);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(pk);
        Py_DECREF(pv);
    }
    return d;
}

static PyObject *psrpc_py_stream_get_expiry_ns(PsrpcPyStream *self, void *c) {
    (void)c;
    return PyLong_FromLongLong(self->s ? (long long)psrpc_stream_expiry_ns(self->s) : 0);
}

static PyMethodDef psrpc_py_stream_methods[] = {
    {"send", (PyCFunction)psrpc_py_stream_send, METH_VARARGS,
     "send(data, timeout_ms=0, callback=None): callback(error) once acknowledged or failed"},
    {"send_blocking", (PyCFunction)psrpc_py_stream_send_blocking, METH_VARARGS,
     "send_blocking(data, timeout_ms=0) -> None or error tuple (GIL released)"},
    {"close", (PyCFunction)psrpc_py_stream_close, METH_VARARGS,
     "close(status=0, message=None)"},
    {"close_code", (PyCFunction)psrpc_py_stream_close_code, METH_VARARGS,
     "close_code(code=None, message=None): the code string travels unchanged"},
    {"set_callbacks", (PyCFunction)psrpc_py_stream_set_callbacks, METH_O,
     "set_callbacks(cb): server side, once"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef psrpc_py_stream_getset[] = {
    {"id", (getter)psrpc_py_stream_get_id, NULL, NULL, NULL},
    {"node_id", (getter)psrpc_py_stream_get_node_id, NULL, NULL, NULL},
    {"method", (getter)psrpc_py_stream_get_method, NULL, NULL, NULL},
    {"metadata", (getter)psrpc_py_stream_get_metadata, NULL, NULL, NULL},
    {"expiry_ns", (getter)psrpc_py_stream_get_expiry_ns, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject PsrpcPyStream_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "psrpc._core.Stream",
    .tp_basicsize = sizeof(PsrpcPyStream),
    .tp_dealloc = (destructor)psrpc_py_stream_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A reference to a psrpc_stream (released when collected).",
    .tp_methods = psrpc_py_stream_methods,
    .tp_getset = psrpc_py_stream_getset,
};

/* ---- trampolines ---- */

/* psrpc_closed_cb / one-shot: cb() */
static void psrpc_py_tr_closed(void *ud) {
    PSRPC_TR_ENTER();
    PyObject *cb = ud;
    psrpc_py_invoke(cb, PyTuple_New(0));
    Py_DECREF(cb);
    PSRPC_TR_LEAVE();
}

/* release: drops the callable */
static void psrpc_py_tr_release(void *ud) {
    PSRPC_TR_ENTER();
    Py_DECREF((PyObject *)ud);
    PSRPC_TR_LEAVE();
}

/* release of registrations and subscriptions: cb(KIND_RELEASED, None), then drops it */
#define PSRPC_PY_KIND_RELEASED 3
static void psrpc_py_tr_release_notify(void *ud) {
    PSRPC_TR_ENTER();
    PyObject *cb = ud;
    psrpc_py_invoke(cb, Py_BuildValue("(iO)", PSRPC_PY_KIND_RELEASED, Py_None));
    Py_DECREF(cb);
    PSRPC_TR_LEAVE();
}

/* unary call completion, one-shot: cb(call_id, response, error, server_id) */
static void psrpc_py_tr_call(uint64_t call_id, const psrpc_msg *response,
                             const psrpc_error *error, const char *server_id, void *ud) {
    PSRPC_TR_ENTER();
    PyObject *cb = ud;
    psrpc_py_invoke(cb, Py_BuildValue("(KNNN)", (unsigned long long)call_id,
                                      psrpc_py_msg(response), psrpc_py_error(error),
                                      psrpc_py_str(server_id)));
    Py_DECREF(cb);
    PSRPC_TR_LEAVE();
}

/* multi call: cb(False, call_id, response, error, server_id) per result,
 * then cb(True, call_id, None, error, None) once */
static void psrpc_py_tr_multi_result(uint64_t call_id, const psrpc_msg *response,
                                     const psrpc_error *error, const char *server_id,
                                     void *ud) {
    PSRPC_TR_ENTER();
    psrpc_py_invoke((PyObject *)ud,
                    Py_BuildValue("(OKNNN)", Py_False, (unsigned long long)call_id,
                                  psrpc_py_msg(response), psrpc_py_error(error),
                                  psrpc_py_str(server_id)));
    PSRPC_TR_LEAVE();
}

static void psrpc_py_tr_multi_done(uint64_t call_id, const psrpc_msg *response,
                                   const psrpc_error *error, const char *server_id, void *ud) {
    PSRPC_TR_ENTER();
    PyObject *cb = ud;
    psrpc_py_invoke(cb, Py_BuildValue("(OKNNN)", Py_True, (unsigned long long)call_id,
                                      psrpc_py_msg(response), psrpc_py_error(error),
                                      psrpc_py_str(server_id)));
    Py_DECREF(cb);
    PSRPC_TR_LEAVE();
}

/* selection: select(selection, ((server_id, affinity), ...)); user_data borrowed
 * (kept alive by the call's completion callable) */
static void psrpc_py_tr_select(psrpc_selection *selection, const psrpc_claim *claims,
                               size_t count, void *ud) {
    if (PSRPC_PY_FINALIZING())
        return;
    psrpc_py_loop_thread = 1;
    PyGILState_STATE gil_ = PyGILState_Ensure();
    PsrpcPySelection *sel = PyObject_New(PsrpcPySelection, &PsrpcPySelection_Type);
    PyObject *list = PyTuple_New((Py_ssize_t)count);
    if (!sel || !list) {
        if (sel)
            sel->sel = selection;
        else
            psrpc_selection_fail(selection, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        Py_XDECREF(sel);
        Py_XDECREF(list);
        PyErr_WriteUnraisable((PyObject *)ud);
        PyGILState_Release(gil_);
        return;
    }
    sel->sel = selection;
    for (size_t i = 0; i < count; i++)
        PyTuple_SET_ITEM(list, (Py_ssize_t)i,
                         Py_BuildValue("(Nd)", psrpc_py_str(claims[i].server_id),
                                       (double)claims[i].affinity));
    psrpc_py_invoke((PyObject *)ud, Py_BuildValue("(NN)", (PyObject *)sel, list));
    PyGILState_Release(gil_);
}

/* bus state: cb(state, error) */
static void psrpc_py_tr_state(int state, const psrpc_error *error, void *ud) {
    PSRPC_TR_ENTER();
    psrpc_py_invoke((PyObject *)ud, Py_BuildValue("(iN)", state, psrpc_py_error(error)));
    PSRPC_TR_LEAVE();
}

/* subscription: cb(0, bytes) per message, cb(2, error) once when ready,
 * cb(3, None) once when released */
static void psrpc_py_tr_sub_message(psrpc_sub *sub, const psrpc_msg *msg, void *ud) {
    (void)sub;
    PSRPC_TR_ENTER();
    psrpc_py_invoke((PyObject *)ud, Py_BuildValue("(iN)", 0, psrpc_py_msg(msg)));
    PSRPC_TR_LEAVE();
}

/* shared ready callback of registrations and subscriptions: cb(KIND_READY, error) */
#define PSRPC_PY_KIND_READY 2
static void psrpc_py_tr_ready(const psrpc_error *error, void *ud) {
    PSRPC_TR_ENTER();
    psrpc_py_invoke((PyObject *)ud,
                    Py_BuildValue("(iN)", PSRPC_PY_KIND_READY, psrpc_py_error(error)));
    PSRPC_TR_LEAVE();
}

/* registration: cb(0, Request) for a request, cb(1, Request) for an affinity
 * question, cb(2, error) once when ready, cb(3, None) once when released */
static void psrpc_py_tr_request(psrpc_request *request, int stage, void *ud) {
    if (PSRPC_PY_FINALIZING())
        return;
    psrpc_py_loop_thread = 1;
    PyGILState_STATE gil_ = PyGILState_Ensure();
    PyObject *req = psrpc_py_request_new(request, stage);
    if (!req)
        PyErr_WriteUnraisable((PyObject *)ud);
    else
        psrpc_py_invoke((PyObject *)ud, Py_BuildValue("(iN)", stage, req));
    PyGILState_Release(gil_);
}

static void psrpc_py_tr_handler(psrpc_request *request, void *ud) {
    psrpc_py_tr_request(request, PSRPC_PY_STAGE_HANDLE, ud);
}

static void psrpc_py_tr_affinity(psrpc_request *request, void *ud) {
    psrpc_py_tr_request(request, PSRPC_PY_STAGE_AFFINITY, ud);
}

/* ---- option conversion helpers (GIL held) ---- */

/* A str without embedded NUL as UTF-8 borrowed from the object, or NULL for None. */
static int psrpc_py_cstr(PyObject *o, const char **out, int allow_none, const char *what) {
    if (o == Py_None && allow_none) {
        *out = NULL;
        return 0;
    }
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str", what);
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (!s)
        return -1;
    if ((size_t)n != strlen(s)) {
        PyErr_Format(PyExc_ValueError, "%s contains a NUL character", what);
        return -1;
    }
    *out = s;
    return 0;
}

/* Sequence of str (or None) -> malloc'd array of borrowed UTF-8 pointers. */
static int psrpc_py_strv(PyObject *o, const char ***out, size_t *count, const char *what) {
    *out = NULL;
    *count = 0;
    if (o == Py_None)
        return 0;
    if (PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a sequence of str, not a str", what);
        return -1;
    }
    PyObject *seq = PySequence_Fast(o, "topics must be a sequence of str");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    /* PySequence_Fast on a list/tuple returns the object itself: the items
     * stay referenced by the caller's argument for the duration of the call. */
    if (seq != o) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_TypeError, "%s must be a list or tuple", what);
        return -1;
    }
    Py_DECREF(seq);
    if (n == 0)
        return 0;
    const char **v = calloc((size_t)n, sizeof *v);
    if (!v) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (psrpc_py_cstr(PySequence_Fast_GET_ITEM(o, i), &v[i], 0, what) < 0) {
            free(v);
            return -1;
        }
    }
    *out = v;
    *count = (size_t)n;
    return 0;
}

/* (name, routing, flags, output_type|None) -> psrpc_method */
static int psrpc_py_method(PyObject *o, psrpc_method *m) {
    PyObject *name, *out_type;
    unsigned int routing, flags;
    psrpc_method init = PSRPC_METHOD_INIT;
    *m = init;
    if (!PyTuple_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "method must be a (name, routing, flags, output_type) tuple");
        return -1;
    }
    if (!PyArg_ParseTuple(o, "OIIO:method", &name, &routing, &flags, &out_type))
        return -1;
    if (psrpc_py_cstr(name, &m->name, 0, "method name") < 0 ||
        psrpc_py_cstr(out_type, &m->output_type, 1, "output type") < 0)
        return -1;
    m->routing = routing;
    m->flags = flags;
    return 0;
}

typedef struct psrpc_py_call_opts {
    psrpc_call_options opts;
    psrpc_selection_options sel;
    const char **topics;
    psrpc_kv *md;
} psrpc_py_call_opts;

static void psrpc_py_call_opts_free(psrpc_py_call_opts *t) {
    free(t->topics);
    free(t->md);
    t->topics = NULL;
    t->md = NULL;
}

/* None or (timeout_ms, flags, topics|None, ((k, v), ...)|None,
 *          (flags, min_aff, max_aff, aff_timeout_ms, sc_timeout_ms, select|None)|None,
 *          deadline_ns)
 * The select callable is borrowed: the caller keeps it alive until the call completes. */
static int psrpc_py_call_opts_from(PyObject *o, psrpc_py_call_opts *t, psrpc_call_options **out) {
    psrpc_call_options init = PSRPC_CALL_OPTIONS_INIT;
    psrpc_selection_options sinit = PSRPC_SELECTION_OPTIONS_INIT;
    t->opts = init;
    t->sel = sinit;
    t->topics = NULL;
    t->md = NULL;
    *out = NULL;
    if (o == Py_None)
        return 0;
    long long timeout_ms, deadline_ns = 0;
    unsigned int flags;
    PyObject *topics = Py_None, *md = Py_None, *sel = Py_None;
    if (!PyTuple_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "call options must be a tuple or None");
        return -1;
    }
    if (!PyArg_ParseTuple(o, "LI|OOOL:call options", &timeout_ms, &flags, &topics, &md, &sel,
                          &deadline_ns))
        return -1;
    t->opts.timeout_ms = timeout_ms;
    t->opts.deadline_ns = deadline_ns;
    t->opts.flags = flags;
    size_t nt;
    if (psrpc_py_strv(topics, &t->topics, &nt, "topics") < 0)
        return -1;
    t->opts.topics = t->topics;
    t->opts.topic_count = nt;
    if (md != Py_None) {
        if (!PyTuple_Check(md) && !PyList_Check(md)) {
            PyErr_SetString(PyExc_TypeError, "metadata must be a tuple of (key, value) pairs");
            goto fail;
        }
        Py_ssize_t n = PySequence_Fast_GET_SIZE(md);
        if (n > 0) {
            t->md = calloc((size_t)n, sizeof *t->md);
            if (!t->md) {
                PyErr_NoMemory();
                goto fail;
            }
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *kv = PySequence_Fast_GET_ITEM(md, i);
                if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2) {
                    PyErr_SetString(PyExc_TypeError, "metadata items must be (key, value) tuples");
                    goto fail;
                }
                if (psrpc_py_cstr(PyTuple_GET_ITEM(kv, 0), &t->md[i].key, 0, "metadata key") < 0 ||
                    psrpc_py_cstr(PyTuple_GET_ITEM(kv, 1), &t->md[i].value, 0,
                                  "metadata value") < 0)
                    goto fail;
            }
            t->opts.metadata = t->md;
            t->opts.metadata_count = (size_t)n;
        }
    }
    if (sel != Py_None) {
        unsigned int sflags;
        float minaff, maxaff;
        long long aff_to, sc_to;
        PyObject *select = Py_None;
        if (!PyTuple_Check(sel)) {
            PyErr_SetString(PyExc_TypeError, "selection options must be a tuple");
            goto fail;
        }
        if (!PyArg_ParseTuple(sel, "IffLL|O:selection options", &sflags, &minaff, &maxaff,
                              &aff_to, &sc_to, &select))
            goto fail;
        t->sel.flags = sflags;
        t->sel.minimum_affinity = minaff;
        t->sel.maximum_affinity = maxaff;
        t->sel.affinity_timeout_ms = aff_to;
        t->sel.short_circuit_timeout_ms = sc_to;
        if (select != Py_None) {
            if (!PyCallable_Check(select)) {
                PyErr_SetString(PyExc_TypeError, "select must be callable");
                goto fail;
            }
            t->sel.select = psrpc_py_tr_select;
            t->sel.select_user_data = select;
        }
        t->opts.selection = &t->sel;
    }
    *out = &t->opts;
    return 0;
fail:
    psrpc_py_call_opts_free(t);
    return -1;
}

/* ---- a unary call waited for in C, with the GIL released ---- */

typedef struct psrpc_py_blocking {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    psrpc_msg *response;
    char *server_id;
    int has_error;
    int32_t status;
    psrpc_error *error; /* owned copy (psrpc_error_copy); NULL if it could not be made */
} psrpc_py_blocking;

static char *psrpc_py_strdup(const char *s) {
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *c = malloc(n);
    if (c)
        memcpy(c, s, n);
    return c;
}

static void psrpc_py_blocking_cb(uint64_t call_id, const psrpc_msg *response,
                                 const psrpc_error *error, const char *server_id, void *ud) {
    (void)call_id;
    psrpc_py_blocking *b = ud;
    pthread_mutex_lock(&b->mu);
    b->response = response ? psrpc_msg_retain(response) : NULL;
    b->server_id = psrpc_py_strdup(server_id);
    if (error) {
        b->has_error = 1;
        b->status = error->status;
        if (psrpc_error_copy(&b->error, error) != PSRPC_OK)
            b->error = NULL; /* out of memory: the status alone is reported */
    }
    b->done = 1;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void psrpc_py_blocking_free(psrpc_py_blocking *b) {
    psrpc_msg_release(b->response);
    free(b->server_id);
    psrpc_error_free(b->error);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

/* Waits (GIL released) until done or slice_ms passed; returns b->done. */
static int psrpc_py_blocking_wait(psrpc_py_blocking *b, int slice_ms) {
    int done;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&b->mu);
    if (slice_ms < 0) {
        while (!b->done)
            pthread_cond_wait(&b->cv, &b->mu);
    } else if (!b->done) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)slice_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        while (!b->done) {
            if (pthread_cond_timedwait(&b->cv, &b->mu, &ts) == ETIMEDOUT)
                break;
        }
    }
    done = b->done;
    pthread_mutex_unlock(&b->mu);
    Py_END_ALLOW_THREADS
    return done;
}

static PyObject *psrpc_py_blocking_result(psrpc_py_blocking *b) {
    PyObject *err;
    if (b->has_error && b->error) {
        err = psrpc_py_error(b->error);
        if (!err)
            return NULL;
    } else if (b->has_error) {
        err = Py_BuildValue("(issN)", (int)b->status, psrpc_status_code(b->status),
                            psrpc_status_str(b->status), PyTuple_New(0));
    } else {
        err = Py_None;
        Py_INCREF(err);
    }
    return Py_BuildValue("(NNN)", psrpc_py_msg(b->response), err, psrpc_py_str(b->server_id));
}


static void psrpc_py_blocking_done_cb(const psrpc_error *error, void *ud) {
    psrpc_py_blocking_cb(0, NULL, error, NULL, ud);
}

static psrpc_py_blocking *psrpc_py_blocking_new(void) {
    psrpc_py_blocking *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    return b;
}

static PyObject *psrpc_py_stream_send_blocking(PsrpcPyStream *self, PyObject *args) {
    Py_buffer view;
    long long timeout_ms = 0;
    if (!PyArg_ParseTuple(args, "y*|L:send_blocking", &view, &timeout_ms))
        return NULL;
    if (psrpc_py_loop_thread) {
        PyBuffer_Release(&view);
        psrpc_py_raise_status(PSRPC_WOULD_DEADLOCK,
                              "a blocking send inside a psrpc callback would deadlock the bus");
        return NULL;
    }
    psrpc_stream *s = psrpc_py_stream_ptr(self);
    psrpc_py_blocking *b = s ? psrpc_py_blocking_new() : NULL;
    if (!b) {
        PyBuffer_Release(&view);
        return s ? PyErr_NoMemory() : NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_stream_send(s, view.buf, (size_t)view.len, timeout_ms, psrpc_py_blocking_done_cb,
                           b);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rc < 0) {
        psrpc_py_blocking_free(b);
        psrpc_py_raise_last(rc);
        return NULL;
    }
    /* Not interruptible: the send ends by its own timeout (or the stream's close). */
    psrpc_py_blocking_wait(b, -1);
    PyObject *r = psrpc_py_blocking_result(b);
    psrpc_py_blocking_free(b);
    if (!r)
        return NULL;
    PyObject *err = PyTuple_GET_ITEM(r, 1);
    Py_INCREF(err);
    Py_DECREF(r);
    return err;
}

static int psrpc_py_add_type(PyObject *m, const char *name, PyTypeObject *t) {
    if (PyType_Ready(t) < 0)
        return -1;
    Py_INCREF(t);
    if (PyModule_AddObject(m, name, (PyObject *)t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    return 0;
}

static int psrpc_py_init_types(PyObject *m) {
    if (psrpc_py_add_type(m, "Request", &PsrpcPyRequest_Type) < 0 ||
        psrpc_py_add_type(m, "Selection", &PsrpcPySelection_Type) < 0 ||
        psrpc_py_add_type(m, "Stream", &PsrpcPyStream_Type) < 0)
        return -1;
    return 0;
}

/* ---- bench helpers: a C handler and a C client loop (bench/python) ---- */

static void psrpc_py_bench_echo(psrpc_request *req, void *ud) {
    (void)ud;
    const psrpc_msg *in = psrpc_request_payload(req);
    psrpc_request_respond(req, psrpc_msg_data(in), psrpc_msg_size(in));
}
%}

%init %{
    if (psrpc_py_init_types(m) < 0) {
#if SWIG_VERSION >= 0x040300 /* multi-phase init: the exec slot returns int */
        return -1;
#else
        return NULL;
#endif
    }
%}

%include <stdint.i>

/* ------------------------------------------------------------------ */
/* Typemaps                                                            */
/* ------------------------------------------------------------------ */

/* psrpc_status: raise on failure, else None (out-parameters append). */
%typemap(out) psrpc_status {
    if ((int)$1 < 0) {
        psrpc_py_raise_last((int)$1);
        SWIG_fail;
    }
    $result = SWIG_Py_Void();
}

/* Borrowed bytes in: any contiguous buffer, held for the whole call (also
 * while the GIL is released). */
%typemap(in) (const void *data, size_t len) (Py_buffer view, int have_view = 0) {
    if ($input == Py_None) {
        $1 = NULL;
        $2 = 0;
    } else {
        if (PyObject_GetBuffer($input, &view, PyBUF_CONTIG_RO) < 0)
            SWIG_fail;
        have_view = 1;
        $1 = view.buf;
        $2 = (size_t)view.len;
    }
}
%typemap(freearg) (const void *data, size_t len) {
    if (have_view$argnum)
        PyBuffer_Release(&view$argnum);
}

/* Topics: a list/tuple of str, or None. */
%typemap(in) (const char *const *topics, size_t topic_count) (const char **tv = NULL, size_t tn = 0) {
    if (psrpc_py_strv($input, &tv, &tn, "topics") < 0)
        SWIG_fail;
    $1 = ($1_ltype)tv;
    $2 = tn;
}
%typemap(freearg) (const char *const *topics, size_t topic_count) {
    free(tv$argnum);
}

/* A method: (name, routing, flags, output_type|None). */
%typemap(in) const psrpc_method *method (psrpc_method m) {
    if (psrpc_py_method($input, &m) < 0)
        SWIG_fail;
    $1 = &m;
}

/* Call options: see psrpc_py_call_opts_from. */
%typemap(in) const psrpc_call_options *opts (psrpc_py_call_opts t, int have_t = 0) {
    psrpc_call_options *o;
    if (psrpc_py_call_opts_from($input, &t, &o) < 0)
        SWIG_fail;
    have_t = 1;
    $1 = o;
}
%typemap(freearg) const psrpc_call_options *opts {
    if (have_t$argnum)
        psrpc_py_call_opts_free(&t$argnum);
}

/* Bus options: None or the tuple built by psrpc._bus (field order of the struct). */
%typemap(in) const psrpc_bus_options *opts (psrpc_bus_options o) {
    psrpc_bus_options init = PSRPC_BUS_OPTIONS_INIT;
    o = init;
    if ($input == Py_None) {
        $1 = NULL;
    } else {
        if (!PyArg_ParseTuple($input, "ILLLLLLLLzzzzzzz:bus options", &o.flags,
                              &o.max_message_size, &o.queue_capacity, &o.connect_timeout_ms,
                              &o.ping_interval_ms, &o.reconnect_wait_ms,
                              &o.reconnect_wait_max_ms, &o.compress_threshold,
                              &o.reconnect_buffer_size, &o.tls_ca_file, &o.tls_cert_file,
                              &o.tls_key_file, &o.tls_server_name, &o.nats_creds_file,
                              &o.nats_nkey_seed_file, &o.channel_prefix))
            SWIG_fail;
        $1 = &o;
    }
}

/* Client options: None or (timeout_ms, selection_timeout_ms, client_id|None). */
%typemap(in) const psrpc_client_options *opts (psrpc_client_options o) {
    psrpc_client_options init = PSRPC_CLIENT_OPTIONS_INIT;
    o = init;
    if ($input == Py_None) {
        $1 = NULL;
    } else {
        if (!PyArg_ParseTuple($input, "LLz:client options", &o.timeout_ms,
                              &o.selection_timeout_ms, &o.client_id))
            SWIG_fail;
        $1 = &o;
    }
}

/* Server options: None or (flags, timeout_ms, server_id|None). */
%typemap(in) const psrpc_server_options *opts (psrpc_server_options o) {
    psrpc_server_options init = PSRPC_SERVER_OPTIONS_INIT;
    o = init;
    if ($input == Py_None) {
        $1 = NULL;
    } else {
        if (!PyArg_ParseTuple($input, "ILz:server options", &o.flags, &o.timeout_ms,
                              &o.server_id))
            SWIG_fail;
        $1 = &o;
    }
}

/* Handles returned through out-parameters. */
%define PSRPC_OUT_HANDLE(TYPE)
%typemap(in, numinputs=0) TYPE **out (TYPE *h = NULL) {
    $1 = &h;
}
%typemap(argout) TYPE **out {
    $result = psrpc_py_append($result, SWIG_NewPointerObj(h$argnum, $*1_descriptor, 0));
    if (!$result)
        SWIG_fail;
}
%enddef
PSRPC_OUT_HANDLE(psrpc_bus)
PSRPC_OUT_HANDLE(psrpc_client)
PSRPC_OUT_HANDLE(psrpc_server)
PSRPC_OUT_HANDLE(psrpc_sub)
PSRPC_OUT_HANDLE(psrpc_metrics)

%typemap(in, numinputs=0) uint64_t *call_id_out (uint64_t id = 0) {
    $1 = &id;
}
%typemap(argout) uint64_t *call_id_out {
    $result = psrpc_py_append($result, PyLong_FromUnsignedLongLong(id$argnum));
    if (!$result)
        SWIG_fail;
}

%typemap(in, numinputs=0) psrpc_bus_stats *out (psrpc_bus_stats st) {
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    $1 = &st;
}
%typemap(argout) psrpc_bus_stats *out {
    psrpc_bus_stats *s = &st$argnum;
    $result = psrpc_py_append($result, Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsKsKsK}", "connects", s->connects, "disconnects", s->disconnects,
        "reconnect_attempts", s->reconnect_attempts, "subscriptions", s->subscriptions,
        "messages_published", s->messages_published, "messages_received", s->messages_received,
        "dropped_malformed", s->dropped_malformed, "dropped_oversize", s->dropped_oversize,
        "dropped_slow_consumer", s->dropped_slow_consumer, "dropped_expired", s->dropped_expired,
        "dropped_unknown", s->dropped_unknown, "requests_in_flight", s->requests_in_flight,
        "streams_open", s->streams_open));
    if (!$result)
        SWIG_fail;
}

/* Callbacks. The C side takes a reference to the callable; it is dropped by
 * the one-shot trampoline or the release trampoline, or here when the call
 * fails (then no callback ever runs). */
%define PSRPC_HELD_CALLABLE(SIG, ALLOW_NONE, ASSIGN)
%typemap(in) SIG (PyObject *held = NULL) {
    if (ALLOW_NONE && $input == Py_None) {
        held = NULL;
    } else {
        if (!PyCallable_Check($input)) {
            PyErr_SetString(PyExc_TypeError, "callback must be callable");
            SWIG_fail;
        }
        held = $input;
        Py_INCREF(held);
    }
    ASSIGN
}
%typemap(argout) SIG {
    held$argnum = NULL; /* owned by the library now */
}
%typemap(freearg) SIG {
    Py_XDECREF(held$argnum);
}
%enddef

PSRPC_HELD_CALLABLE(%arg((psrpc_closed_cb closed_cb, void *user_data)), 1,
    %arg($1 = held ? psrpc_py_tr_closed : NULL; $2 = held;))
PSRPC_HELD_CALLABLE(%arg((psrpc_call_cb cb, void *user_data)), 0,
    %arg($1 = psrpc_py_tr_call; $2 = held;))
PSRPC_HELD_CALLABLE(%arg((psrpc_call_cb on_result, psrpc_call_cb on_done, void *user_data)), 0,
    %arg($1 = psrpc_py_tr_multi_result; $2 = psrpc_py_tr_multi_done; $3 = held;))
PSRPC_HELD_CALLABLE(%arg((psrpc_bus_state_cb cb, void *user_data, psrpc_release_cb release)), 0,
    %arg($1 = psrpc_py_tr_state; $2 = held; $3 = psrpc_py_tr_release;))
PSRPC_HELD_CALLABLE(%arg((psrpc_message_cb on_message, psrpc_done_cb on_ready, void *user_data,
                          psrpc_release_cb release)), 0,
    %arg($1 = psrpc_py_tr_sub_message; $2 = psrpc_py_tr_ready; $3 = held;
         $4 = psrpc_py_tr_release_notify;))

/* Registration: (callable, with_affinity). */
%typemap(in) (psrpc_handler_cb handler, psrpc_affinity_cb affinity, psrpc_done_cb on_ready,
              void *user_data, psrpc_release_cb release) (PyObject *held = NULL) {
    PyObject *cb;
    int with_affinity;
    if (!PyArg_ParseTuple($input, "Op:handler", &cb, &with_affinity))
        SWIG_fail;
    if (!PyCallable_Check(cb)) {
        PyErr_SetString(PyExc_TypeError, "handler must be callable");
        SWIG_fail;
    }
    held = cb;
    Py_INCREF(held);
    $1 = psrpc_py_tr_handler;
    $2 = with_affinity ? psrpc_py_tr_affinity : NULL;
    $3 = psrpc_py_tr_ready;
    $4 = held;
    $5 = psrpc_py_tr_release_notify;
}
%typemap(argout) (psrpc_handler_cb handler, psrpc_affinity_cb affinity, psrpc_done_cb on_ready,
                  void *user_data, psrpc_release_cb release) {
    held$argnum = NULL;
}
%typemap(freearg) (psrpc_handler_cb handler, psrpc_affinity_cb affinity, psrpc_done_cb on_ready,
                   void *user_data, psrpc_release_cb release) {
    Py_XDECREF(held$argnum);
}


/* Streams: the client's open and the server's stream registration. */
%typemap(in, numinputs=0) psrpc_stream **out (psrpc_stream *h = NULL) {
    $1 = &h;
}
%typemap(argout) psrpc_stream **out {
    $result = psrpc_py_append($result, psrpc_py_stream_new(h$argnum));
    if (!$result)
        SWIG_fail;
}
PSRPC_HELD_CALLABLE(%arg((psrpc_done_cb on_open, psrpc_stream_message_cb on_message,
                          psrpc_stream_close_cb on_close, void *user_data,
                          psrpc_release_cb release)), 0,
    %arg($1 = psrpc_py_tr_stream_open; $2 = psrpc_py_tr_stream_message;
         $3 = psrpc_py_tr_stream_close; $4 = held; $5 = psrpc_py_tr_release_notify;))

%typemap(in) (psrpc_stream_handler_cb handler, psrpc_affinity_cb affinity, psrpc_done_cb on_ready,
              void *user_data, psrpc_release_cb release) (PyObject *held = NULL) {
    PyObject *cb;
    int with_affinity;
    if (!PyArg_ParseTuple($input, "Op:handler", &cb, &with_affinity))
        SWIG_fail;
    if (!PyCallable_Check(cb)) {
        PyErr_SetString(PyExc_TypeError, "handler must be callable");
        SWIG_fail;
    }
    held = cb;
    Py_INCREF(held);
    $1 = psrpc_py_tr_stream_handler;
    $2 = with_affinity ? psrpc_py_tr_affinity : NULL;
    $3 = psrpc_py_tr_ready;
    $4 = held;
    $5 = psrpc_py_tr_release_notify;
}
%typemap(argout) (psrpc_stream_handler_cb handler, psrpc_affinity_cb affinity,
                  psrpc_done_cb on_ready, void *user_data, psrpc_release_cb release) {
    held$argnum = NULL;
}
%typemap(freearg) (psrpc_stream_handler_cb handler, psrpc_affinity_cb affinity,
                   psrpc_done_cb on_ready, void *user_data, psrpc_release_cb release) {
    Py_XDECREF(held$argnum);
}

/* ------------------------------------------------------------------ */
/* What is wrapped                                                     */
/* ------------------------------------------------------------------ */

%rename("$ignore", regextarget=1) "^psrpc_";
%rename("$ignore", regextarget=1) "^PSRPC_";

%define PSRPC_WRAP(NAME)
%rename("%s") NAME;
%enddef

/* version and status tables */
PSRPC_WRAP(psrpc_version)
PSRPC_WRAP(psrpc_version_string)
PSRPC_WRAP(psrpc_status_name)
PSRPC_WRAP(psrpc_status_str)
PSRPC_WRAP(psrpc_status_code)
PSRPC_WRAP(psrpc_status_from_code)
PSRPC_WRAP(psrpc_last_error)
PSRPC_WRAP(psrpc_last_error_status)
/* bus */
PSRPC_WRAP(psrpc_bus_open)
PSRPC_WRAP(psrpc_bus_close)
PSRPC_WRAP(psrpc_bus_free)
PSRPC_WRAP(psrpc_bus_watch)
PSRPC_WRAP(psrpc_bus_wait_ready)
PSRPC_WRAP(psrpc_bus_get_stats)
/* client */
PSRPC_WRAP(psrpc_client_create)
PSRPC_WRAP(psrpc_client_id)
PSRPC_WRAP(psrpc_client_call)
PSRPC_WRAP(psrpc_client_call_multi)
PSRPC_WRAP(psrpc_client_cancel)
PSRPC_WRAP(psrpc_client_subscribe)
PSRPC_WRAP(psrpc_sub_wait_ready)
PSRPC_WRAP(psrpc_sub_close)
PSRPC_WRAP(psrpc_sub_free)
PSRPC_WRAP(psrpc_client_close)
PSRPC_WRAP(psrpc_client_free)
/* server */
PSRPC_WRAP(psrpc_server_create)
PSRPC_WRAP(psrpc_server_id)
PSRPC_WRAP(psrpc_server_register)
PSRPC_WRAP(psrpc_server_deregister)
PSRPC_WRAP(psrpc_server_wait_ready)
PSRPC_WRAP(psrpc_server_publish)
PSRPC_WRAP(psrpc_server_close)
PSRPC_WRAP(psrpc_server_free)
/* streams (sends, close and accessors are methods of _core.Stream) */
PSRPC_WRAP(psrpc_client_open_stream)
PSRPC_WRAP(psrpc_server_register_stream)
/* metrics (issue 16) */
PSRPC_WRAP(psrpc_metrics_new)
PSRPC_WRAP(psrpc_metrics_attach_client)
PSRPC_WRAP(psrpc_metrics_attach_server)
PSRPC_WRAP(psrpc_metrics_bucket_bound_ms)
PSRPC_WRAP(psrpc_metrics_free)
PSRPC_WRAP(PSRPC_METRICS_BUCKETS)
PSRPC_WRAP(PSRPC_RETRY_UNARY)
PSRPC_WRAP(PSRPC_RETRY_STREAM_OPEN)
/* constants */
PSRPC_WRAP(PSRPC_ROUTING_QUEUE)
PSRPC_WRAP(PSRPC_ROUTING_AFFINITY)
PSRPC_WRAP(PSRPC_ROUTING_MULTI)
PSRPC_WRAP(PSRPC_METHOD_SUBSCRIPTION)
PSRPC_WRAP(PSRPC_METHOD_TOPICS)
PSRPC_WRAP(PSRPC_METHOD_STREAM)
PSRPC_WRAP(PSRPC_METHOD_SINGLE_SERVER)
PSRPC_WRAP(PSRPC_BUS_TLS)
PSRPC_WRAP(PSRPC_BUS_CONNECTED)
PSRPC_WRAP(PSRPC_BUS_DISCONNECTED)
PSRPC_WRAP(PSRPC_BUS_CLOSED)
PSRPC_WRAP(PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE)
PSRPC_WRAP(PSRPC_CALL_WAIT_FOR_READY)
PSRPC_WRAP(PSRPC_SERVER_SKIP_CLAIM)
PSRPC_WRAP(PSRPC_CLOSE_FORCE)
PSRPC_WRAP(PSRPC_VERSION_STRING)
PSRPC_WRAP(PSRPC_WIRE_VERSION_STRING)

%include "psrpc.h"

/* ------------------------------------------------------------------ */
/* Helpers of the Pythonic layer                                       */
/* ------------------------------------------------------------------ */

%feature("nothreadallow") set_error_hook;
%feature("nothreadallow") status_table;
%feature("nothreadallow") on_loop_thread;
%feature("nothreadallow") call_blocking;
%feature("nothreadallow") set_log_callback;
%feature("nothreadallow") client_set_retries;
%feature("nothreadallow") metrics_read;
%feature("nothreadallow") client_clear_retries;

%inline %{
/* Installs callable(status, message) -> exception used for every failure. */
static PyObject *set_error_hook(PyObject *hook) {
    PyObject *old = psrpc_py_error_hook;
    if (hook == Py_None) {
        psrpc_py_error_hook = NULL;
    } else {
        Py_INCREF(hook);
        psrpc_py_error_hook = hook;
    }
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

/* ((value, name, code, description), ...) for every status of the C library. */
static PyObject *status_table(void) {
    PyObject *t = PyList_New(0);
    if (!t)
        return NULL;
#define PSRPC_PY_ROW(name, value, code, desc)                                             \
    {                                                                                     \
        PyObject *row = Py_BuildValue("(isss)", value, "PSRPC_" #name,                    \
                                      psrpc_status_code(value), desc);                    \
        if (!row || PyList_Append(t, row) < 0) {                                          \
            Py_XDECREF(row);                                                              \
            Py_DECREF(t);                                                                 \
            return NULL;                                                                  \
        }                                                                                 \
        Py_DECREF(row);                                                                   \
    }
    PSRPC_STATUS_MAP(PSRPC_PY_ROW)
#undef PSRPC_PY_ROW
    return t;
}

/* True on a bus loop thread (inside a callback): blocking there deadlocks. */
static PyObject *on_loop_thread(void) {
    return PyBool_FromLong(psrpc_py_loop_thread);
}

/* A unary call waited for with the GIL released. Returns
 * (response bytes|None, error tuple|None, server_id|None). Ctrl-C (any
 * pending signal exception) cancels the call and is raised once it ended. */
static PyObject *call_blocking(psrpc_client *client, const psrpc_method *method,
                               const void *data, size_t len, const psrpc_call_options *opts) {
    if (psrpc_py_loop_thread) {
        psrpc_py_raise_status(PSRPC_WOULD_DEADLOCK,
                              "a blocking call inside a psrpc callback would deadlock the bus; "
                              "use the asynchronous API");
        return NULL;
    }
    psrpc_py_blocking *b = calloc(1, sizeof *b);
    if (!b)
        return PyErr_NoMemory();
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    uint64_t id = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = psrpc_client_call(&id, client, method, data, len, opts, psrpc_py_blocking_cb, b);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        psrpc_py_blocking_free(b);
        return NULL;
    }
    int interrupted = 0;
    while (!psrpc_py_blocking_wait(b, 200)) {
        if (PyErr_CheckSignals() < 0) {
            interrupted = 1;
            psrpc_client_cancel(client, id);
            psrpc_py_blocking_wait(b, -1);
            break;
        }
    }
    PyObject *result = interrupted ? NULL : psrpc_py_blocking_result(b);
    psrpc_py_blocking_free(b);
    return result;
}

/* ---- issue 16: logs, retries, metrics ---- */

static PyObject *psrpc_py_log_cb_obj;

static void psrpc_py_tr_log(int level, const char *component, const char *message, void *ud) {
    (void)ud;
    if (PSRPC_PY_FINALIZING())
        return;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *cb = psrpc_py_log_cb_obj;
    if (cb) {
        Py_INCREF(cb);
        psrpc_py_invoke(cb, Py_BuildValue("(iNN)", level, psrpc_py_str(component),
                                          psrpc_py_str(message)));
        Py_DECREF(cb);
    }
    PyGILState_Release(g);
}

/* set_log_callback(cb(level, component, message) or None, max_level) */
static PyObject *set_log_callback(PyObject *cb, int max_level) {
    PyObject *old = psrpc_py_log_cb_obj;
    int rc;
    if (cb == Py_None) {
        rc = psrpc_set_log_callback(NULL, 0, NULL);
        psrpc_py_log_cb_obj = NULL;
    } else {
        Py_INCREF(cb);
        psrpc_py_log_cb_obj = cb;
        rc = psrpc_set_log_callback(psrpc_py_tr_log, max_level, NULL);
    }
    /* the old callable may still run on a loop thread: it stays referenced */
    (void)old;
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Retry code sets: interned for the process (a client's retry policy must
 * outlive it; there are few distinct sets). NULL-terminated strv. */
static int psrpc_py_retry_recoverable(const psrpc_error *e, void *ud) {
    const char *const *codes = ud;
    for (; *codes; codes++)
        if (e && e->code && strcmp(e->code, *codes) == 0)
            return 1;
    return 0;
}

static pthread_mutex_t psrpc_py_codesets_mu = PTHREAD_MUTEX_INITIALIZER;
static char **psrpc_py_codesets[64];
static char *psrpc_py_codeset_keys[64];

static char **psrpc_py_codeset(const char *key, const char **codes, size_t n) {
    char **found = NULL;
    pthread_mutex_lock(&psrpc_py_codesets_mu);
    size_t i = 0;
    for (; i < 64 && psrpc_py_codeset_keys[i]; i++)
        if (strcmp(psrpc_py_codeset_keys[i], key) == 0) {
            found = psrpc_py_codesets[i];
            break;
        }
    if (!found && i < 64) {
        char **v = calloc(n + 1, sizeof *v);
        char *k = strdup(key);
        int ok = v && k;
        for (size_t j = 0; ok && j < n; j++)
            ok = (v[j] = strdup(codes[j])) != NULL;
        if (ok) {
            psrpc_py_codesets[i] = v;
            psrpc_py_codeset_keys[i] = k;
            found = v;
        } else {
            for (size_t j = 0; v && j < n; j++)
                free(v[j]);
            free(v);
            free(k);
        }
    }
    pthread_mutex_unlock(&psrpc_py_codesets_mu);
    return found;
}

/* client_set_retries(client, kinds, max_attempts, timeout_ms, backoff_ms,
 * codes tuple or None (Go's default: deadline_exceeded, unavailable), key) */
static PyObject *client_set_retries(psrpc_client *client, unsigned int kinds,
                                    unsigned int max_attempts, long long timeout_ms,
                                    long long backoff_ms, PyObject *codes, const char *key) {
    psrpc_retry_options o;
    psrpc_retry_options_init(&o, sizeof o);
    o.max_attempts = max_attempts;
    o.timeout_ms = timeout_ms;
    o.backoff_ms = backoff_ms;
    if (codes != Py_None) {
        const char **v = NULL;
        size_t n = 0;
        if (psrpc_py_strv(codes, &v, &n, "codes") < 0)
            return NULL;
        char **set = psrpc_py_codeset(key, v, n);
        free(v);
        if (!set)
            return PyErr_NoMemory();
        o.is_recoverable = psrpc_py_retry_recoverable;
        o.user_data = set;
    }
    int rc = psrpc_client_set_retries(client, kinds, &o);
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *client_clear_retries(psrpc_client *client) {
    int rc = psrpc_client_set_retries(client, PSRPC_RETRY_UNARY | PSRPC_RETRY_STREAM_OPEN, NULL);
    if (rc < 0) {
        psrpc_py_raise_last(rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static void psrpc_py_metrics_row(const psrpc_method_metrics *r, void *ud) {
    PyObject *out = ud;
    if (PyErr_Occurred())
        return;
    PyObject *b = PyTuple_New(PSRPC_METRICS_BUCKETS);
    if (!b)
        return;
    for (int i = 0; i < PSRPC_METRICS_BUCKETS; i++)
        PyTuple_SET_ITEM(b, i, PyLong_FromUnsignedLongLong(r->buckets[i]));
    PyObject *row = Py_BuildValue("(IINNKKKKN)", r->role, r->kind, psrpc_py_str(r->service),
                                  psrpc_py_str(r->method), (unsigned long long)r->calls,
                                  (unsigned long long)r->errors,
                                  (unsigned long long)r->attempts,
                                  (unsigned long long)r->latency_sum_ns, b);
    if (row) {
        PyList_Append(out, row);
        Py_DECREF(row);
    }
}

static void psrpc_py_metrics_code(const psrpc_method_metrics *r, const char *code,
                                  uint64_t count, void *ud) {
    PyObject *out = ud;
    if (PyErr_Occurred())
        return;
    PyObject *row = Py_BuildValue("(IINNNK)", r->role, r->kind, psrpc_py_str(r->service),
                                  psrpc_py_str(r->method), psrpc_py_str(code),
                                  (unsigned long long)count);
    if (row) {
        PyList_Append(out, row);
        Py_DECREF(row);
    }
}

/* metrics_read(m) -> (rows, code_rows) */
static void psrpc_py_metrics_row_skip(const psrpc_method_metrics *r, void *ud) {
    (void)r;
    (void)ud;
}

static PyObject *metrics_read(psrpc_metrics *m) {
    PyObject *rows = PyList_New(0), *codes = PyList_New(0);
    if (!rows || !codes) {
        Py_XDECREF(rows);
        Py_XDECREF(codes);
        return NULL;
    }
    int rc = psrpc_metrics_read(m, psrpc_py_metrics_row, NULL, rows);
    if (rc >= 0 && !PyErr_Occurred())
        rc = psrpc_metrics_read(m, psrpc_py_metrics_row_skip, psrpc_py_metrics_code, codes);
    if (PyErr_Occurred() || rc < 0) {
        if (!PyErr_Occurred())
            psrpc_py_raise_last(rc);
        Py_DECREF(rows);
        Py_DECREF(codes);
        return NULL;
    }
    return Py_BuildValue("(NN)", rows, codes);
}

/* bench: registers a C echo handler for method (topics none). */
static psrpc_status _bench_register_echo(psrpc_server *server, const psrpc_method *method) {
    return psrpc_server_register(server, method, NULL, 0, psrpc_py_bench_echo, NULL, NULL, NULL,
                                 NULL);
}

/* bench: n blocking calls from C; returns the elapsed nanoseconds, or < 0 status. */
static long long _bench_c_calls(psrpc_client *client, const psrpc_method *method,
                                const void *data, size_t len, int n) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        psrpc_msg *out = NULL;
        int rc = psrpc_client_call_sync(&out, client, method, data, len, NULL);
        if (rc != PSRPC_OK)
            return rc;
        psrpc_msg_release(out);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
}
%}
