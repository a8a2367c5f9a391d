/* The psrpc envelope (wire-protocol.md sections 2-3, docs/wire-v0.8.2.md):
 * internal.Msg wrapping and unwrapping, gzip, and the strict checks a Go
 * peer applies (UTF-8 strings, type URL). Control messages are packed and
 * unpacked with protobuf-c; the outer Msg and the NATS Channel view are read by
 * hand so that they follow Go's DiscardUnknown decoding exactly and never copy
 * more than they keep. */
#include "wire.h"

#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <zlib.h>

#include "channel.h"
#include "common.h"

#define GZIP_WINDOW_BITS (15 + 16) /* deflate window, gzip framing only */
#define GROUP_DEPTH_MAX 100        /* nesting of unknown groups we skip */
#define MESSAGE_DEPTH_MAX 100      /* nesting of control messages we check */

/* protobuf-c may allocate at most this much while unpacking len bytes: a fixed
 * multiple of the input (its worst case, empty repeated sub-messages, is about
 * 25 bytes per input byte plus scratch) and a constant. */
#define UNPACK_BUDGET(len) ((len) < (SIZE_MAX - 65536) / 128 ? (len)*128 + 65536 : SIZE_MAX)

enum { WT_VARINT = 0, WT_FIXED64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_FIXED32 = 5 };

/* ---- raw protobuf reading (google.golang.org/protobuf/encoding/protowire) -- */

/* A varint of at most 10 bytes whose 10th byte is 0 or 1 (ConsumeVarint). */
static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t v = 0;
    const uint8_t *q = *p;
    for (unsigned i = 0; i < 10; i++) {
        if (q == end)
            return false;
        uint8_t b = *q++;
        if (i == 9 && b > 1)
            return false;
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if (b < 0x80) {
            *p = q;
            *out = v;
            return true;
        }
    }
    return false;
}

/* A tag with a field number in [1, 2^29-1], as Go's decoder requires. */
static bool read_tag(const uint8_t **p, const uint8_t *end, uint32_t *num, unsigned *wt) {
    uint64_t tag;
    if (!read_varint(p, end, &tag))
        return false;
    uint64_t n = tag >> 3;
    if (n < 1 || n > ((1u << 29) - 1))
        return false;
    *num = (uint32_t)n;
    *wt = (unsigned)(tag & 7);
    return true;
}

/* Reads (or skips) the value of a field whose tag was just read. For WT_LEN
 * data and len are the contents, for WT_VARINT v is the value. Groups are
 * skipped up to their matching end tag (ConsumeFieldValue). */
static bool read_value(const uint8_t **p, const uint8_t *end, uint32_t num, unsigned wt,
                       uint64_t *v, const uint8_t **data, size_t *len, unsigned depth) {
    switch (wt) {
    case WT_VARINT:
        return read_varint(p, end, v);
    case WT_FIXED64:
        if ((size_t)(end - *p) < 8)
            return false;
        *p += 8;
        return true;
    case WT_FIXED32:
        if ((size_t)(end - *p) < 4)
            return false;
        *p += 4;
        return true;
    case WT_LEN: {
        uint64_t n;
        if (!read_varint(p, end, &n) || n > (uint64_t)(end - *p))
            return false;
        *data = *p;
        *len = (size_t)n;
        *p += n;
        return true;
    }
    case WT_SGROUP:
        if (depth >= GROUP_DEPTH_MAX)
            return false;
        for (;;) {
            uint32_t n2;
            unsigned wt2;
            uint64_t v2;
            const uint8_t *d2;
            size_t l2;
            if (!read_tag(p, end, &n2, &wt2))
                return false;
            if (wt2 == WT_EGROUP)
                return n2 == num;
            if (!read_value(p, end, n2, wt2, &v2, &d2, &l2, depth + 1))
                return false;
        }
    default: /* a stray end-group, or the reserved wire types 6 and 7 */
        return false;
    }
}

/* ---- outer envelope ------------------------------------------------------- */

/* Owned decode state behind psrpc__envelope.priv_. */
typedef struct env_state {
    uint8_t *inflated; /* the decompressed value, or NULL */
    char strings[];    /* type name, NUL, channel, NUL, then the value copy */
} env_state;

static const uint8_t empty_bytes[1];

static bool ceil_add(size_t *acc, size_t n) {
    if (n > SIZE_MAX - *acc)
        return false;
    *acc += n;
    return true;
}

/* Inflates one or more concatenated gzip members (Go's gzip.Reader is
 * multistream), producing at most max bytes (0: no limit). The output buffer
 * never grows beyond max + 1 bytes. */
static int gunzip(uint8_t **out, size_t *out_len, const uint8_t *src, size_t len, size_t max) {
    if (len == 0)
        return psrpc__error(PSRPC_MALFORMED_REQUEST, "empty gzip value");
    size_t limit = max && max < SIZE_MAX ? max + 1 : SIZE_MAX; /* room to see one too many */
    size_t cap = len < SIZE_MAX / 4 ? len * 4 : SIZE_MAX;
    if (cap < 4096)
        cap = 4096;
    if (cap > limit)
        cap = limit;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory inflating a message");

    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, GZIP_WINDOW_BITS) != Z_OK) {
        free(buf);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "inflateInit2 failed");
    }
    int rc = 0;
    size_t in_pos = 0, total = 0;
    for (;;) {
        if (total == cap) {
            if (cap == limit) {
                rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED,
                                  "decompressed message exceeds %zu bytes", max);
                break;
            }
            size_t ncap = cap < limit / 2 ? cap * 2 : limit;
            uint8_t *nbuf = realloc(buf, ncap);
            if (!nbuf) {
                rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory inflating a message");
                break;
            }
            buf = nbuf;
            cap = ncap;
        }
        size_t in_chunk = len - in_pos < UINT_MAX ? len - in_pos : UINT_MAX;
        size_t out_chunk = cap - total < UINT_MAX ? cap - total : UINT_MAX;
        zs.next_in = (Bytef *)(uintptr_t)(src + in_pos);
        zs.avail_in = (uInt)in_chunk;
        zs.next_out = buf + total;
        zs.avail_out = (uInt)out_chunk;
        int zr = inflate(&zs, Z_NO_FLUSH);
        in_pos += in_chunk - zs.avail_in;
        total += out_chunk - zs.avail_out;
        if (zr == Z_STREAM_END) {
            if (in_pos == len)
                break; /* every member complete */
            if (inflateReset(&zs) != Z_OK) {
                rc = psrpc__error(PSRPC_MALFORMED_REQUEST, "gzip: reset failed");
                break;
            }
            continue; /* the next member must start right here */
        }
        if (zr == Z_OK)
            continue;
        if (zr == Z_BUF_ERROR && total == cap)
            continue; /* only out of output space: grow */
        if (zr == Z_MEM_ERROR)
            rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory inflating a message");
        else if (zr == Z_BUF_ERROR)
            rc = psrpc__error(PSRPC_MALFORMED_REQUEST, "gzip: unexpected end of data");
        else
            rc =
                psrpc__error(PSRPC_MALFORMED_REQUEST, "gzip: %s", zs.msg ? zs.msg : "invalid data");
        break;
    }
    inflateEnd(&zs);
    if (rc == 0 && max && total > max)
        rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "decompressed message exceeds %zu bytes", max);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    *out_len = total;
    return 0;
}

int psrpc__envelope_decode(psrpc__envelope *env, const uint8_t *data, size_t len,
                           size_t max_value_size) {
    memset(env, 0, sizeof *env);
    if (!data && len)
        return psrpc__error(PSRPC_MALFORMED_REQUEST, "NULL message bytes");
    const uint8_t *p = data ? data : empty_bytes, *end = p + len;
    const uint8_t *type_url = NULL, *value = NULL, *channel = NULL;
    size_t type_len = 0, value_len = 0, channel_len = 0;
    int32_t compression = 0;

    /* Go decodes internal.Content with DiscardUnknown: fields 1, 2 and 4 are
     * known, anything else (or a known number with another wire type) is
     * skipped, and the last occurrence of a field wins. Field 3 is read too,
     * as the NATS Channel view would. */
    while (p < end) {
        uint32_t num;
        unsigned wt;
        uint64_t v = 0;
        const uint8_t *d = NULL;
        size_t n = 0;
        if (!read_tag(&p, end, &num, &wt) || !read_value(&p, end, num, wt, &v, &d, &n, 0))
            return psrpc__error(PSRPC_MALFORMED_REQUEST, "truncated or invalid Msg");
        if (wt == WT_LEN && (num == 1 || num == 3)) {
            if (!psrpc__utf8_valid((const char *)d, n) || memchr(d, 0, n))
                return psrpc__error(PSRPC_MALFORMED_REQUEST, "Msg field %u is not valid UTF-8",
                                    (unsigned)num);
            if (num == 1) {
                type_url = d;
                type_len = n;
            } else {
                channel = d;
                channel_len = n;
            }
        } else if (wt == WT_LEN && num == 2) {
            value = d;
            value_len = n;
        } else if (wt == WT_VARINT && num == 4) {
            compression = (int32_t)(uint32_t)v; /* open enum: int32 truncation */
        }
    }

    /* The type is resolved from the text after the last '/' (anypb). */
    const uint8_t *name = type_url;
    size_t name_len = type_len;
    for (size_t i = type_len; i > 0; i--) {
        if (type_url[i - 1] == '/') {
            name = type_url + i;
            name_len = type_len - i;
            break;
        }
    }
    if (name_len == 0)
        return psrpc__error(PSRPC_MALFORMED_REQUEST, "Msg has no type name");

    uint8_t *inflated = NULL;
    switch (compression) {
    case INTERNAL__COMPRESSION__COMPRESSION_NONE:
        if (max_value_size && value_len > max_value_size)
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "message value of %zu bytes exceeds %zu",
                                value_len, max_value_size);
        break;
    case INTERNAL__COMPRESSION__COMPRESSION_GZIP: {
        int rc = gunzip(&inflated, &value_len, value, value_len, max_value_size);
        if (rc != 0)
            return rc;
        value = NULL;
        break;
    }
    default:
        return psrpc__error(PSRPC_MALFORMED_REQUEST, "unrecognized message compression %d",
                            (int)compression);
    }

    size_t size = sizeof(env_state);
    if (!ceil_add(&size, name_len + 1) || !ceil_add(&size, channel_len + 1) ||
        !ceil_add(&size, inflated ? 0 : value_len)) {
        free(inflated);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "message too large");
    }
    env_state *st = malloc(size);
    if (!st) {
        free(inflated);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory decoding a message");
    }
    char *s = st->strings;
    memcpy(s, name, name_len);
    s[name_len] = '\0';
    char *ch = s + name_len + 1;
    if (channel_len)
        memcpy(ch, channel, channel_len);
    ch[channel_len] = '\0';
    uint8_t *val = (uint8_t *)(ch + channel_len + 1);
    if (inflated) {
        st->inflated = inflated;
        val = inflated;
    } else {
        st->inflated = NULL;
        if (value_len)
            memcpy(val, value, value_len);
    }
    env->type_name = s;
    env->channel = ch;
    env->value = value_len ? val : empty_bytes;
    env->value_len = value_len;
    env->priv_ = st;
    return 0;
}

void psrpc__envelope_clear(psrpc__envelope *env) {
    if (!env)
        return;
    env_state *st = env->priv_;
    if (st) {
        free(st->inflated);
        free(st);
    }
    memset(env, 0, sizeof *env);
}

int psrpc__wire_peek_channel(char **key, const uint8_t *data, size_t len) {
    *key = NULL;
    if (!data && len)
        return psrpc__error(PSRPC_MALFORMED_REQUEST, "NULL message bytes");
    const uint8_t *p = data ? data : empty_bytes, *end = p + len;
    const uint8_t *channel = NULL;
    size_t channel_len = 0;
    /* internal.Channel with DiscardUnknown: only field 3 (as a string) counts,
     * every occurrence must be valid UTF-8, the last one wins. */
    while (p < end) {
        uint32_t num;
        unsigned wt;
        uint64_t v;
        const uint8_t *d = NULL;
        size_t n = 0;
        if (!read_tag(&p, end, &num, &wt) || !read_value(&p, end, num, wt, &v, &d, &n, 0))
            return psrpc__error(PSRPC_MALFORMED_REQUEST, "truncated or invalid Msg");
        if (num == 3 && wt == WT_LEN) {
            if (!psrpc__utf8_valid((const char *)d, n) || memchr(d, 0, n))
                return psrpc__error(PSRPC_MALFORMED_REQUEST, "Msg channel is not valid UTF-8");
            channel = d;
            channel_len = n;
        }
    }
    char *k = malloc(channel_len + 1);
    if (!k)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory reading a channel");
    if (channel_len)
        memcpy(k, channel, channel_len);
    k[channel_len] = '\0';
    *key = k;
    return 0;
}

/* ---- wrapping --------------------------------------------------------------- */

/* gzip of src, kept only if strictly smaller than src (Go's compress). */
static uint8_t *gzip_smaller(const uint8_t *src, size_t len, size_t *out_len) {
    if (len < 2 || len > UINT_MAX)
        return NULL;
    uint8_t *buf = malloc(len - 1);
    if (!buf)
        return NULL;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, GZIP_WINDOW_BITS, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        free(buf);
        return NULL;
    }
    zs.next_in = (Bytef *)(uintptr_t)src;
    zs.avail_in = (uInt)len;
    zs.next_out = buf;
    zs.avail_out = (uInt)(len - 1);
    int zr = deflate(&zs, Z_FINISH); /* Z_STREAM_END only if it all fit */
    size_t n = (len - 1) - zs.avail_out;
    deflateEnd(&zs);
    if (zr != Z_STREAM_END) {
        free(buf);
        return NULL;
    }
    *out_len = n;
    return buf;
}

/* Msg (section 3.3) written by hand, straight into the message buffer: the
 * fields in number order, proto3 defaults left out, as protobuf-c and Go
 * write them (the unit tests compare with envelopes printed by Go). */
static size_t varint_len(size_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, size_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static size_t len_field_size(size_t len) { return len ? 1 + varint_len(len) + len : 0; }

#define TYPE_URL_PREFIX_LEN (sizeof PSRPC__TYPE_URL_PREFIX - 1)

static size_t envelope_size(size_t type_len, size_t value_len, size_t channel_len, bool gzip) {
    return len_field_size(TYPE_URL_PREFIX_LEN + type_len) + len_field_size(value_len) +
           len_field_size(channel_len) + (gzip ? 2 : 0);
}

/* Writes the Msg fields into p (envelope_size bytes). Of field 2 only the
 * tag and length: the caller writes the value_len bytes of the value at the
 * returned pointer (NULL when value_len is 0). */
static uint8_t *envelope_write(uint8_t *p, const char *type_name, size_t type_len, size_t value_len,
                               const char *channel, size_t channel_len, bool gzip) {
    *p++ = (1 << 3) | 2;
    p = put_varint(p, TYPE_URL_PREFIX_LEN + type_len);
    memcpy(p, PSRPC__TYPE_URL_PREFIX, TYPE_URL_PREFIX_LEN);
    p += TYPE_URL_PREFIX_LEN;
    memcpy(p, type_name, type_len);
    p += type_len;
    uint8_t *value = NULL;
    if (value_len) {
        *p++ = (2 << 3) | 2;
        p = put_varint(p, value_len);
        value = p;
        p += value_len;
    }
    if (channel_len) {
        *p++ = (3 << 3) | 2;
        p = put_varint(p, channel_len);
        memcpy(p, channel, channel_len);
        p += channel_len;
    }
    if (gzip) {
        *p++ = (4 << 3) | 0;
        *p++ = INTERNAL__COMPRESSION__COMPRESSION_GZIP;
    }
    return value;
}

/* The checks and the compression decision shared by both wrap functions. */
static int wrap_check(const char *type_name, const char *channel_key, size_t *type_len,
                      size_t *channel_len) {
    PSRPC__CHECK_ARG(type_name && *type_name, "wire: type name is empty");
    *type_len = strlen(type_name);
    PSRPC__CHECK_ARG(psrpc__utf8_valid(type_name, *type_len), "wire: type name is not UTF-8");
    *channel_len = channel_key ? strlen(channel_key) : 0;
    PSRPC__CHECK_ARG(!channel_key || psrpc__utf8_valid(channel_key, *channel_len),
                     "wire: channel key is not UTF-8");
    if (*type_len > SIZE_MAX / 4 || *channel_len > SIZE_MAX / 4)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "wire: name too long");
    return PSRPC_OK;
}

int psrpc__wire_wrap(psrpc_msg **out, const char *type_name, const uint8_t *payload,
                     size_t payload_len, const char *channel_key, size_t compress_threshold) {
    *out = NULL;
    PSRPC__CHECK_ARG(payload || payload_len == 0, "wire: payload is NULL");
    size_t type_len, channel_len;
    int rc = wrap_check(type_name, channel_key, &type_len, &channel_len);
    if (rc != PSRPC_OK)
        return rc;
    if (payload_len > SIZE_MAX / 4)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "wire: payload too large");
    uint8_t *zipped = NULL;
    size_t zlen = 0;
    if (compress_threshold > 0 && payload_len >= compress_threshold &&
        (zipped = gzip_smaller(payload, payload_len, &zlen))) {
        payload = zipped;
        payload_len = zlen;
    }
    bool gzip = zipped != NULL;
    psrpc_msg *msg = psrpc__msg_alloc(envelope_size(type_len, payload_len, channel_len, gzip));
    if (!msg) {
        free(zipped);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory wrapping a message");
    }
    uint8_t *value =
        envelope_write(msg->data, type_name, type_len, payload_len, channel_key, channel_len, gzip);
    if (payload_len)
        memcpy(value, payload, payload_len);
    free(zipped);
    *out = msg;
    return PSRPC_OK;
}

/* ---- control messages --------------------------------------------------- */

static bool string_ok(const char *s) { return !s || psrpc__utf8_valid(s, strlen(s)); }

/* Every string of a generated message (nested messages and map entries
 * included) must be UTF-8, or Go drops the whole message. */
static bool message_strings_ok(const ProtobufCMessage *m, unsigned depth) {
    if (!m)
        return true;
    if (depth > MESSAGE_DEPTH_MAX)
        return false;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which;
            memcpy(&which, base + f->quantifier_offset, sizeof which);
            if (which != f->id)
                continue;
        }
        const void *member = base + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n;
            void *const *arr;
            memcpy(&n, base + f->quantifier_offset, sizeof n);
            memcpy(&arr, member, sizeof arr);
            for (size_t k = 0; k < n; k++) {
                bool ok = f->type == PROTOBUF_C_TYPE_STRING ? string_ok(arr[k])
                                                            : message_strings_ok(arr[k], depth + 1);
                if (!ok)
                    return false;
            }
        } else {
            const void *v;
            memcpy(&v, member, sizeof v);
            bool ok =
                f->type == PROTOBUF_C_TYPE_STRING ? string_ok(v) : message_strings_ok(v, depth + 1);
            if (!ok)
                return false;
        }
    }
    return true;
}

int psrpc__wire_wrap_message(psrpc_msg **out, const ProtobufCMessage *message,
                             const char *channel_key, size_t compress_threshold) {
    *out = NULL;
    PSRPC__CHECK_ARG(message && message->descriptor, "wire: message is NULL");
    if (!message_strings_ok(message, 0))
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "wire: %s has a string that is not UTF-8",
                            message->descriptor->name);
    size_t size = protobuf_c_message_get_packed_size(message);
    if (compress_threshold > 0 && size >= compress_threshold) {
        /* Packed on its own first, then compressed. */
        uint8_t *buf = malloc(size ? size : 1);
        if (!buf)
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory packing a message");
        protobuf_c_message_pack(message, buf);
        int rc = psrpc__wire_wrap(out, message->descriptor->name, buf, size, channel_key,
                                  compress_threshold);
        free(buf);
        return rc;
    }
    /* Packed in place, inside the envelope: one allocation, no copy. */
    const char *type_name = message->descriptor->name;
    size_t type_len, channel_len;
    int rc = wrap_check(type_name, channel_key, &type_len, &channel_len);
    if (rc != PSRPC_OK)
        return rc;
    psrpc_msg *msg = psrpc__msg_alloc(envelope_size(type_len, size, channel_len, false));
    if (!msg)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory wrapping a message");
    uint8_t *value =
        envelope_write(msg->data, type_name, type_len, size, channel_key, channel_len, false);
    if (size)
        protobuf_c_message_pack(message, value);
    *out = msg;
    return PSRPC_OK;
}

/* Walks the raw bytes of a message of type desc before protobuf-c sees them:
 * string fields (map keys and values included) must be UTF-8 (Go's rule) and
 * free of NUL bytes (a C string would silently lose the rest). */
static bool raw_strings_ok(const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                           const uint8_t *end, unsigned depth) {
    if (depth > MESSAGE_DEPTH_MAX)
        return false;
    while (p < end) {
        uint32_t num;
        unsigned wt;
        uint64_t v;
        const uint8_t *d = NULL;
        size_t n = 0;
        if (!read_tag(&p, end, &num, &wt) || !read_value(&p, end, num, wt, &v, &d, &n, 0))
            return false;
        if (wt != WT_LEN)
            continue;
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(desc, num);
        if (!f)
            continue;
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            if (!psrpc__utf8_valid((const char *)d, n) || memchr(d, 0, n))
                return false;
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            if (!raw_strings_ok(f->descriptor, d, d + n, depth + 1))
                return false;
        }
    }
    return true;
}

/* Unpacked control messages live in an arena: protobuf-c allocates a
 * message, its strings, repeated fields and sub-messages one block each
 * (seven or more for a Request); here they come out of one block sized from
 * the input, and psrpc__wire_free releases them at once. The arena header
 * sits right before the message, which protobuf-c allocates first (checked
 * on every unpack). The budget bounds what hostile input can make it
 * allocate. */
#define ARENA_MAGIC 0x70617265u /* "pare" */
#define ARENA_ALIGN 16

typedef struct arena_block {
    struct arena_block *next;
} arena_block;

typedef struct arena {
    uint32_t magic;
    size_t budget_left;
    char *cur, *end;     /* free space of the newest block */
    arena_block *blocks; /* blocks after the first */
    void *first;         /* the first allocation (must be the message) */
    _Alignas(ARENA_ALIGN) char data[];
} arena;

static size_t align_up(size_t n) { return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1); }

static void *arena_alloc(void *ctx, size_t size) {
    arena *a = ctx;
    size = align_up(size ? size : 1);
    if (size > a->budget_left)
        return NULL;
    if ((size_t)(a->end - a->cur) < size) {
        size_t cap = size > 4096 ? size : 4096;
        arena_block *b = malloc(sizeof(arena_block) + ARENA_ALIGN + cap);
        if (!b)
            return NULL;
        b->next = a->blocks;
        a->blocks = b;
        a->cur = (char *)b + align_up(sizeof(arena_block));
        a->end = a->cur + cap;
    }
    void *p = a->cur;
    a->cur += size;
    a->budget_left -= size;
    if (!a->first)
        a->first = p;
    return p;
}

static void arena_free_block(void *ctx, void *p) {
    (void)ctx;
    (void)p; /* released with the arena */
}

static void arena_destroy(arena *a) {
    arena_block *b = a->blocks;
    while (b) {
        arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->magic = 0;
    free(a);
}

void psrpc__wire_free(ProtobufCMessage *m) {
    if (!m)
        return;
    arena *a = (arena *)((char *)m - offsetof(arena, data));
    if (a->magic != ARENA_MAGIC) {
        /* Not from psrpc__wire_unpack: a caller bug, never freed blindly. */
        fputs("psrpc: psrpc__wire_free of a message it did not unpack\n", stderr);
        abort();
    }
    arena_destroy(a);
}

int psrpc__wire_unpack(ProtobufCMessage **out, const psrpc__envelope *env,
                       const ProtobufCMessageDescriptor *desc) {
    *out = NULL;
    if (!env || !env->type_name || !desc)
        return psrpc__error(PSRPC_MALFORMED_REQUEST, "wire: nothing to unpack");
    if (strcmp(env->type_name, desc->name) != 0)
        return psrpc__error(PSRPC_MALFORMED_REQUEST, "wire: expected %s, got %s", desc->name,
                            env->type_name);
    const uint8_t *data = env->value_len ? env->value : empty_bytes;
    if (!raw_strings_ok(desc, data, data + env->value_len, 0))
        return psrpc__error(PSRPC_MALFORMED_REQUEST, "wire: %s is malformed or not UTF-8",
                            desc->name);
    /* Room for a typical message (struct, strings, pointer arrays) in the
     * first block; more blocks only for unusual ones. */
    size_t first = align_up(desc->sizeof_message) + align_up(env->value_len + 64) * 2;
    arena *a = malloc(sizeof(arena) + first);
    if (!a)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    a->magic = ARENA_MAGIC;
    a->budget_left = UNPACK_BUDGET(env->value_len);
    a->cur = a->data;
    a->end = a->data + first;
    a->blocks = NULL;
    a->first = NULL;
    ProtobufCAllocator alloc = {arena_alloc, arena_free_block, a};
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &alloc, env->value_len, data);
    if (!m) {
        arena_destroy(a);
        return psrpc__error(PSRPC_MALFORMED_REQUEST, "wire: cannot decode %s", desc->name);
    }
    if ((void *)m != (void *)a->data) {
        /* protobuf-c allocated something before the message: psrpc__wire_free
         * could not find the arena. */
        arena_destroy(a);
        return psrpc__error(PSRPC_INTERNAL, "wire: unexpected protobuf-c allocation order");
    }
    *out = m;
    return 0;
}
