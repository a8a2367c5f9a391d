// psrpc Node binding: the native half (node-addon-api over capi/psrpc.h).
//
// Threads. Every libpsrpc callback runs on a bus's loop thread. It copies
// what it was given (borrowed strings, errors; retains messages) into an Event
// and queues it on the bus's one napi_threadsafe_function with a NON-BLOCKING
// call (unbounded queue): the loop thread never waits for JavaScript. On the
// JS thread the event becomes one call of the bus's dispatch function
// (kind, id, ...), which the TypeScript layer routes by id. Handles that must
// be answered (requests, selections) and streams travel as External boxes
// whose finalizers answer / free them if JavaScript dropped them.
//
// Lifetime. A BusCtx lives until both its JS box and its threadsafe function
// are finalized. The threadsafe function is released after the bus's close
// completed (EV_CLOSED) and psrpc_bus_free joined the loop thread, so no
// libpsrpc callback can post after it. A per-bus environment cleanup hook
// (registered after the threadsafe function, so it runs before the function's
// own teardown) closes and frees a bus still open when the environment (the
// process, a worker thread) goes away; events still queued then are destroyed
// natively (requests failed, selections failed, streams freed).
#include <napi.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <utility>
#include <vector>

extern "C" {
#include "psrpc.h"
}

namespace {

enum Kind {
    EV_STATE = 1,          // (0, state, error)
    EV_CLOSED = 2,         // (0): the bus finished closing
    EV_CALL = 3,           // (id, response|null, error|null, serverId|null)
    EV_RESULT = 4,         // (id, response|null, error|null, serverId|null) multi result
    EV_DONE = 5,           // (id, error|null) multi done
    EV_SELECT = 6,         // (id, selectionBox, claims[])
    EV_SUB_MSG = 7,        // (id, payload)
    EV_READY = 8,          // (id, error|null) subscription / registration confirmed
    EV_REQ = 9,            // (id, requestBox, info)
    EV_AFF = 10,           // (id, requestBox, info)
    EV_ST_ACCEPT = 11,     // (registration id, stream id, streamBox, info)
    EV_ST_OPEN = 12,       // (stream id, error|null)
    EV_ST_MSG = 13,        // (stream id, payload) -> returns accept (bool)
    EV_ST_CLOSE = 14,      // (stream id, error)
    EV_SEND_DONE = 15,     // (send id, error|null)
    EV_HANDLE_CLOSED = 16, // (id): a client/server/subscription finished closing
};

struct ErrorCopy {
    int status = 0;
    std::string code;
    std::string message;
    std::vector<std::pair<std::string, std::string>> details;
};

std::unique_ptr<ErrorCopy> copy_error(const psrpc_error *e) {
    if (e == nullptr)
        return nullptr;
    auto c = std::make_unique<ErrorCopy>();
    c->status = e->status;
    c->code = e->code ? e->code : "";
    c->message = e->message ? e->message : "";
    for (size_t i = 0; i < e->details_count; i++) {
        const psrpc_error_detail &d = e->details[i];
        c->details.emplace_back(d.type_url ? d.type_url : "",
                                std::string(reinterpret_cast<const char *>(d.value), d.value_len));
    }
    return c;
}

struct ReqInfo {
    std::string request_id, client_id, method;
    std::vector<std::string> topics;
    std::vector<std::pair<std::string, std::string>> metadata;
    int64_t expiry_ns = 0;
    int64_t sent_at_ns = 0;
};

void fill_request_info(ReqInfo &info, const psrpc_request *r) {
    const char *s;
    if ((s = psrpc_request_id(r)))
        info.request_id = s;
    if ((s = psrpc_request_client_id(r)))
        info.client_id = s;
    if ((s = psrpc_request_method(r)))
        info.method = s;
    size_t n = psrpc_request_topic_count(r);
    for (size_t i = 0; i < n; i++) {
        const char *t = psrpc_request_topic(r, i);
        info.topics.emplace_back(t ? t : "");
    }
    n = psrpc_request_metadata_count(r);
    for (size_t i = 0; i < n; i++) {
        const char *k = nullptr, *v = nullptr;
        if (psrpc_request_metadata_at(r, i, &k, &v) == PSRPC_OK)
            info.metadata.emplace_back(k ? k : "", v ? v : "");
    }
    info.expiry_ns = psrpc_request_expiry_ns(r);
    info.sent_at_ns = psrpc_request_sent_at_ns(r);
}

void fill_stream_info(ReqInfo &info, const psrpc_stream *st) {
    const char *s;
    if ((s = psrpc_stream_id(st)))
        info.request_id = s;
    if ((s = psrpc_stream_node_id(st)))
        info.client_id = s;
    if ((s = psrpc_stream_method(st)))
        info.method = s;
    size_t n = psrpc_stream_metadata_count(st);
    for (size_t i = 0; i < n; i++) {
        const char *k = nullptr, *v = nullptr;
        if (psrpc_stream_metadata_at(st, i, &k, &v) == PSRPC_OK)
            info.metadata.emplace_back(k ? k : "", v ? v : "");
    }
}

// A request handed to JavaScript. Answered (consumed) at most once; the
// finalizer answers one that JavaScript dropped.
struct ReqBox {
    psrpc_request *req;
    bool affinity_stage;
};

void abandon_request(psrpc_request *req, bool affinity_stage, const char *why) {
    if (req == nullptr)
        return;
#ifdef PSRPC_HAVE_REQUEST_ABANDON
    (void)affinity_stage;
    psrpc_request_abandon(req, PSRPC_INTERNAL, why);
#else
    if (affinity_stage)
        psrpc_request_claim(req, -1.0f);
    else
        psrpc_request_fail(req, PSRPC_INTERNAL, why);
#endif
}

struct SelBox {
    psrpc_selection *sel;
};

struct StreamBox {
    psrpc_stream *stream;
};

struct Event {
    int kind = 0;
    uint64_t id = 0;
    uint64_t id2 = 0;
    int state = 0;
    psrpc_msg *msg = nullptr; // retained
    std::unique_ptr<ErrorCopy> err;
    bool has_server_id = false;
    std::string server_id;
    psrpc_request *req = nullptr;
    std::unique_ptr<ReqInfo> info;
    psrpc_selection *sel = nullptr;
    std::vector<std::pair<std::string, float>> claims;
    psrpc_stream *stream = nullptr; // EV_ST_ACCEPT: the server's reference
    psrpc_stream *ack_stream = nullptr;
    uint64_t ack_token = 0;
    bool deferred = false;
    uint32_t attempts = 0; // EV_CALL: attempts the call made (retries)

    ~Event() {
        // Destroyed without reaching JavaScript (or after it, for the
        // pointers JavaScript did not take over).
        if (msg)
            psrpc_msg_release(msg);
        if (req)
            abandon_request(req, kind == EV_AFF, "the JavaScript environment is shutting down");
        if (sel)
            psrpc_selection_fail(sel, PSRPC_CANCELED,
                                 "the JavaScript environment is shutting down");
        if (stream)
            psrpc_stream_free(stream);
#ifdef PSRPC_HAVE_STREAM_DEFER
        if (deferred && ack_stream)
            psrpc_stream_ack(ack_stream, ack_token, 0);
#endif
    }
};

struct BusCtx {
    psrpc_bus *bus = nullptr;
    napi_env env = nullptr;
    napi_threadsafe_function tsfn = nullptr;
    std::atomic<int> refs{0};
    bool close_started = false; // JS thread only
    bool freed = false;         // JS thread only: psrpc_bus_free done
    bool hook = false;          // cleanup hook registered
    std::atomic<uint64_t> next_native_id{1000000000000ull};

    void unref() {
        if (refs.fetch_sub(1) == 1)
            delete this;
    }

    void post(Event *ev) {
        napi_status st = napi_call_threadsafe_function(tsfn, ev, napi_tsfn_nonblocking);
        if (st != napi_ok)
            delete ev;
    }
};

void bus_cleanup_hook(void *arg);

void free_bus_now(BusCtx *ctx) {
    if (ctx->freed)
        return;
    ctx->freed = true;
    if (ctx->hook) {
        napi_remove_env_cleanup_hook(ctx->env, bus_cleanup_hook, ctx);
        ctx->hook = false;
    }
    psrpc_bus *b = ctx->bus;
    ctx->bus = nullptr;
    psrpc_bus_free(b); // joins the loop thread: no callback posts after this
    napi_release_threadsafe_function(ctx->tsfn, napi_tsfn_release);
}

void bus_cleanup_hook(void *arg) {
    BusCtx *ctx = static_cast<BusCtx *>(arg);
    ctx->hook = false; // being run: do not remove
    if (ctx->freed)
        return;
    ctx->freed = true;
    psrpc_bus *b = ctx->bus;
    ctx->bus = nullptr;
    psrpc_bus_close(b, nullptr, nullptr);
    psrpc_bus_free(b);
    napi_release_threadsafe_function(ctx->tsfn, napi_tsfn_release);
}

// ---- JS conversion helpers ------------------------------------------------

Napi::Value bytes_value(Napi::Env env, const psrpc_msg *msg) {
    const uint8_t *d = psrpc_msg_data(msg);
    size_t n = psrpc_msg_size(msg);
    Napi::Uint8Array a = Napi::Uint8Array::New(env, n);
    if (n)
        std::memcpy(a.Data(), d, n);
    return a;
}

Napi::Value error_value(Napi::Env env, const ErrorCopy *e) {
    if (e == nullptr)
        return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("status", Napi::Number::New(env, e->status));
    o.Set("code", Napi::String::New(env, e->code));
    o.Set("message", Napi::String::New(env, e->message));
    Napi::Array details = Napi::Array::New(env, e->details.size());
    for (size_t i = 0; i < e->details.size(); i++) {
        Napi::Object d = Napi::Object::New(env);
        d.Set("typeUrl", Napi::String::New(env, e->details[i].first));
        const std::string &v = e->details[i].second;
        Napi::Uint8Array a = Napi::Uint8Array::New(env, v.size());
        if (!v.empty())
            std::memcpy(a.Data(), v.data(), v.size());
        d.Set("value", a);
        details.Set(i, d);
    }
    o.Set("details", details);
    return o;
}

Napi::Value info_value(Napi::Env env, const ReqInfo &info) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("requestId", Napi::String::New(env, info.request_id));
    o.Set("clientId", Napi::String::New(env, info.client_id));
    o.Set("method", Napi::String::New(env, info.method));
    Napi::Array topics = Napi::Array::New(env, info.topics.size());
    for (size_t i = 0; i < info.topics.size(); i++)
        topics.Set(i, Napi::String::New(env, info.topics[i]));
    o.Set("topics", topics);
    Napi::Array md = Napi::Array::New(env, info.metadata.size());
    for (size_t i = 0; i < info.metadata.size(); i++) {
        Napi::Array kv = Napi::Array::New(env, 2);
        kv.Set(0u, Napi::String::New(env, info.metadata[i].first));
        kv.Set(1u, Napi::String::New(env, info.metadata[i].second));
        md.Set(i, kv);
    }
    o.Set("metadata", md);
    o.Set("expiryNs", Napi::BigInt::New(env, info.expiry_ns));
    o.Set("sentAtNs", Napi::BigInt::New(env, info.sent_at_ns));
    return o;
}

template <typename T>
Napi::External<T> make_box(Napi::Env env, T *box, void (*fin)(Napi::Env, T *)) {
    return Napi::External<T>::New(env, box, fin);
}

void req_box_fin(Napi::Env, ReqBox *b) {
    if (b->req)
        abandon_request(b->req, b->affinity_stage,
                        "the request object was garbage collected unanswered");
    delete b;
}

void sel_box_fin(Napi::Env, SelBox *b) {
    if (b->sel)
        psrpc_selection_fail(b->sel, PSRPC_INTERNAL,
                             "the selection was garbage collected unanswered");
    delete b;
}

void stream_box_fin(Napi::Env, StreamBox *b) {
    if (b->stream)
        psrpc_stream_free(b->stream);
    delete b;
}

void call_js(napi_env raw_env, napi_value js_cb, void *context, void *data) {
    Event *ev = static_cast<Event *>(data);
    BusCtx *ctx = static_cast<BusCtx *>(context);
    if (raw_env == nullptr || js_cb == nullptr) { // teardown: destroy natively
        delete ev;
        return;
    }
    Napi::Env env(raw_env);
    Napi::HandleScope scope(env);
    Napi::Function fn(env, js_cb);
    std::vector<napi_value> args;
    args.push_back(Napi::Number::New(env, ev->kind));
    args.push_back(Napi::Number::New(env, static_cast<double>(ev->id)));
    switch (ev->kind) {
    case EV_STATE:
        args.push_back(Napi::Number::New(env, ev->state));
        args.push_back(error_value(env, ev->err.get()));
        break;
    case EV_CLOSED:
    case EV_HANDLE_CLOSED:
        break;
    case EV_CALL:
    case EV_RESULT:
        args.push_back(ev->msg ? bytes_value(env, ev->msg) : env.Null());
        args.push_back(error_value(env, ev->err.get()));
        args.push_back(ev->has_server_id ? Napi::String::New(env, ev->server_id) : env.Null());
        if (ev->kind == EV_CALL)
            args.push_back(Napi::Number::New(env, ev->attempts));
        break;
    case EV_DONE:
    case EV_READY:
    case EV_ST_OPEN:
    case EV_ST_CLOSE:
    case EV_SEND_DONE:
        args.push_back(error_value(env, ev->err.get()));
        break;
    case EV_SELECT: {
        args.push_back(make_box(env, new SelBox{ev->sel}, sel_box_fin));
        ev->sel = nullptr;
        Napi::Array claims = Napi::Array::New(env, ev->claims.size());
        for (size_t i = 0; i < ev->claims.size(); i++) {
            Napi::Object c = Napi::Object::New(env);
            c.Set("serverId", Napi::String::New(env, ev->claims[i].first));
            c.Set("affinity", Napi::Number::New(env, ev->claims[i].second));
            claims.Set(i, c);
        }
        args.push_back(claims);
        break;
    }
    case EV_SUB_MSG:
    case EV_ST_MSG:
        args.push_back(bytes_value(env, ev->msg));
        break;
    case EV_REQ:
    case EV_AFF: {
        ReqInfo &info = *ev->info;
        args.push_back(make_box(env, new ReqBox{ev->req, ev->kind == EV_AFF}, req_box_fin));
        ev->req = nullptr;
        args.push_back(info_value(env, info));
        args.push_back(ev->msg ? bytes_value(env, ev->msg) : Napi::Uint8Array::New(env, 0));
        break;
    }
    case EV_ST_ACCEPT:
        args.push_back(Napi::Number::New(env, static_cast<double>(ev->id2)));
        args.push_back(make_box(env, new StreamBox{ev->stream}, stream_box_fin));
        ev->stream = nullptr;
        args.push_back(info_value(env, *ev->info));
        break;
    default:
        break;
    }
    Napi::Value ret = fn.Call(env.Undefined(), args);
    if (env.IsExceptionPending()) {
        Napi::Error e = env.GetAndClearPendingException();
        napi_fatal_exception(env, e.Value());
        ret = Napi::Value();
    }
#ifdef PSRPC_HAVE_STREAM_DEFER
    if (ev->kind == EV_ST_MSG && ev->deferred) {
        bool accept = !ret.IsEmpty() && ret.ToBoolean().Value();
        psrpc_stream_ack(ev->ack_stream, ev->ack_token, accept ? 1 : 0);
        ev->deferred = false;
    }
#else
    (void)ret;
#endif
    if (ev->kind == EV_CLOSED)
        free_bus_now(ctx);
    delete ev;
}

void tsfn_finalize(napi_env, void *, void *hint) { static_cast<BusCtx *>(hint)->unref(); }

// ---- argument helpers -------------------------------------------------------

struct UD;
void release_ud(void *ud);

bool type_error(Napi::Env env, const char *msg) {
    Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
    return false;
}

// Throws an Error with MSG, psrpcStatus ST and psrpcCode CODE.
Napi::Value throw_coded(Napi::Env env, const std::string &msg, int st, const char *code) {
    Napi::Error e = Napi::Error::New(env, msg);
    e.Set("psrpcStatus", Napi::Number::New(env, st));
    e.Set("psrpcCode", Napi::String::New(env, code));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
}

// Throws an Error carrying psrpc's status, wire code and last error message.
Napi::Value throw_status(Napi::Env env, int st, const char *what) {
    const char *msg = psrpc_last_error();
    std::string m = (msg && *msg) ? msg : psrpc_status_str(st);
    (void)what;
    return throw_coded(env, m, st, psrpc_status_code(st));
}

template <typename T> T *unbox(const Napi::Value &v) {
    if (!v.IsExternal())
        return nullptr;
    return v.As<Napi::External<T>>().Data();
}

// Throws a TypeError; the value a binding function returns then.
Napi::Value throw_type(Napi::Env env, const char *msg) {
    type_error(env, msg);
    return env.Undefined();
}

// The result of a binding function whose C call returned ST: undefined, or
// (ST not OK) U deleted and an Error thrown.
Napi::Value status_result(Napi::Env env, int st, const char *what, void *u = nullptr) {
    if (st != PSRPC_OK) {
        release_ud(u);
        throw_status(env, st, what);
    }
    return env.Undefined();
}

uint64_t id_arg(const Napi::Value &v) { return static_cast<uint64_t>(v.ToNumber().DoubleValue()); }

// The handle box V holds, or null with a TypeError WHAT thrown.
template <typename Box> Box *handle_arg(Napi::Env env, const Napi::Value &v, const char *what) {
    Box *b = unbox<Box>(v);
    if (!b)
        type_error(env, what);
    return b;
}

bool get_string(const Napi::Value &v, std::string &out) {
    if (!v.IsString())
        return false;
    out = v.As<Napi::String>().Utf8Value();
    return true;
}

struct MethodArg {
    psrpc_method m = PSRPC_METHOD_INIT;
    std::string name, output_type;
    bool ok = false;
};

bool get_method(Napi::Env env, const Napi::Value &v, MethodArg &out) {
    if (!v.IsObject())
        return type_error(env, "method must be an object");
    Napi::Object o = v.As<Napi::Object>();
    if (!get_string(o.Get("name"), out.name))
        return type_error(env, "method.name must be a string");
    out.m.name = out.name.c_str();
    out.m.routing = o.Get("routing").ToNumber().Uint32Value();
    out.m.flags = o.Get("flags").ToNumber().Uint32Value();
    Napi::Value ot = o.Get("outputType");
    if (ot.IsString()) {
        out.output_type = ot.As<Napi::String>().Utf8Value();
        out.m.output_type = out.output_type.c_str();
    }
    out.ok = true;
    return true;
}

struct StrList {
    std::vector<std::string> s;
    std::vector<const char *> p;
    bool from(Napi::Env env, const Napi::Value &v, const char *what) {
        if (v.IsUndefined() || v.IsNull())
            return true;
        if (!v.IsArray())
            return type_error(env, what);
        Napi::Array a = v.As<Napi::Array>();
        s.reserve(a.Length());
        for (uint32_t i = 0; i < a.Length(); i++) {
            Napi::Value x = a.Get(i);
            if (!x.IsString())
                return type_error(env, what);
            s.push_back(x.As<Napi::String>().Utf8Value());
        }
        for (auto &x : s)
            p.push_back(x.c_str());
        return true;
    }
    const char *const *data() const { return p.empty() ? nullptr : p.data(); }
};

struct CallOpts {
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    psrpc_selection_options sel = PSRPC_SELECTION_OPTIONS_INIT;
    StrList topics;
    std::vector<std::string> md_s;
    std::vector<psrpc_kv> md;
};

int64_t num_i64(const Napi::Value &v) {
    if (v.IsNumber()) {
        double d = v.As<Napi::Number>().DoubleValue();
        if (std::isnan(d))
            return 0;
        return static_cast<int64_t>(d);
    }
    if (v.IsBigInt()) {
        bool lossless;
        return v.As<Napi::BigInt>().Int64Value(&lossless);
    }
    return 0;
}

// opts: {timeoutMs, topics, metadata: [[k, v]...], deadlineNs: bigint,
//        waitForReady, selection: {minimumAffinity, maximumAffinity,
//        affinityTimeoutMs, shortCircuitTimeoutMs, acceptFirstAvailable, select}}
bool get_call_opts(Napi::Env env, const Napi::Value &v, CallOpts &c, void *select_ud,
                   psrpc_select_cb select_cb) {
    if (v.IsUndefined() || v.IsNull())
        return true;
    if (!v.IsObject())
        return type_error(env, "options must be an object");
    Napi::Object o = v.As<Napi::Object>();
    c.o.timeout_ms = num_i64(o.Get("timeoutMs"));
    if (!c.topics.from(env, o.Get("topics"), "topics must be an array of strings"))
        return false;
    c.o.topics = c.topics.data();
    c.o.topic_count = c.topics.s.size();
    Napi::Value md = o.Get("metadata");
    if (md.IsArray()) {
        Napi::Array a = md.As<Napi::Array>();
        c.md_s.reserve(a.Length() * 2);
        for (uint32_t i = 0; i < a.Length(); i++) {
            Napi::Value kv = a.Get(i);
            if (!kv.IsArray())
                return type_error(env, "metadata entries must be [key, value]");
            Napi::Array p = kv.As<Napi::Array>();
            Napi::Value k = p.Get(0u), val = p.Get(1u);
            if (!k.IsString() || !val.IsString())
                return type_error(env, "metadata keys and values must be strings");
            c.md_s.push_back(k.As<Napi::String>().Utf8Value());
            c.md_s.push_back(val.As<Napi::String>().Utf8Value());
        }
        for (size_t i = 0; i + 1 < c.md_s.size(); i += 2)
            c.md.push_back({c.md_s[i].c_str(), c.md_s[i + 1].c_str()});
        c.o.metadata = c.md.empty() ? nullptr : c.md.data();
        c.o.metadata_count = c.md.size();
    }
    c.o.deadline_ns = num_i64(o.Get("deadlineNs"));
    if (o.Get("waitForReady").ToBoolean().Value())
        c.o.flags |= PSRPC_CALL_WAIT_FOR_READY;
    Napi::Value s = o.Get("selection");
    if (s.IsObject()) {
        Napi::Object so = s.As<Napi::Object>();
        c.sel.minimum_affinity =
            static_cast<float>(so.Get("minimumAffinity").ToNumber().DoubleValue());
        c.sel.maximum_affinity =
            static_cast<float>(so.Get("maximumAffinity").ToNumber().DoubleValue());
        if (std::isnan(c.sel.minimum_affinity))
            c.sel.minimum_affinity = 0;
        if (std::isnan(c.sel.maximum_affinity))
            c.sel.maximum_affinity = 0;
        c.sel.affinity_timeout_ms = num_i64(so.Get("affinityTimeoutMs"));
        c.sel.short_circuit_timeout_ms = num_i64(so.Get("shortCircuitTimeoutMs"));
        if (so.Get("acceptFirstAvailable").ToBoolean().Value())
            c.sel.flags |= PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE;
        if (so.Get("select").ToBoolean().Value() && select_cb) {
            c.sel.select = select_cb;
            c.sel.select_user_data = select_ud;
        }
        c.o.selection = &c.sel;
    }
    return true;
}

bool get_bytes(const Napi::Value &v, const uint8_t *&data, size_t &len) {
    if (v.IsTypedArray()) {
        Napi::TypedArray t = v.As<Napi::TypedArray>();
        if (t.TypedArrayType() != napi_uint8_array)
            return false;
        Napi::Uint8Array a = v.As<Napi::Uint8Array>();
        data = a.Data();
        len = a.ByteLength();
        return true;
    }
    return false;
}

// ---- user data of callbacks -------------------------------------------------

bool get_bytes_arg(Napi::Env env, const Napi::Value &v, const uint8_t *&data, size_t &len,
                   const char *msg) {
    return get_bytes(v, data, len) || type_error(env, msg);
}

struct UD {
    BusCtx *bus;
    uint64_t id;
};

void release_ud(void *ud) { delete static_cast<UD *>(ud); }

// A new event of KIND for the JS object that U names.
Event *ud_event(int kind, const UD *u) {
    Event *ev = new Event;
    ev->kind = kind;
    ev->id = u->id;
    return ev;
}

// Posts an event of KIND carrying only ERROR (may be null) to U's bus; LAST
// deletes U (its callback runs no more).
void post_error_event(int kind, const psrpc_error *error, void *ud, bool last) {
    UD *u = static_cast<UD *>(ud);
    Event *ev = ud_event(kind, u);
    ev->err = copy_error(error);
    u->bus->post(ev);
    if (last)
        delete u;
}

void on_state(int state, const psrpc_error *error, void *ud) {
    BusCtx *ctx = static_cast<BusCtx *>(ud);
    Event *ev = new Event;
    ev->kind = EV_STATE;
    ev->state = state;
    ev->err = copy_error(error);
    ctx->post(ev);
}

void on_bus_closed(void *ud) {
    BusCtx *ctx = static_cast<BusCtx *>(ud);
    Event *ev = new Event;
    ev->kind = EV_CLOSED;
    ctx->post(ev);
}

void on_handle_closed(void *ud) { post_error_event(EV_HANDLE_CLOSED, nullptr, ud, true); }

Event *result_event(int kind, UD *u, const psrpc_msg *response, const psrpc_error *error,
                    const char *server_id) {
    Event *ev = ud_event(kind, u);
    if (response)
        ev->msg = psrpc_msg_retain(response);
    ev->err = copy_error(error);
    if (server_id) {
        ev->has_server_id = true;
        ev->server_id = server_id;
    }
    return ev;
}

// The attempts of the call whose outcome the loop thread is delivering: the
// client hook on_outcome runs immediately before the call's callback, on the
// same thread (psrpc.h, issue 16).
thread_local uint64_t tl_outcome_call = 0;
thread_local uint32_t tl_outcome_attempts = 0;

void note_outcome(const psrpc_call_info *info, const psrpc_call_outcome *outcome, void *) {
    tl_outcome_call = info->call_id;
    tl_outcome_attempts = outcome->attempts;
}

void on_call(uint64_t call_id, const psrpc_msg *response, const psrpc_error *error,
             const char *server_id, void *ud) {
    UD *u = static_cast<UD *>(ud);
    Event *ev = result_event(EV_CALL, u, response, error, server_id);
    ev->attempts = tl_outcome_call == call_id ? tl_outcome_attempts : 1;
    u->bus->post(ev);
    delete u;
}

void on_multi_result(uint64_t, const psrpc_msg *response, const psrpc_error *error,
                     const char *server_id, void *ud) {
    UD *u = static_cast<UD *>(ud);
    u->bus->post(result_event(EV_RESULT, u, response, error, server_id));
}

void on_multi_done(uint64_t, const psrpc_msg *, const psrpc_error *error, const char *, void *ud) {
    post_error_event(EV_DONE, error, ud, true);
}

void on_select(psrpc_selection *selection, const psrpc_claim *claims, size_t count, void *ud) {
    UD *u = static_cast<UD *>(ud);
    Event *ev = ud_event(EV_SELECT, u);
    ev->sel = selection;
    for (size_t i = 0; i < count; i++)
        ev->claims.emplace_back(claims[i].server_id ? claims[i].server_id : "", claims[i].affinity);
    u->bus->post(ev);
}

void on_ready(const psrpc_error *error, void *ud) { post_error_event(EV_READY, error, ud, false); }

void on_sub_msg(psrpc_sub *, const psrpc_msg *msg, void *ud) {
    UD *u = static_cast<UD *>(ud);
    Event *ev = ud_event(EV_SUB_MSG, u);
    ev->msg = psrpc_msg_retain(msg);
    u->bus->post(ev);
}

void on_request(psrpc_request *req, void *ud, int kind) {
    UD *u = static_cast<UD *>(ud);
    Event *ev = ud_event(kind, u);
    ev->info = std::make_unique<ReqInfo>();
    fill_request_info(*ev->info, req);
    const psrpc_msg *p = psrpc_request_payload(req);
    if (p)
        ev->msg = psrpc_msg_retain(p);
    ev->req = req;
    u->bus->post(ev);
}

void on_handler(psrpc_request *req, void *ud) { on_request(req, ud, EV_REQ); }
void on_affinity(psrpc_request *req, void *ud) { on_request(req, ud, EV_AFF); }

int on_stream_msg(psrpc_stream *stream, const psrpc_msg *msg, void *ud) {
    UD *u = static_cast<UD *>(ud);
    Event *ev = ud_event(EV_ST_MSG, u);
    ev->msg = psrpc_msg_retain(msg);
#ifdef PSRPC_HAVE_STREAM_DEFER
    uint64_t token = 0;
    if (psrpc_stream_defer(stream, &token) == PSRPC_OK) {
        ev->deferred = true;
        ev->ack_stream = stream;
        ev->ack_token = token;
    }
#else
    (void)stream;
#endif
    u->bus->post(ev);
    return 0;
}

void on_stream_close(psrpc_stream *, const psrpc_error *cause, void *ud) {
    post_error_event(EV_ST_CLOSE, cause, ud, false);
}

void on_stream_open(const psrpc_error *error, void *ud) {
    post_error_event(EV_ST_OPEN, error, ud, false);
}

void on_send_done(const psrpc_error *error, void *ud) {
    post_error_event(EV_SEND_DONE, error, ud, true);
}

void on_stream_accept(psrpc_stream *stream, void *ud) {
    UD *u = static_cast<UD *>(ud);
    uint64_t sid = u->bus->next_native_id.fetch_add(1);
    Event *ev = ud_event(EV_ST_ACCEPT, u);
    ev->id2 = sid;
    ev->info = std::make_unique<ReqInfo>();
    fill_stream_info(*ev->info, stream);
    ev->stream = stream;
    // The accept event is queued before any message of the stream.
    u->bus->post(ev);
    UD *sud = new UD{u->bus, sid};
    if (psrpc_stream_set_callbacks(stream, on_stream_msg, on_stream_close, sud, release_ud) !=
        PSRPC_OK)
        delete sud;
}

// ---- handle boxes -----------------------------------------------------------

struct BusBox {
    BusCtx *ctx;
};

void bus_box_fin(Napi::Env, BusBox *b) {
    BusCtx *ctx = b->ctx;
    if (!ctx->freed && !ctx->close_started) {
        // Dropped without close: close it; EV_CLOSED frees it on this thread.
        ctx->close_started = true;
        psrpc_bus_close(ctx->bus, on_bus_closed, ctx);
    }
    ctx->unref();
    delete b;
}

// The codes a client's retry policy retries (retryOn); owned by the client
// box, freed after the client.
struct RetryCodes {
    std::vector<std::string> codes;
};
struct ClientBox {
    psrpc_client *client;
    BusCtx *bus;
    std::vector<std::unique_ptr<RetryCodes>> retry_codes; // freed after the client
};
void client_box_fin(Napi::Env, ClientBox *b) {
    psrpc_client_free(b->client);
    b->bus->unref();
    delete b;
}

struct ServerBox {
    psrpc_server *server;
    BusCtx *bus;
};
void server_box_fin(Napi::Env, ServerBox *b) {
    psrpc_server_free(b->server);
    b->bus->unref();
    delete b;
}

struct SubBox {
    psrpc_sub *sub;
};
void sub_box_fin(Napi::Env, SubBox *b) {
    psrpc_sub_free(b->sub);
    delete b;
}

BusCtx *bus_arg(Napi::Env env, const Napi::Value &v) {
    BusBox *b = unbox<BusBox>(v);
    if (b == nullptr) {
        type_error(env, "not a bus handle");
        return nullptr;
    }
    if (b->ctx->freed || b->ctx->close_started) {
        throw_coded(env, "bus is closed", PSRPC_CANCELED, "canceled");
        return nullptr;
    }
    return b->ctx;
}

// ---- exported functions -------------------------------------------------------

int64_t opt_i64(const Napi::Object &o, const char *k) { return num_i64(o.Get(k)); }

// busOpen(url, opts, dispatch) -> bus box
Napi::Value BusOpen(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::string url;
    if (!get_string(info[0], url))
        return throw_type(env, "url must be a string");
    if (!info[2].IsFunction())
        return throw_type(env, "dispatch must be a function");
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    std::string strs[7];
    if (info[1].IsObject()) {
        Napi::Object oo = info[1].As<Napi::Object>();
        o.max_message_size = opt_i64(oo, "maxMessageSize");
        o.queue_capacity = opt_i64(oo, "queueCapacity");
        o.connect_timeout_ms = opt_i64(oo, "connectTimeoutMs");
        o.ping_interval_ms = opt_i64(oo, "pingIntervalMs");
        o.reconnect_wait_ms = opt_i64(oo, "reconnectWaitMs");
        o.reconnect_wait_max_ms = opt_i64(oo, "reconnectWaitMaxMs");
        o.compress_threshold = opt_i64(oo, "compressThreshold");
        o.reconnect_buffer_size = opt_i64(oo, "reconnectBufferSize");
        if (oo.Get("tls").ToBoolean().Value())
            o.flags |= PSRPC_BUS_TLS;
        const char *keys[7] = {"tlsCaFile",     "tlsCertFile",      "tlsKeyFile",   "tlsServerName",
                               "natsCredsFile", "natsNkeySeedFile", "channelPrefix"};
        const char **dst[7] = {&o.tls_ca_file,     &o.tls_cert_file,   &o.tls_key_file,
                               &o.tls_server_name, &o.nats_creds_file, &o.nats_nkey_seed_file,
                               &o.channel_prefix};
        for (int i = 0; i < 7; i++) {
            Napi::Value v = oo.Get(keys[i]);
            if (v.IsUndefined() || v.IsNull())
                continue;
            if (!v.IsString())
                return throw_type(env, "bus option strings must be strings");
            strs[i] = v.As<Napi::String>().Utf8Value();
            *dst[i] = strs[i].c_str();
        }
    }
    psrpc_bus *bus = nullptr;
    int st = psrpc_bus_open(&bus, url.c_str(), &o);
    if (st != PSRPC_OK) {
        throw_status(env, st, "open");
        return env.Undefined();
    }
    BusCtx *ctx = new BusCtx;
    ctx->bus = bus;
    ctx->env = env;
    ctx->refs = 2; // the box and the threadsafe function
    napi_value name = Napi::String::New(env, "psrpc");
    napi_status ns = napi_create_threadsafe_function(env, info[2], nullptr, name, 0, 1, ctx,
                                                     tsfn_finalize, ctx, call_js, &ctx->tsfn);
    if (ns != napi_ok) {
        psrpc_bus_free(bus);
        delete ctx;
        Napi::Error::New(env, "cannot create a threadsafe function").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    napi_add_env_cleanup_hook(env, bus_cleanup_hook, ctx);
    ctx->hook = true;
    st = psrpc_bus_watch(bus, on_state, ctx, nullptr);
    if (st != PSRPC_OK) {
        throw_status(env, st, "watch");
        bus_cleanup_hook(ctx);
        napi_remove_env_cleanup_hook(env, bus_cleanup_hook, ctx);
        ctx->unref();
        return env.Undefined();
    }
    return make_box(env, new BusBox{ctx}, bus_box_fin);
}

Napi::Value BusClose(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    BusBox *b = unbox<BusBox>(info[0]);
    if (b == nullptr)
        return throw_type(env, "not a bus handle");
    BusCtx *ctx = b->ctx;
    if (ctx->freed || ctx->close_started)
        return Napi::Boolean::New(env, false);
    ctx->close_started = true;
    int st = psrpc_bus_close(ctx->bus, on_bus_closed, ctx);
    if (st != PSRPC_OK) {
        throw_status(env, st, "close");
        return env.Undefined();
    }
    return Napi::Boolean::New(env, true);
}

Napi::Value BusRef(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    BusBox *b = unbox<BusBox>(info[0]);
    if (b == nullptr)
        return throw_type(env, "not a bus handle");
    if (b->ctx->freed)
        return env.Undefined();
    if (info[1].ToBoolean().Value())
        napi_ref_threadsafe_function(env, b->ctx->tsfn);
    else
        napi_unref_threadsafe_function(env, b->ctx->tsfn);
    return env.Undefined();
}

Napi::Value BusStats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    BusCtx *ctx = bus_arg(env, info[0]);
    if (!ctx)
        return env.Undefined();
    psrpc_bus_stats s;
    std::memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    int st = psrpc_bus_get_stats(ctx->bus, &s);
    if (st != PSRPC_OK)
        return throw_status(env, st, "stats");
    Napi::Object o = Napi::Object::New(env);
#define F(js, c) o.Set(js, Napi::Number::New(env, static_cast<double>(s.c)))
    F("connects", connects);
    F("disconnects", disconnects);
    F("reconnectAttempts", reconnect_attempts);
    F("subscriptions", subscriptions);
    F("messagesPublished", messages_published);
    F("messagesReceived", messages_received);
    F("droppedMalformed", dropped_malformed);
    F("droppedOversize", dropped_oversize);
    F("droppedSlowConsumer", dropped_slow_consumer);
    F("droppedExpired", dropped_expired);
    F("droppedUnknown", dropped_unknown);
    F("requestsInFlight", requests_in_flight);
    F("streamsOpen", streams_open);
#undef F
    return o;
}

// The handle in info[0] (ARG checks it) and the method in info[1], or null
// with a TypeError thrown.
template <typename Box>
Box *handle_and_method(Napi::Env env, const Napi::CallbackInfo &info,
                       Box *(*arg)(Napi::Env, const Napi::Value &), MethodArg &m) {
    Box *b = arg(env, info[0]);
    return (b && get_method(env, info[1], m)) ? b : nullptr;
}

// The bus in info[0] and the service name in info[1] of clientCreate and
// serverCreate, or null with an error thrown.
BusCtx *bus_and_service(Napi::Env env, const Napi::CallbackInfo &info, std::string &service) {
    BusCtx *ctx = bus_arg(env, info[0]);
    if (ctx && !get_string(info[1], service)) {
        type_error(env, "service must be a string");
        return nullptr;
    }
    return ctx;
}

// The result of creating client or server H on CTX's bus with status ST:
// [box, id] (the box holds the bus), or an Error thrown.
template <typename Box, typename H>
Napi::Value created(Napi::Env env, BusCtx *ctx, int st, const char *what, H *h,
                    const char *(*id)(const H *), void (*fin)(Napi::Env, Box *)) {
    if (st != PSRPC_OK)
        return throw_status(env, st, what);
    ctx->refs++;
    Napi::Array r = Napi::Array::New(env, 2);
    r.Set(0u, make_box(env, new Box{h, ctx}, fin));
    r.Set(1u, Napi::String::New(env, id(h)));
    return r;
}

// clientCreate(bus, service, {timeoutMs, selectionTimeoutMs, clientId}) -> [box, clientId]
Napi::Value ClientCreate(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::string service, cid;
    BusCtx *ctx = bus_and_service(env, info, service);
    if (!ctx)
        return env.Undefined();
    psrpc_client_options o = PSRPC_CLIENT_OPTIONS_INIT;
    if (info[2].IsObject()) {
        Napi::Object oo = info[2].As<Napi::Object>();
        o.timeout_ms = opt_i64(oo, "timeoutMs");
        o.selection_timeout_ms = opt_i64(oo, "selectionTimeoutMs");
        if (get_string(oo.Get("clientId"), cid))
            o.client_id = cid.c_str();
    }
    psrpc_client *c = nullptr;
    int st = psrpc_client_create(&c, ctx->bus, service.c_str(), &o);
    if (st == PSRPC_OK) {
        psrpc_client_hooks h = PSRPC_CLIENT_HOOKS_INIT;
        h.on_outcome = note_outcome;
        st = psrpc_client_add_hooks(c, &h);
        if (st != PSRPC_OK) {
            psrpc_client_free(c);
            c = nullptr;
        }
    }
    return created(env, ctx, st, "client", c, psrpc_client_id, client_box_fin);
}

int retry_on_codes(const psrpc_error *error, void *ud) {
    const RetryCodes *r = static_cast<const RetryCodes *>(ud);
    const char *code = error && error->code ? error->code : "unknown";
    for (const std::string &c : r->codes)
        if (c == code)
            return 1;
    return 0;
}

// clientSetRetries(client, {maxAttempts, timeoutMs, backoffMs, retryOn?, streamOpen} | null)
Napi::Value ClientSetRetries(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    ClientBox *cb = handle_arg<ClientBox>(env, info[0], "not a client handle");
    if (!cb)
        return env.Undefined();
    const uint32_t all = PSRPC_RETRY_UNARY | PSRPC_RETRY_STREAM_OPEN;
    if (!info[1].IsObject()) {
        int st = psrpc_client_set_retries(cb->client, all, nullptr);
        return status_result(env, st, "setRetries");
    }
    Napi::Object o = info[1].As<Napi::Object>();
    psrpc_retry_options r = PSRPC_RETRY_OPTIONS_INIT;
    r.max_attempts = static_cast<uint32_t>(opt_i64(o, "maxAttempts"));
    r.timeout_ms = opt_i64(o, "timeoutMs");
    r.backoff_ms = opt_i64(o, "backoffMs");
    Napi::Value on = o.Get("retryOn");
    if (on.IsArray()) {
        auto codes = std::make_unique<RetryCodes>();
        Napi::Array a = on.As<Napi::Array>();
        for (uint32_t i = 0; i < a.Length(); i++) {
            std::string c;
            if (!get_string(a.Get(i), c))
                return throw_type(env, "retryOn must be an array of code strings");
            codes->codes.push_back(c);
        }
        r.is_recoverable = retry_on_codes;
        r.user_data = codes.get();
        cb->retry_codes.push_back(std::move(codes));
    }
    bool stream_open = o.Get("streamOpen").ToBoolean().Value();
    int st = psrpc_client_set_retries(
        cb->client, PSRPC_RETRY_UNARY | (stream_open ? PSRPC_RETRY_STREAM_OPEN : 0), &r);
    if (st == PSRPC_OK && !stream_open)
        st = psrpc_client_set_retries(cb->client, PSRPC_RETRY_STREAM_OPEN, nullptr);
    return status_result(env, st, "setRetries");
}

// The process-wide log callback: one JS function, called through a
// threadsafe function (events happen on loop threads).
struct LogEvent {
    int level;
    std::string component, message;
};
napi_threadsafe_function log_tsfn = nullptr;

void log_call_js(napi_env raw_env, napi_value js_cb, void *, void *data) {
    std::unique_ptr<LogEvent> ev(static_cast<LogEvent *>(data));
    if (raw_env == nullptr || js_cb == nullptr)
        return;
    Napi::Env env(raw_env);
    Napi::HandleScope scope(env);
    Napi::Function(env, js_cb)
        .Call({Napi::Number::New(env, ev->level), Napi::String::New(env, ev->component),
               Napi::String::New(env, ev->message)});
    if (env.IsExceptionPending())
        napi_fatal_exception(env, env.GetAndClearPendingException().Value());
}

void on_log(int level, const char *component, const char *message, void *ud) {
    auto *ev = new LogEvent{level, component ? component : "", message ? message : ""};
    if (napi_call_threadsafe_function(static_cast<napi_threadsafe_function>(ud), ev,
                                      napi_tsfn_nonblocking) != napi_ok)
        delete ev;
}

napi_env log_env = nullptr;

void log_cleanup(void *) {
    psrpc_set_log_callback(nullptr, 0, nullptr);
    log_env = nullptr;
}

// setLogCallback(dispatch, maxLevel) / setLogCallback(null): the JS side
// passes one fixed dispatch function (it looks up the user's handler). The
// threadsafe function is made once per process and never released while
// libpsrpc may call it (a loop thread can be inside on_log when the callback
// is switched off); the environment's cleanup switches libpsrpc's callback
// off first. Only one environment (the first to call) may own it.
Napi::Value SetLogCallback(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (log_env != nullptr && log_env != static_cast<napi_env>(env))
        return throw_type(env, "the psrpc log handler belongs to another thread's environment");
    if (!info[0].IsFunction()) {
        psrpc_set_log_callback(nullptr, 0, nullptr);
        return env.Undefined();
    }
    if (log_tsfn == nullptr) {
        if (napi_create_threadsafe_function(env, info[0], nullptr,
                                            Napi::String::New(env, "psrpc.log"), 0, 1, nullptr,
                                            nullptr, nullptr, log_call_js, &log_tsfn) != napi_ok)
            return throw_type(env, "cannot create the log callback");
        napi_unref_threadsafe_function(env, log_tsfn); // never keeps the process alive
        log_env = env;
        napi_add_env_cleanup_hook(env, log_cleanup, nullptr);
    }
    int st = psrpc_set_log_callback(on_log, info[1].ToNumber().Int32Value(), log_tsfn);
    return status_result(env, st, "setLogCallback");
}

ClientBox *client_arg(Napi::Env env, const Napi::Value &v) {
    return handle_arg<ClientBox>(env, v, "not a client handle");
}

// clientCall(client, method, data, opts, id, multi) -> native call id
Napi::Value ClientCall(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    MethodArg m;
    ClientBox *cb = handle_and_method(env, info, client_arg, m);
    if (!cb)
        return env.Undefined();
    const uint8_t *data = nullptr;
    size_t len = 0;
    if (!get_bytes_arg(env, info[2], data, len, "request must be a Uint8Array"))
        return env.Undefined();
    uint64_t id = id_arg(info[4]);
    bool multi = info[5].ToBoolean().Value();
    UD *u = new UD{cb->bus, id};
    // The select callback's user data is the call's: libpsrpc never uses it
    // after the completion callback ran (which deletes it).
    CallOpts co;
    if (!get_call_opts(env, info[3], co, u, on_select)) {
        delete u;
        return env.Undefined();
    }
    uint64_t call_id = 0;
    int st;
    if (multi)
        st = psrpc_client_call_multi(&call_id, cb->client, &m.m, data, len, &co.o, on_multi_result,
                                     on_multi_done, u);
    else
        st = psrpc_client_call(&call_id, cb->client, &m.m, data, len, &co.o, on_call, u);
    if (st != PSRPC_OK) {
        delete u;
        return throw_status(env, st, "call");
    }
    return Napi::Number::New(env, static_cast<double>(call_id));
}

Napi::Value ClientCancel(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    ClientBox *cb = client_arg(env, info[0]);
    if (!cb)
        return env.Undefined();
    uint64_t call_id = id_arg(info[1]);
    psrpc_client_cancel(cb->client, call_id);
    return env.Undefined();
}

Napi::Value ClientClose(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    ClientBox *cb = client_arg(env, info[0]);
    if (!cb)
        return env.Undefined();
    UD *u = new UD{cb->bus, id_arg(info[1])};
    int st = psrpc_client_close(cb->client, on_handle_closed, u);
    return status_result(env, st, "close", u);
}

// clientSubscribe(client, method, topics, id) -> sub box
Napi::Value ClientSubscribe(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    MethodArg m;
    ClientBox *cb = handle_and_method(env, info, client_arg, m);
    if (!cb)
        return env.Undefined();
    StrList topics;
    if (!topics.from(env, info[2], "topics must be an array of strings"))
        return env.Undefined();
    UD *u = new UD{cb->bus, id_arg(info[3])};
    psrpc_sub *sub = nullptr;
    int st = psrpc_client_subscribe(&sub, cb->client, &m.m, topics.data(), topics.s.size(),
                                    on_sub_msg, on_ready, u, release_ud);
    if (st != PSRPC_OK)
        return throw_status(env, st, "subscribe");
    return make_box(env, new SubBox{sub}, sub_box_fin);
}

Napi::Value SubClose(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    SubBox *b = unbox<SubBox>(info[0]);
    if (!b)
        return throw_type(env, "not a subscription handle");
    psrpc_sub_close(b->sub, nullptr, nullptr);
    return env.Undefined();
}

// clientOpenStream(client, method, opts, id) -> stream box
Napi::Value ClientOpenStream(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    MethodArg m;
    ClientBox *cb = handle_and_method(env, info, client_arg, m);
    if (!cb)
        return env.Undefined();
    CallOpts co;
    if (!get_call_opts(env, info[2], co, nullptr, nullptr))
        return env.Undefined();
    UD *u = new UD{cb->bus, id_arg(info[3])};
    psrpc_stream *s = nullptr;
    int st = psrpc_client_open_stream(&s, cb->client, &m.m, &co.o, on_stream_open, on_stream_msg,
                                      on_stream_close, u, release_ud);
    if (st != PSRPC_OK)
        return throw_status(env, st, "open stream");
    return make_box(env, new StreamBox{s}, stream_box_fin);
}

StreamBox *stream_arg(Napi::Env env, const Napi::Value &v) {
    StreamBox *b = unbox<StreamBox>(v);
    if (!b || !b->stream)
        type_error(env, "not a stream handle");
    return (b && b->stream) ? b : nullptr;
}

// streamSend(stream, data, timeoutMs, sendId, busBox)
Napi::Value StreamSend(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    StreamBox *sb = stream_arg(env, info[0]);
    if (!sb)
        return env.Undefined();
    const uint8_t *data = nullptr;
    size_t len = 0;
    if (!get_bytes_arg(env, info[1], data, len, "message must be a Uint8Array"))
        return env.Undefined();
    BusBox *bb = unbox<BusBox>(info[4]);
    if (!bb)
        return throw_type(env, "not a bus handle");
    UD *u = new UD{bb->ctx, id_arg(info[3])};
    int st = psrpc_stream_send(sb->stream, data, len, num_i64(info[2]), on_send_done, u);
    return status_result(env, st, "send", u);
}

// streamClose(stream, code|null, message)
Napi::Value StreamClose(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    StreamBox *sb = stream_arg(env, info[0]);
    if (!sb)
        return env.Undefined();
    std::string code, msg;
    get_string(info[1], code);
    get_string(info[2], msg);
#ifdef PSRPC_HAVE_STREAM_CLOSE_CODE
    int st =
        psrpc_stream_close_code(sb->stream, code.empty() ? nullptr : code.c_str(), msg.c_str());
#else
    int status = code.empty() ? 0 : psrpc_status_from_code(code.c_str());
    int st = psrpc_stream_close(sb->stream, status, msg.c_str());
#endif
    return status_result(env, st, "close");
}

Napi::Value StreamFree(const Napi::CallbackInfo &info) {
    StreamBox *b = unbox<StreamBox>(info[0]);
    if (b && b->stream) {
        psrpc_stream_free(b->stream);
        b->stream = nullptr;
    }
    return info.Env().Undefined();
}

// serverCreate(bus, service, {serverId, skipClaim, timeoutMs}) -> [box, serverId]
Napi::Value ServerCreate(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::string service, sid;
    BusCtx *ctx = bus_and_service(env, info, service);
    if (!ctx)
        return env.Undefined();
    psrpc_server_options o = PSRPC_SERVER_OPTIONS_INIT;
    if (info[2].IsObject()) {
        Napi::Object oo = info[2].As<Napi::Object>();
        o.timeout_ms = opt_i64(oo, "timeoutMs");
        if (oo.Get("skipClaim").ToBoolean().Value())
            o.flags |= PSRPC_SERVER_SKIP_CLAIM;
        if (get_string(oo.Get("serverId"), sid))
            o.server_id = sid.c_str();
    }
    psrpc_server *s = nullptr;
    int st = psrpc_server_create(&s, ctx->bus, service.c_str(), &o);
    return created(env, ctx, st, "server", s, psrpc_server_id, server_box_fin);
}

ServerBox *server_arg(Napi::Env env, const Napi::Value &v) {
    return handle_arg<ServerBox>(env, v, "not a server handle");
}

// serverRegister(server, method, topics, id, hasAffinity, isStream)
Napi::Value ServerRegister(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    MethodArg m;
    ServerBox *sb = handle_and_method(env, info, server_arg, m);
    if (!sb)
        return env.Undefined();
    StrList topics;
    if (!topics.from(env, info[2], "topics must be an array of strings"))
        return env.Undefined();
    UD *u = new UD{sb->bus, id_arg(info[3])};
    bool aff = info[4].ToBoolean().Value();
    bool stream = info[5].ToBoolean().Value();
    int st;
    if (stream)
        st = psrpc_server_register_stream(sb->server, &m.m, topics.data(), topics.s.size(),
                                          on_stream_accept, aff ? on_affinity : nullptr, on_ready,
                                          u, release_ud);
    else
        st = psrpc_server_register(sb->server, &m.m, topics.data(), topics.s.size(), on_handler,
                                   aff ? on_affinity : nullptr, on_ready, u, release_ud);
    return status_result(env, st, "register", u);
}

Napi::Value ServerDeregister(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    ServerBox *sb = server_arg(env, info[0]);
    if (!sb)
        return env.Undefined();
    std::string name;
    if (!get_string(info[1], name))
        return throw_type(env, "method must be a string");
    StrList topics;
    if (!topics.from(env, info[2], "topics must be an array of strings"))
        return env.Undefined();
    int st = psrpc_server_deregister(sb->server, name.c_str(), topics.data(), topics.s.size());
    return status_result(env, st, "deregister");
}

Napi::Value ServerPublish(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    MethodArg m;
    ServerBox *sb = handle_and_method(env, info, server_arg, m);
    if (!sb)
        return env.Undefined();
    StrList topics;
    if (!topics.from(env, info[2], "topics must be an array of strings"))
        return env.Undefined();
    const uint8_t *data = nullptr;
    size_t len = 0;
    if (!get_bytes_arg(env, info[3], data, len, "message must be a Uint8Array"))
        return env.Undefined();
    int st = psrpc_server_publish(sb->server, &m.m, topics.data(), topics.s.size(), data, len);
    return status_result(env, st, "publish");
}

// serverClose(server, force, id)
Napi::Value ServerClose(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    ServerBox *sb = server_arg(env, info[0]);
    if (!sb)
        return env.Undefined();
    bool force = info[1].ToBoolean().Value();
    UD *u = new UD{sb->bus, id_arg(info[2])};
    int st = psrpc_server_close(sb->server, force ? PSRPC_CLOSE_FORCE : 0, on_handle_closed, u);
    return status_result(env, st, "close", u);
}

ReqBox *req_arg(Napi::Env env, const Napi::Value &v) {
    ReqBox *b = unbox<ReqBox>(v);
    if (!b) {
        type_error(env, "not a request handle");
        return nullptr;
    }
    if (!b->req) {
        throw_coded(env, "request already answered", PSRPC_FAILED_PRECONDITION,
                    "failed_precondition");
        return nullptr;
    }
    return b;
}

Napi::Value RequestRespond(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    ReqBox *b = req_arg(env, info[0]);
    if (!b)
        return env.Undefined();
    const uint8_t *data = nullptr;
    size_t len = 0;
    if (!get_bytes_arg(env, info[1], data, len, "response must be a Uint8Array"))
        return env.Undefined();
    psrpc_request *r = b->req;
    b->req = nullptr;
    int st = psrpc_request_respond(r, data, len);
    return Napi::Number::New(env, st);
}

// requestFail(box, code, message, details [{typeUrl, value}])
Napi::Value RequestFail(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    ReqBox *b = req_arg(env, info[0]);
    if (!b)
        return env.Undefined();
    std::string code, msg;
    get_string(info[1], code);
    get_string(info[2], msg);
    std::vector<std::string> urls;
    std::vector<psrpc_error_detail> details;
    std::vector<Napi::Uint8Array> keep;
    if (info[3].IsArray()) {
        Napi::Array a = info[3].As<Napi::Array>();
        urls.reserve(a.Length());
        for (uint32_t i = 0; i < a.Length(); i++) {
            Napi::Value d = a.Get(i);
            if (!d.IsObject())
                continue;
            Napi::Object o = d.As<Napi::Object>();
            std::string url;
            const uint8_t *v = nullptr;
            size_t vl = 0;
            if (!get_string(o.Get("typeUrl"), url) || !get_bytes(o.Get("value"), v, vl))
                return throw_type(env, "details must be {typeUrl: string, value: Uint8Array}");
            urls.push_back(url);
            details.push_back({nullptr, v, vl});
        }
        for (size_t i = 0; i < details.size(); i++)
            details[i].type_url = urls[i].c_str();
    }
    psrpc_request *r = b->req;
    b->req = nullptr;
    int st = psrpc_request_fail_details(r, code.c_str(), msg.c_str(),
                                        details.empty() ? nullptr : details.data(), details.size());
#ifndef PSRPC_HAVE_REQUEST_ABANDON
    if (st == PSRPC_INVALID_ARGUMENT) // not consumed by this library version
        st = psrpc_request_fail(r, PSRPC_INTERNAL, psrpc_last_error());
#endif
    return Napi::Number::New(env, st);
}

Napi::Value RequestClaim(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    ReqBox *b = req_arg(env, info[0]);
    if (!b)
        return env.Undefined();
    double a = info[1].ToNumber().DoubleValue();
    if (std::isnan(a))
        a = -1;
    psrpc_request *r = b->req;
    b->req = nullptr;
    int st = psrpc_request_claim(r, static_cast<float>(a));
    return Napi::Number::New(env, st);
}

Napi::Value RequestRemainingMs(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    ReqBox *b = unbox<ReqBox>(info[0]);
    if (!b || !b->req)
        return env.Undefined();
    return Napi::Number::New(env, static_cast<double>(psrpc_request_remaining_ms(b->req)));
}

// selectionChoose(box, serverId) / selectionFail(box, code, message)
Napi::Value SelectionChoose(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    SelBox *b = unbox<SelBox>(info[0]);
    if (!b || !b->sel)
        return throw_type(env, "not a pending selection");
    std::string id;
    if (!get_string(info[1], id))
        return throw_type(env, "server id must be a string");
    psrpc_selection *s = b->sel;
    b->sel = nullptr;
    return Napi::Number::New(env, psrpc_selection_choose(s, id.c_str()));
}

Napi::Value SelectionFail(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    SelBox *b = unbox<SelBox>(info[0]);
    if (!b || !b->sel)
        return throw_type(env, "not a pending selection");
    std::string code, msg;
    get_string(info[1], code);
    get_string(info[2], msg);
    psrpc_selection *s = b->sel;
    b->sel = nullptr;
    return Napi::Number::New(
        env, psrpc_selection_fail(s, psrpc_status_from_code(code.c_str()), msg.c_str()));
}

Napi::Value StatusInfo(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("version", Napi::String::New(env, psrpc_version_string()));
    o.Set("wireVersion", Napi::String::New(env, PSRPC_WIRE_VERSION_STRING));
    Napi::Object features = Napi::Object::New(env);
#ifdef PSRPC_HAVE_STREAM_DEFER
    features.Set("streamDefer", Napi::Boolean::New(env, true));
#else
    features.Set("streamDefer", Napi::Boolean::New(env, false));
#endif
#ifdef PSRPC_HAVE_REQUEST_ABANDON
    features.Set("requestAbandon", Napi::Boolean::New(env, true));
#else
    features.Set("requestAbandon", Napi::Boolean::New(env, false));
#endif
    o.Set("features", features);
    return o;
}

// ---- benchmark hooks (bench/node): the C side of the overhead comparison ----
// A server whose handlers are C (no JavaScript per request), and a C client
// loop on the same client handle, so that Node and C are measured against
// the same server on the same buses.

void bench_echo(psrpc_request *r, void *) {
    const psrpc_msg *p = psrpc_request_payload(r);
    psrpc_request_respond(r, psrpc_msg_data(p), psrpc_msg_size(p));
}
int bench_st_msg(psrpc_stream *, const psrpc_msg *, void *) { return 0; }
void bench_st_close(psrpc_stream *s, const psrpc_error *, void *) { psrpc_stream_free(s); }
void bench_st_accept(psrpc_stream *s, void *) {
    if (psrpc_stream_set_callbacks(s, bench_st_msg, bench_st_close, nullptr, nullptr) != PSRPC_OK)
        psrpc_stream_free(s);
}

// benchServe(server, method): registers the C echo (or stream acceptor); blocks until ready.
Napi::Value BenchServe(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    MethodArg m;
    ServerBox *sb = handle_and_method(env, info, server_arg, m);
    if (!sb)
        return env.Undefined();
    int st = (m.m.flags & PSRPC_METHOD_STREAM)
                 ? psrpc_server_register_stream(sb->server, &m.m, nullptr, 0, bench_st_accept,
                                                nullptr, nullptr, nullptr, nullptr)
                 : psrpc_server_register(sb->server, &m.m, nullptr, 0, bench_echo, nullptr, nullptr,
                                         nullptr, nullptr);
    if (st == PSRPC_OK)
        st = psrpc_server_wait_ready(sb->server, 10000);
    return status_result(env, st, "bench");
}

struct BenchRun {
    psrpc_client *client;
    psrpc_stream *stream;
    psrpc_method method;
    std::string data;
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> ops{0}, errors{0};
    std::atomic<int> outstanding{0};
};
void bench_issue(BenchRun *b);
void bench_call_done(uint64_t, const psrpc_msg *, const psrpc_error *e, const char *, void *ud) {
    BenchRun *b = static_cast<BenchRun *>(ud);
    (e ? b->errors : b->ops)++;
    b->outstanding--;
    bench_issue(b);
}
void bench_send_done(const psrpc_error *e, void *ud) {
    bench_call_done(0, nullptr, e, nullptr, ud);
}
void bench_issue(BenchRun *b) {
    if (b->stop.load())
        return;
    b->outstanding++;
    int st = b->stream ? psrpc_stream_send(b->stream, b->data.data(), b->data.size(), 0,
                                           bench_send_done, b)
                       : psrpc_client_call(nullptr, b->client, &b->method, b->data.data(),
                                           b->data.size(), nullptr, bench_call_done, b);
    if (st != PSRPC_OK) {
        b->outstanding--;
        b->errors++;
    }
}
int bench_cs_msg(psrpc_stream *, const psrpc_msg *, void *) { return 0; }
void bench_cs_close(psrpc_stream *, const psrpc_error *, void *) {}

// benchRunC(client, method, payload, inflight, warmupMs, durationMs) ->
// [ops, seconds, errors]: C calls (or stream sends) kept inflight at a time,
// issued from the completion callbacks; blocks the calling thread.
Napi::Value BenchRunC(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    MethodArg m;
    ClientBox *cb = handle_and_method(env, info, client_arg, m);
    if (!cb)
        return env.Undefined();
    const uint8_t *data = nullptr;
    size_t len = 0;
    if (!get_bytes_arg(env, info[2], data, len, "payload must be a Uint8Array"))
        return env.Undefined();
    int inflight = info[3].ToNumber().Int32Value();
    int64_t warm = num_i64(info[4]), dur = num_i64(info[5]);
    auto *b = new BenchRun;
    b->client = cb->client;
    b->stream = nullptr;
    b->method = m.m;
    b->method.name = m.name.c_str();
    b->data.assign(reinterpret_cast<const char *>(data), len);
    if (m.m.flags & PSRPC_METHOD_STREAM) {
        psrpc_call_options so = PSRPC_CALL_OPTIONS_INIT;
        so.timeout_ms = 5000;
        int st = psrpc_client_open_stream(&b->stream, cb->client, &b->method, &so, nullptr,
                                          bench_cs_msg, bench_cs_close, nullptr, nullptr);
        if (st != PSRPC_OK) {
            delete b;
            return throw_status(env, st, "bench");
        }
    }
    for (int i = 0; i < inflight; i++)
        bench_issue(b);
    struct timespec w = {static_cast<time_t>(warm / 1000),
                         static_cast<long>((warm % 1000) * 1000000)};
    nanosleep(&w, nullptr);
    uint64_t o0 = b->ops.load();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct timespec d = {static_cast<time_t>(dur / 1000),
                         static_cast<long>((dur % 1000) * 1000000)};
    nanosleep(&d, nullptr);
    uint64_t n = b->ops.load() - o0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    b->stop = true;
    while (b->outstanding.load() > 0) {
        struct timespec z = {0, 1000000};
        nanosleep(&z, nullptr);
    }
    uint64_t errs = b->errors.load();
    if (b->stream)
        psrpc_stream_free(b->stream);
    delete b;
    Napi::Array r = Napi::Array::New(env, 3);
    r.Set(0u, Napi::Number::New(env, static_cast<double>(n)));
    r.Set(1u, Napi::Number::New(env, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9));
    r.Set(2u, Napi::Number::New(env, static_cast<double>(errs)));
    return r;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
#define EXPORT(n) exports.Set(#n, Napi::Function::New(env, n, #n))
    EXPORT(BusOpen);
    EXPORT(BusClose);
    EXPORT(BusRef);
    EXPORT(BusStats);
    EXPORT(ClientCreate);
    EXPORT(ClientCall);
    EXPORT(ClientCancel);
    EXPORT(ClientClose);
    EXPORT(ClientSubscribe);
    EXPORT(SubClose);
    EXPORT(ClientOpenStream);
    EXPORT(StreamSend);
    EXPORT(StreamClose);
    EXPORT(StreamFree);
    EXPORT(ServerCreate);
    EXPORT(ServerRegister);
    EXPORT(ServerDeregister);
    EXPORT(ServerPublish);
    EXPORT(ServerClose);
    EXPORT(RequestRespond);
    EXPORT(RequestFail);
    EXPORT(RequestClaim);
    EXPORT(RequestRemainingMs);
    EXPORT(SelectionChoose);
    EXPORT(SelectionFail);
    EXPORT(StatusInfo);
    EXPORT(BenchServe);
    EXPORT(BenchRunC);
    EXPORT(ClientSetRetries);
    EXPORT(SetLogCallback);
#undef EXPORT
    return exports;
}

} // namespace

NODE_API_MODULE(psrpc_node, Init)
