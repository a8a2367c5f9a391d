#include "core.h"

int psrpc__method_copy(psrpc__method *dst, const psrpc_method *m) {
    memset(dst, 0, sizeof *dst);
    PSRPC__CHECK_ARG(m, "method is NULL");
    psrpc_method mm = PSRPC_METHOD_INIT;
    int rc = psrpc__options_load(&mm, sizeof mm, m, "psrpc_method");
    if (rc != PSRPC_OK)
        return rc;
    if ((rc = psrpc__check_name("method name", mm.name)) != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(mm.routing <= PSRPC_ROUTING_MULTI, "unknown routing %u", (unsigned)mm.routing);
    PSRPC__CHECK_ARG((mm.flags & ~0xfu) == 0, "unknown method flags 0x%x", (unsigned)mm.flags);
    PSRPC__CHECK_ARG(!mm.output_type || psrpc__utf8_valid(mm.output_type, strlen(mm.output_type)),
                     "output_type is not valid UTF-8");
    dst->name = psrpc__strdup(mm.name);
    dst->output_type = mm.output_type && *mm.output_type ? psrpc__strdup(mm.output_type) : NULL;
    dst->routing = mm.routing;
    dst->flags = mm.flags;
    if (!dst->name || (mm.output_type && *mm.output_type && !dst->output_type)) {
        psrpc__method_clear(dst);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    return PSRPC_OK;
}

void psrpc__method_clear(psrpc__method *m) {
    free(m->name);
    free(m->output_type);
    memset(m, 0, sizeof *m);
}

bool psrpc__method_require_claim(const psrpc__method *m) {
    return m->routing != PSRPC_ROUTING_MULTI && !(m->flags & PSRPC_METHOD_SINGLE_SERVER);
}

int psrpc__check_topics(const char *const *topics, size_t count) {
    PSRPC__CHECK_ARG(topics || count == 0, "topics is NULL with a non-zero count");
    for (size_t i = 0; i < count; i++) {
        PSRPC__CHECK_ARG(topics[i], "topic %zu is NULL", i);
        PSRPC__CHECK_ARG(psrpc__utf8_valid(topics[i], strlen(topics[i])),
                         "topic %zu is not valid UTF-8", i);
    }
    return PSRPC_OK;
}

int psrpc__check_name(const char *what, const char *s) {
    PSRPC__CHECK_ARG(s && *s, "%s is NULL or empty", what);
    bool ok = (s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_';
    for (const char *p = s; ok && *p; p++)
        ok = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
             *p == '_';
    PSRPC__CHECK_ARG(ok,
                     "%s \"%.64s\" is not an identifier ([A-Za-z_][A-Za-z0-9_]*): it is "
                     "put into channel names and NATS subjects unescaped",
                     what, s);
    return PSRPC_OK;
}

/* Client ids: what Go accepts (any string; "" means generated), less what
 * would break the NATS subject "CLI.<service>.<id>.RES" that Go builds from
 * the raw id (Redis channels escape it, as Go's Legacy name): whitespace and
 * control characters (invalid in a subject), a token that is exactly "*" or
 * ">" (a wildcard: the client would receive other clients' replies) and empty
 * tokens. Everything else is carried exactly as Go does (channel.c). */
int psrpc__check_client_id(const char *s) {
    PSRPC__CHECK_ARG(s, "client_id is NULL");
    size_t n = strlen(s);
    PSRPC__CHECK_ARG(psrpc__utf8_valid(s, n), "client_id is not valid UTF-8");
    bool ok = true;
    for (const char *p = s; ok && *p; p++)
        ok = (unsigned char)*p > ' ' && *p != 0x7f;
    PSRPC__CHECK_ARG(ok,
                     "client_id \"%.64s\" holds whitespace or control characters (invalid in "
                     "NATS subjects)",
                     s);
    for (const char *tok = s; *s && ok;) {
        const char *dot = strchr(tok, '.');
        size_t len = dot ? (size_t)(dot - tok) : strlen(tok);
        ok = len > 0 && !(len == 1 && (*tok == '*' || *tok == '>'));
        if (!dot)
            break;
        tok = dot + 1;
    }
    PSRPC__CHECK_ARG(ok,
                     "client_id \"%.64s\" has an empty or wildcard (\"*\", \">\") "
                     "dot-separated part (the NATS reply subject would be invalid or a wildcard)",
                     s);
    return PSRPC_OK;
}

/* Server ids: any string Go accepts ("" means generated); they travel in
 * message fields only, never in channel names. Protobuf strings must be UTF-8. */
int psrpc__check_server_id(const char *s) {
    PSRPC__CHECK_ARG(s, "server_id is NULL");
    PSRPC__CHECK_ARG(psrpc__utf8_valid(s, strlen(s)), "server_id is not valid UTF-8");
    return PSRPC_OK;
}

int psrpc__check_create(void *out, psrpc_bus *bus, const char *service) {
    PSRPC__CHECK_ARG(out, "out is NULL");
    *(void **)out = NULL;
    PSRPC__CHECK_ARG(bus && bus->magic == PSRPC__BUS_MAGIC, "bus is NULL or not a psrpc_bus");
    PSRPC__CHECK_NOT_FORKED(bus);
    return psrpc__check_name("service", service);
}

ProtobufCMessage *psrpc__decode_control(psrpc_bus *bus, const uint8_t *data, size_t len,
                                        const ProtobufCMessageDescriptor *desc) {
    psrpc__envelope env;
    if (psrpc__envelope_decode(&env, data, len, (size_t)bus->opts.max_message_size) != 0) {
        PSRPC__DROP(bus, dropped_malformed, PSRPC__DROP_MALFORMED);
        return NULL;
    }
    ProtobufCMessage *m = NULL;
    int rc = psrpc__wire_unpack(&m, &env, desc);
    psrpc__envelope_clear(&env);
    if (rc != 0) {
        PSRPC__DROP(bus, dropped_malformed, PSRPC__DROP_MALFORMED);
        return NULL;
    }
    return m;
}

int psrpc__publish_control(psrpc_bus *bus, const psrpc__channel *ch,
                           const ProtobufCMessage *message) {
    psrpc_msg *bytes = NULL;
    int rc =
        psrpc__wire_wrap_message(&bytes, message, ch->local, (size_t)bus->opts.compress_threshold);
    if (rc != PSRPC_OK)
        return rc;
    rc = psrpc__bus_publish(bus, ch, bytes);
    psrpc_msg_release(bytes);
    return rc;
}

psrpc__err *psrpc__err_from_response(const Internal__Response *r) {
    psrpc__err *e = psrpc__err_from_code(r->code, r->error);
    if (!e || r->n_error_details == 0)
        return e;
    e->details = calloc(r->n_error_details, sizeof *e->details);
    if (!e->details)
        return e;
    for (size_t i = 0; i < r->n_error_details; i++) {
        const Internal__Any *a = r->error_details[i];
        size_t n = a->value.len;
        uint8_t *v = malloc(n ? n : 1);
        char *t = psrpc__strdup(a->type_url ? a->type_url : "");
        if (!v || !t) {
            free(v);
            free(t);
            break;
        }
        if (n)
            memcpy(v, a->value.data, n);
        e->details[i] = (psrpc_error_detail){t, v, n};
        e->details_count = i + 1;
    }
    return e;
}
