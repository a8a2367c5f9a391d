/* gen_methods: derives every method's psrpc settings from a .proto file's
 * compiled descriptor, the way protoc-gen-psrpc (livekit/psrpc v0.8.2) does,
 * and writes them as a C table.
 *
 *   protoc-c -I... --descriptor_set_out=conformance.desc conformance.proto
 *   gen_methods conformance.desc conformance_methods.inc
 *
 * Input: a FileDescriptorSet (descriptor.proto). For each service and rpc it
 * reads MethodOptions extension 2198 (psrpc.Options of options.proto) and
 * computes, following wire-protocol.md 4.1 and 7.2:
 *   - wire names: CamelCase(service name), CamelCase(rpc name)
 *   - type: Options.type, overridden by the deprecated oneof `routing`
 *     whenever one of its fields is present (multi → MULTI, affinity_func →
 *     AFFINITY, queue → QUEUE), whatever its value
 *   - affinity = type == AFFINITY, multi = type == MULTI,
 *     require_claim = type != MULTI && !topic_params.single_server,
 *     queue = type == QUEUE
 *   - topic parameters: len(topic_params.names), or 1 when topics is set
 *     and names is empty, 0 without topics
 * The descriptor is walked with a minimal protobuf wire reader: only the
 * fields above are needed, everything else is skipped.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p, *end;
} rd;

typedef struct {
    const uint8_t *data;
    size_t len;
} span;

static void die(const char *what) {
    fprintf(stderr, "gen_methods: %s\n", what);
    exit(1);
}

static uint64_t varint(rd *r) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end)
            die("truncated varint");
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return v;
    }
    die("varint too long");
    return 0;
}

/* Reads one field header; returns 0 at the end. For length-delimited fields
 * *body is set; for varints *v; other wire types are skipped. */
static int field(rd *r, uint32_t *num, int *wt, uint64_t *v, span *body) {
    if (r->p >= r->end)
        return 0;
    uint64_t key = varint(r);
    *num = (uint32_t)(key >> 3);
    *wt = (int)(key & 7);
    switch (*wt) {
    case 0:
        *v = varint(r);
        break;
    case 1:
        if (r->end - r->p < 8)
            die("truncated fixed64");
        r->p += 8;
        break;
    case 2: {
        uint64_t n = varint(r);
        if ((uint64_t)(r->end - r->p) < n)
            die("truncated bytes");
        body->data = r->p;
        body->len = (size_t)n;
        r->p += n;
        break;
    }
    case 5:
        if (r->end - r->p < 4)
            die("truncated fixed32");
        r->p += 4;
        break;
    default:
        die("unsupported wire type (groups are not used by descriptors)");
    }
    return 1;
}

static char *str(span s) {
    char *out = malloc(s.len + 1);
    if (!out)
        die("out of memory");
    memcpy(out, s.data, s.len);
    out[s.len] = 0;
    return out;
}

/* CamelCase as specified in wire-protocol.md 4.1 (protoc-gen-go's classic
 * name mangling), over bytes. */
static char *camel_case(const char *s) {
    size_t n = strlen(s);
    char *out = malloc(n + 2);
    size_t o = 0, i = 0;
    if (!out)
        die("out of memory");
    if (n && s[0] == '_') {
        out[o++] = 'X';
        i = 1;
    }
    for (; i < n; i++) {
        char c = s[i];
        if (c == '_' && i + 1 < n && s[i + 1] >= 'a' && s[i + 1] <= 'z')
            continue;
        if (c >= '0' && c <= '9') {
            out[o++] = c;
            continue;
        }
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        out[o++] = c;
        while (i + 1 < n && s[i + 1] >= 'a' && s[i + 1] <= 'z')
            out[o++] = s[++i];
    }
    out[o] = 0;
    return out;
}

/* psrpc.Options, as far as the generator uses it. */
typedef struct {
    int subscription, topics, stream, single_server;
    unsigned names;
    int type;       /* field 8 */
    int oneof_type; /* -1: oneof absent, else the routing it forces */
} psrpc_opts;

static void parse_topic_params(span s, psrpc_opts *o) {
    rd r = {s.data, s.data + s.len};
    uint32_t num;
    int wt;
    uint64_t v = 0;
    span b = {0};
    while (field(&r, &num, &wt, &v, &b)) {
        if (num == 2 && wt == 2)
            o->names++;
        else if (num == 4 && wt == 0)
            o->single_server = v != 0;
    }
}

static void parse_options(span s, psrpc_opts *o) {
    rd r = {s.data, s.data + s.len};
    uint32_t num;
    int wt;
    uint64_t v = 0;
    span b = {0};
    while (field(&r, &num, &wt, &v, &b)) {
        if (wt == 0) {
            switch (num) {
            case 1:
                o->subscription = v != 0;
                break;
            case 2:
                o->topics = v != 0;
                break;
            case 4:
                o->stream = v != 0;
                break;
            case 8:
                o->type = (int)(int32_t)v;
                break;
            /* the deprecated oneof: presence decides, not the value */
            case 5:
                o->oneof_type = 2;
                break; /* multi → MULTI */
            case 6:
                o->oneof_type = 1;
                break; /* affinity_func → AFFINITY */
            case 7:
                o->oneof_type = 0;
                break; /* queue → QUEUE */
            default:
                break;
            }
        } else if (wt == 2 && num == 3) {
            parse_topic_params(b, o);
        }
    }
}

static void parse_method_options(span s, psrpc_opts *o) {
    rd r = {s.data, s.data + s.len};
    uint32_t num;
    int wt;
    uint64_t v = 0;
    span b = {0};
    while (field(&r, &num, &wt, &v, &b))
        if (num == 2198 && wt == 2)
            parse_options(b, o); /* repeated occurrences merge */
}

static const char *strip_dot(const char *t) { return t[0] == '.' ? t + 1 : t; }

static unsigned emitted;

static void method(FILE *out, const char *service, span s) {
    rd r = {s.data, s.data + s.len};
    uint32_t num;
    int wt;
    uint64_t v = 0;
    span b = {0};
    char *name = NULL, *in = NULL, *outt = NULL;
    psrpc_opts o = {0};
    o.oneof_type = -1;
    while (field(&r, &num, &wt, &v, &b)) {
        if (wt != 2)
            continue;
        if (num == 1)
            name = str(b);
        else if (num == 2)
            in = str(b);
        else if (num == 3)
            outt = str(b);
        else if (num == 4)
            parse_method_options(b, &o);
    }
    if (!name || !in || !outt)
        die("method without name or types");
    int type = o.oneof_type >= 0 ? o.oneof_type : o.type;
    if (type < 0 || type > 2)
        die("unknown psrpc routing type");
    int affinity = type == 1, multi = type == 2, queue = type == 0;
    int require_claim = !multi && !o.single_server;
    unsigned topic_params = o.topics ? (o.names ? o.names : 1) : 0;
    char *wire = camel_case(name);
    static const char *const routing[] = {"PSRPC_ROUTING_QUEUE", "PSRPC_ROUTING_AFFINITY",
                                          "PSRPC_ROUTING_MULTI"};
    fprintf(out, "    {\"%s\", \"%s\", \"%s\", \"%s\", %s,\n     0", service, wire, strip_dot(in),
            strip_dot(outt), routing[type]);
    if (o.subscription)
        fprintf(out, " | PSRPC_METHOD_SUBSCRIPTION");
    if (o.topics)
        fprintf(out, " | PSRPC_METHOD_TOPICS");
    if (o.stream)
        fprintf(out, " | PSRPC_METHOD_STREAM");
    if (o.single_server)
        fprintf(out, " | PSRPC_METHOD_SINGLE_SERVER");
    fprintf(out, ",\n     /* affinity, multi, require_claim, queue */ %d, %d, %d, %d, %u},\n",
            affinity, multi, require_claim, queue, topic_params);
    emitted++;
    free(wire);
    free(name);
    free(in);
    free(outt);
}

static void service(FILE *out, span s) {
    rd r = {s.data, s.data + s.len};
    uint32_t num;
    int wt;
    uint64_t v = 0;
    span b = {0};
    char *name = NULL;
    /* the name (field 1) comes first in protoc's output, but do not rely on it */
    while (field(&r, &num, &wt, &v, &b))
        if (num == 1 && wt == 2)
            name = str(b);
    if (!name)
        die("service without a name");
    char *wire = camel_case(name);
    r.p = s.data;
    while (field(&r, &num, &wt, &v, &b))
        if (num == 2 && wt == 2)
            method(out, wire, b);
    free(wire);
    free(name);
}

static void file(FILE *out, span s) {
    rd r = {s.data, s.data + s.len};
    uint32_t num;
    int wt;
    uint64_t v = 0;
    span b = {0};
    while (field(&r, &num, &wt, &v, &b))
        if (num == 6 && wt == 2)
            service(out, b);
}

int main(int argc, char **argv) {
    if (argc != 3)
        die("usage: gen_methods DESCRIPTOR_SET OUTPUT");
    FILE *f = fopen(argv[1], "rb");
    if (!f)
        die("cannot open the descriptor set");
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    if (n == sizeof buf)
        die("descriptor set too large");
    FILE *out = fopen(argv[2], "w");
    if (!out)
        die("cannot open the output");
    fprintf(out,
            "/* Generated by gen_methods from %s: do not edit. One entry per rpc:\n"
            " * service, method (wire names), input and output message types, routing,\n"
            " * flags, the four flags protoc-gen-psrpc passes to RegisterMethod, and\n"
            " * the number of topic parameters. */\n",
            argv[1]);
    rd r = {buf, buf + n};
    uint32_t num;
    int wt;
    uint64_t v = 0;
    span b = {0};
    while (field(&r, &num, &wt, &v, &b))
        if (num == 1 && wt == 2)
            file(out, b);
    if (fclose(out) != 0)
        die("write failed");
    if (!emitted)
        die("no rpc found");
    return 0;
}
