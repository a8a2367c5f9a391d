/* The psrpc envelopes (wire-protocol.md sections 2, 3 and 5.6; v0.8.2
 * compression): byte-exact encodings, Go-style decoding, the golden vectors
 * printed by the real livekit/psrpc v0.8.2, and hostile inputs (truncations,
 * bit flips, random bytes, decompression bombs). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "channel.h"
#include "common.h"
#include "golden.h"
#include "harness.h"
#include "wire.h"

/* ---- helpers --------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static bool bytes_eq_hex(const uint8_t *d, size_t n, const char *hex) {
    size_t wn;
    uint8_t *want = unhex(hex, &wn);
    bool ok = want && wn == n && memcmp(d, want, n) == 0;
    if (!ok) {
        fprintf(stderr, "    got  ");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "%02x", d[i]);
        fprintf(stderr, "\n    want %s\n", hex);
    }
    free(want);
    return ok;
}

static bool ends_with_hex(const psrpc_msg *m, const char *hex) {
    size_t wn;
    uint8_t *want = unhex(hex, &wn);
    bool ok = want && m->len >= wn && memcmp(m->data + m->len - wn, want, wn) == 0;
    free(want);
    return ok;
}

/* A tiny protobuf writer for hand-made (Go-style or hostile) inputs. */
typedef struct pb {
    uint8_t d[1 << 17];
    size_t n;
} pb;

static void pb_raw(pb *b, const void *d, size_t n) {
    if (n > sizeof b->d - b->n)
        abort(); /* a test bug */
    memcpy(b->d + b->n, d, n);
    b->n += n;
}

static void pb_uvarint(pb *b, uint64_t v) {
    if (sizeof b->d - b->n < 10)
        abort();
    while (v >= 0x80) {
        b->d[b->n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    b->d[b->n++] = (uint8_t)v;
}

static void pb_tag(pb *b, uint32_t num, unsigned wt) { pb_uvarint(b, (uint64_t)num << 3 | wt); }

static void pb_bytes(pb *b, uint32_t num, const void *d, size_t n) {
    pb_tag(b, num, 2);
    pb_uvarint(b, n);
    pb_raw(b, d, n);
}

static void pb_str(pb *b, uint32_t num, const char *s) { pb_bytes(b, num, s, strlen(s)); }

static void pb_varint(pb *b, uint32_t num, uint64_t v) {
    pb_tag(b, num, 0);
    pb_uvarint(b, v);
}

/* A Msg around an inner payload, written field by field. */
static void pb_msg(pb *b, const char *type_url, const void *value, size_t n) {
    b->n = 0;
    pb_str(b, 1, type_url);
    if (n)
        pb_bytes(b, 2, value, n);
}

static uint8_t *gzip_bytes(const void *src, size_t n, size_t *out_len) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, 9, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return NULL;
    size_t cap = deflateBound(&zs, n) + 64;
    uint8_t *out = malloc(cap);
    zs.next_in = (Bytef *)(uintptr_t)src;
    zs.avail_in = (uInt)n;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    int zr = deflate(&zs, Z_FINISH);
    *out_len = cap - zs.avail_out;
    deflateEnd(&zs);
    if (zr != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    return out;
}

static const ProtobufCMessageDescriptor *const all_descs[] = {
    &internal__msg__descriptor,
    &internal__channel__descriptor,
    &internal__request__descriptor,
    &internal__response__descriptor,
    &internal__claim_request__descriptor,
    &internal__claim_response__descriptor,
    &internal__stream__descriptor,
    &internal__stream_open__descriptor,
    &internal__stream_message__descriptor,
    &internal__stream_ack__descriptor,
    &internal__stream_close__descriptor,
    &internal__any__descriptor,
};

static const ProtobufCMessageDescriptor *desc_for(const char *name) {
    for (size_t i = 0; i < PSRPC__ARRAY_SIZE(all_descs); i++)
        if (strcmp(all_descs[i]->name, name) == 0)
            return all_descs[i];
    return NULL;
}

/* Decodes and unpacks as desc; returns the status. */
static int decode_as(const uint8_t *d, size_t n, const ProtobufCMessageDescriptor *desc,
                     ProtobufCMessage **out) {
    psrpc__envelope env;
    *out = NULL;
    int rc = psrpc__envelope_decode(&env, d, n, 1 << 20);
    if (rc != 0)
        return rc;
    rc = psrpc__wire_unpack(out, &env, desc);
    psrpc__envelope_clear(&env);
    return rc;
}

/* Feeds hostile bytes to every entry point; only crashes, leaks and sanitizer
 * reports count as failures. */
static void poke(const uint8_t *d, size_t n) {
    psrpc__envelope env;
    if (psrpc__envelope_decode(&env, d, n, 1 << 16) == 0) {
        for (size_t i = 0; i < PSRPC__ARRAY_SIZE(all_descs); i++) {
            ProtobufCMessage *m = NULL;
            if (psrpc__wire_unpack(&m, &env, all_descs[i]) == 0)
                psrpc__wire_free(m);
        }
        psrpc__envelope_clear(&env);
    }
    char *key = NULL;
    if (psrpc__wire_peek_channel(&key, d, n) == 0)
        free(key);
    /* The same bytes as the payload of every control message. */
    for (size_t i = 0; i < PSRPC__ARRAY_SIZE(all_descs); i++) {
        psrpc__envelope inner = {all_descs[i]->name, n ? d : NULL, n, "", NULL};
        ProtobufCMessage *m = NULL;
        if (psrpc__wire_unpack(&m, &inner, all_descs[i]) == 0)
            psrpc__wire_free(m);
    }
}

/* ---- section 5.6 ----------------------------------------------------------- */

#define REQ_56                                                                 \
    "0a105245515f6162636465666768696a6b6c1210434c495f6d6e6f707172737475767778" \
    "188080a8b1e39fe7cb172080bce9c7ee9fe7cb173a060a016b12017642020801"
#define TYPE_URL_REQ "0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52657175657374"

static Internal__Request__MetadataEntry md_kv = {
    PROTOBUF_C_MESSAGE_INIT(&internal__request__metadata_entry__descriptor), "k", "v"};
static Internal__Request__MetadataEntry *md_list[] = {&md_kv};
static uint8_t raw_0801[] = {0x08, 0x01};

static void request_56(Internal__Request *r) {
    internal__request__init(r);
    r->request_id = "REQ_abcdefghijkl";
    r->client_id = "CLI_mnopqrstuvwx";
    r->sent_at = 1700000000000000000;
    r->expiry = 1700000003000000000;
    r->n_metadata = 1;
    r->metadata = md_list;
    r->raw_request.data = raw_0801;
    r->raw_request.len = 2;
}

TEST(byte_level_example_5_6) {
    Internal__Request r;
    request_56(&r);
    uint8_t buf[128];
    size_t n = internal__request__pack(&r, buf);
    CHECK_EQ_INT(n, 68);
    CHECK(bytes_eq_hex(buf, n, REQ_56));

    psrpc_msg *nats = NULL, *redis = NULL;
    CHECK_EQ_INT(psrpc__wire_wrap_message(&nats, &r.base, "NormalRPC.REQ", 0), 0);
    REQUIRE(nats);
    CHECK_EQ_INT(nats->len, 123);
    CHECK(bytes_eq_hex(nats->data, nats->len,
                       TYPE_URL_REQ "1244" REQ_56 "1a0d4e6f726d616c5250432e524551"));

    CHECK_EQ_INT(psrpc__wire_wrap_message(&redis, &r.base, NULL, 0), 0);
    REQUIRE(redis);
    CHECK_EQ_INT(redis->len, 108);
    CHECK(bytes_eq_hex(redis->data, redis->len, TYPE_URL_REQ "1244" REQ_56));
    char key[PSRPC__LOCK_KEY_LEN + 1];
    psrpc__redis_lock_key(key, redis->data, redis->len);
    CHECK_EQ_STR(key, "RqBmrW1TbdJBNER66ehF2IaPNzTcJ1o6sHkrACWswGA=");

    /* The same through psrpc__wire_wrap, and "" as channel key = absent. */
    psrpc_msg *w = NULL;
    CHECK_EQ_INT(psrpc__wire_wrap(&w, "internal.Request", buf, n, "", 0), 0);
    REQUIRE(w);
    CHECK(w->len == redis->len && memcmp(w->data, redis->data, w->len) == 0);
    psrpc_msg_release(w);

    /* Decoding the NATS form. */
    psrpc__envelope env;
    CHECK_EQ_INT(psrpc__envelope_decode(&env, nats->data, nats->len, 0), 0);
    CHECK_EQ_STR(env.type_name, "internal.Request");
    CHECK_EQ_STR(env.channel, "NormalRPC.REQ");
    CHECK(env.value_len == 68 && bytes_eq_hex(env.value, env.value_len, REQ_56));
    ProtobufCMessage *m = NULL;
    CHECK_EQ_INT(psrpc__wire_unpack(&m, &env, &internal__request__descriptor), 0);
    REQUIRE(m);
    Internal__Request *got = (Internal__Request *)m;
    CHECK_EQ_STR(got->request_id, "REQ_abcdefghijkl");
    CHECK_EQ_STR(got->client_id, "CLI_mnopqrstuvwx");
    CHECK(got->sent_at == 1700000000000000000 && got->expiry == 1700000003000000000);
    CHECK(got->n_metadata == 1 && strcmp(got->metadata[0]->key, "k") == 0 &&
          strcmp(got->metadata[0]->value, "v") == 0);
    CHECK(got->raw_request.len == 2 && memcmp(got->raw_request.data, raw_0801, 2) == 0);
    CHECK(!got->multi && !got->skip_claim && got->request == NULL);
    psrpc__wire_free(m);
    psrpc__envelope_clear(&env);

    char *k = NULL;
    CHECK_EQ_INT(psrpc__wire_peek_channel(&k, nats->data, nats->len), 0);
    CHECK_EQ_STR(k, "NormalRPC.REQ");
    free(k);
    CHECK_EQ_INT(psrpc__wire_peek_channel(&k, redis->data, redis->len), 0);
    CHECK_EQ_STR(k, "");
    free(k);
    psrpc_msg_release(nats);
    psrpc_msg_release(redis);
}

/* ---- section 2.9: empty sub-messages, floats ------------------------------------ */

static psrpc_msg *wrap(const ProtobufCMessage *m) {
    psrpc_msg *out = NULL;
    int rc = psrpc__wire_wrap_message(&out, m, NULL, 0);
    CHECK_EQ_INT(rc, 0);
    return out;
}

TEST(empty_oneof_bodies_are_encoded) {
    Internal__Stream s = INTERNAL__STREAM__INIT;
    s.stream_id = "STR_abcdefghijkl";
    s.request_id = "REQ_abcdefghijkl";
    s.sent_at = 1;
    s.expiry = 2;

    Internal__StreamAck ack = INTERNAL__STREAM_ACK__INIT;
    s.body_case = INTERNAL__STREAM__BODY_ACK;
    s.ack = &ack;
    psrpc_msg *m = wrap(&s.base);
    REQUIRE(m);
    CHECK(ends_with_hex(m, "4200"));
    ProtobufCMessage *back = NULL;
    CHECK_EQ_INT(decode_as(m->data, m->len, &internal__stream__descriptor, &back), 0);
    CHECK(back && ((Internal__Stream *)back)->body_case == INTERNAL__STREAM__BODY_ACK);
    psrpc__wire_free(back);
    psrpc_msg_release(m);

    Internal__StreamClose close = INTERNAL__STREAM_CLOSE__INIT;
    s.body_case = INTERNAL__STREAM__BODY_CLOSE;
    s.close = &close;
    m = wrap(&s.base);
    REQUIRE(m);
    CHECK(ends_with_hex(m, "4a00"));
    psrpc_msg_release(m);

    Internal__StreamMessage msg = INTERNAL__STREAM_MESSAGE__INIT;
    s.body_case = INTERNAL__STREAM__BODY_MESSAGE;
    s.message = &msg;
    m = wrap(&s.base);
    REQUIRE(m);
    CHECK(ends_with_hex(m, "3a00"));
    psrpc_msg_release(m);

    Internal__StreamOpen open = INTERNAL__STREAM_OPEN__INIT;
    s.body_case = INTERNAL__STREAM__BODY_OPEN;
    s.open = &open;
    m = wrap(&s.base);
    REQUIRE(m);
    CHECK(ends_with_hex(m, "3200"));
    psrpc_msg_release(m);

    /* The whole ack, byte for byte. */
    s.body_case = INTERNAL__STREAM__BODY_ACK;
    s.ack = &ack;
    uint8_t buf[64];
    size_t n = internal__stream__pack(&s, buf);
    CHECK(bytes_eq_hex(buf, n,
                       "0a105354525f6162636465666768696a6b6c12105245515f6162636465666768696a6b6c"
                       "180120024200"));
}

TEST(claim_request_affinity_float) {
    Internal__ClaimRequest c = INTERNAL__CLAIM_REQUEST__INIT;
    c.request_id = "REQ_abcdefghijkl";
    c.server_id = "SRV_x9Y8z7W6v5U4";
    c.affinity = 1.0f;
    psrpc_msg *m = wrap(&c.base);
    REQUIRE(m);
    CHECK(ends_with_hex(m, "1d0000803f"));
    psrpc_msg_release(m);
    c.handling = 1;
    m = wrap(&c.base);
    REQUIRE(m);
    CHECK(ends_with_hex(m, "1d0000803f2001"));
    ProtobufCMessage *back = NULL;
    CHECK_EQ_INT(decode_as(m->data, m->len, &internal__claim_request__descriptor, &back), 0);
    CHECK(back && ((Internal__ClaimRequest *)back)->affinity == 1.0f &&
          ((Internal__ClaimRequest *)back)->handling);
    psrpc__wire_free(back);
    psrpc_msg_release(m);
}

/* ---- golden vectors from the real v0.8.2 ------------------------------------- */

TEST(golden_envelopes_v0_8_2) {
    FILE *fp = golden_open();
    REQUIRE(fp);
    golden_line l = {0};
    int envelopes = 0, peeks = 0;
    while (golden_next(fp, &l)) {
        if (strcmp(l.f[0], "envelope") == 0 && l.n == 4) {
            const char *label = l.f[1];
            size_t inner_n, outer_n;
            uint8_t *inner = unhex(l.f[2][0] ? l.f[2] : "-", &inner_n);
            uint8_t *outer = unhex(l.f[3], &outer_n);
            REQUIRE(inner && outer);
            psrpc__envelope env;
            int rc = psrpc__envelope_decode(&env, outer, outer_n, 0);
            CHECK_EQ_INT(rc, 0);
            if (rc != 0) {
                fprintf(stderr, "  %s: decode failed\n", label);
                free(inner);
                free(outer);
                continue;
            }
            CHECK(env.value_len == inner_n && memcmp(env.value, inner, inner_n) == 0);
            const ProtobufCMessageDescriptor *desc = desc_for(env.type_name);
            CHECK(desc != NULL);
            ProtobufCMessage *m = NULL;
            if (desc)
                CHECK_EQ_INT(psrpc__wire_unpack(&m, &env, desc), 0);
            if (m) {
                /* protobuf-c packs exactly what Go marshalled. */
                size_t n = protobuf_c_message_get_packed_size(m);
                uint8_t *re = malloc(n + 1);
                protobuf_c_message_pack(m, re);
                CHECK(n == inner_n && memcmp(re, inner, n) == 0);
                free(re);
                /* And the envelope too, unless Go gzipped it. */
                bool go_zipped = strcmp(label, "request_gzip") == 0;
                size_t threshold = strstr(label, "not_smaller") ? 1
                                   : strstr(label, "gzip")      ? 1024
                                                                : 0;
                psrpc_msg *w = NULL;
                CHECK_EQ_INT(
                    psrpc__wire_wrap_message(&w, m, env.channel[0] ? env.channel : NULL, threshold),
                    0);
                if (w && !go_zipped) {
                    bool same = w->len == outer_n && memcmp(w->data, outer, outer_n) == 0;
                    if (!same)
                        fprintf(stderr, "  %s: re-encoding differs\n", label);
                    CHECK(same);
                } else if (w) {
                    CHECK(ends_with_hex(w, "2001"));
                    psrpc__envelope again;
                    CHECK_EQ_INT(psrpc__envelope_decode(&again, w->data, w->len, inner_n), 0);
                    CHECK(again.value_len == inner_n && memcmp(again.value, inner, inner_n) == 0);
                    CHECK(w->len < outer_n + 64); /* compressed on our side too */
                    psrpc__envelope_clear(&again);
                }
                if (w)
                    psrpc_msg_release(w);
                psrpc__wire_free(m);
            }
            if (strcmp(label, "request_gzip") == 0) {
                /* The cap applies to the decompressed size. */
                psrpc__envelope capped;
                CHECK_EQ_INT(psrpc__envelope_decode(&capped, outer, outer_n, inner_n), 0);
                psrpc__envelope_clear(&capped);
                CHECK_EQ_INT(psrpc__envelope_decode(&capped, outer, outer_n, inner_n - 1),
                             PSRPC_RESOURCE_EXHAUSTED);
            }
            psrpc__envelope_clear(&env);

            /* Every truncation decodes to an error or a value, never a crash. */
            for (size_t cut = 0; cut < outer_n; cut++)
                poke(outer, cut);
            for (size_t cut = 0; cut < inner_n; cut++)
                poke(inner, cut);
            free(inner);
            free(outer);
            envelopes++;
        } else if (strcmp(l.f[0], "peek") == 0 && l.n == 3) {
            size_t n;
            uint8_t *d = unhex(l.f[1], &n);
            char *want = unhex_str(l.f[2]);
            char *got = NULL;
            CHECK_EQ_INT(psrpc__wire_peek_channel(&got, d, n), 0);
            CHECK_EQ_STR(got, want);
            free(got);
            free(want);
            free(d);
            peeks++;
        }
    }
    free(l.buf);
    fclose(fp);
    CHECK(envelopes >= 18);
    CHECK_EQ_INT(peeks, 2);
}

/* ---- Go-style encodings (section 2.9, G2) ------------------------------------- */

TEST(decode_absent_defaults_and_map_entries) {
    pb in = {0}, out;
    pb_str(&in, 1, "r");
    /* Map entries: empty, key only, value only, both (Go writes both). */
    pb_raw(&in, "\x3a\x00", 2);
    pb_raw(&in, "\x3a\x03\x0a\x01k", 5);
    pb_raw(&in, "\x3a\x03\x12\x01v", 5);
    pb_raw(&in,
           "\x3a\x06\x0a\x01"
           "a\x12\x01"
           "b",
           8);
    pb_msg(&out, "type.googleapis.com/internal.Request", in.d, in.n);
    ProtobufCMessage *m = NULL;
    CHECK_EQ_INT(decode_as(out.d, out.n, &internal__request__descriptor, &m), 0);
    REQUIRE(m);
    Internal__Request *r = (Internal__Request *)m;
    CHECK_EQ_STR(r->request_id, "r");
    CHECK_EQ_STR(r->client_id, "");
    CHECK(r->sent_at == 0 && r->expiry == 0 && !r->multi && r->raw_request.len == 0);
    REQUIRE(r->n_metadata == 4);
    CHECK(!strcmp(r->metadata[0]->key, "") && !strcmp(r->metadata[0]->value, ""));
    CHECK(!strcmp(r->metadata[1]->key, "k") && !strcmp(r->metadata[1]->value, ""));
    CHECK(!strcmp(r->metadata[2]->key, "") && !strcmp(r->metadata[2]->value, "v"));
    CHECK(!strcmp(r->metadata[3]->key, "a") && !strcmp(r->metadata[3]->value, "b"));
    psrpc__wire_free(m);

    /* A Msg with no value at all is an empty message of that type. */
    pb_msg(&out, "type.googleapis.com/internal.StreamClose", NULL, 0);
    CHECK_EQ_INT(decode_as(out.d, out.n, &internal__stream_close__descriptor, &m), 0);
    CHECK(m && !strcmp(((Internal__StreamClose *)m)->code, ""));
    psrpc__wire_free(m);
}

TEST(decode_unknown_fields) {
    pb in = {0}, out = {0};
    pb_str(&in, 1, "r");
    pb_varint(&in, 15, 5);
    pb_raw(&in, "\xa5\x01\x01\x02\x03\x04", 6);                  /* 20: fixed32 */
    pb_raw(&in, "\xa9\x01\x01\x02\x03\x04\x05\x06\x07\x08", 10); /* 21: fixed64 */
    pb_str(&in, 22, "hi");
    pb_varint(&in, 9, 1); /* the reserved number */

    /* Outer: value before type, unknown fields, a group, field 3 with a
     * wrong wire type and an explicit compression NONE. */
    pb_bytes(&out, 2, in.d, in.n);
    pb_varint(&out, 9, 7);
    pb_varint(&out, 3, 1);
    pb_raw(&out, "\x53\x08\x01\x5b\x5c\x54", 6); /* group 10 { 1: 1, group 11 {} } */
    pb_raw(&out, "\x35\x00\x00\x00\x00", 5);     /* 6: fixed32 */
    pb_str(&out, 1, "type.googleapis.com/internal.Request");
    pb_varint(&out, 4, 0);
    psrpc__envelope env;
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), 0);
    CHECK_EQ_STR(env.type_name, "internal.Request");
    CHECK_EQ_STR(env.channel, "");
    ProtobufCMessage *m = NULL;
    CHECK_EQ_INT(psrpc__wire_unpack(&m, &env, &internal__request__descriptor), 0);
    CHECK(m && !strcmp(((Internal__Request *)m)->request_id, "r"));
    if (m)
        psrpc__wire_free(m);
    psrpc__envelope_clear(&env);

    /* Last occurrence wins: type_url, value and channel. */
    out.n = 0;
    pb_str(&out, 1, "type.googleapis.com/internal.Response");
    pb_str(&out, 3, "first");
    pb_bytes(&out, 2, "\x0a\x01x", 3);
    pb_str(&out, 1, "type.googleapis.com/internal.Request");
    pb_bytes(&out, 2, "\x0a\x01y", 3);
    pb_str(&out, 3, "second");
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), 0);
    CHECK_EQ_STR(env.type_name, "internal.Request");
    CHECK_EQ_STR(env.channel, "second");
    CHECK(env.value_len == 3 && env.value[2] == 'y');
    psrpc__envelope_clear(&env);
    char *k = NULL;
    CHECK_EQ_INT(psrpc__wire_peek_channel(&k, out.d, out.n), 0);
    CHECK_EQ_STR(k, "second");
    free(k);

    /* Oneof: the last body wins. */
    out.n = 0;
    pb_str(&out, 1, "s");
    pb_raw(&out, "\x42\x00\x4a\x02\x12\x00", 6);
    psrpc__envelope inner = {"internal.Stream", out.d, out.n, "", NULL};
    CHECK_EQ_INT(psrpc__wire_unpack(&m, &inner, &internal__stream__descriptor), 0);
    CHECK(m && ((Internal__Stream *)m)->body_case == INTERNAL__STREAM__BODY_CLOSE);
    if (m)
        psrpc__wire_free(m);
}

TEST(type_url_last_slash_rule) {
    static const char *const ok[] = {"type.googleapis.com/internal.Request", "x/internal.Request",
                                     "internal.Request", "a/b/c/internal.Request",
                                     "/internal.Request"};
    for (size_t i = 0; i < PSRPC__ARRAY_SIZE(ok); i++) {
        pb out;
        pb_msg(&out, ok[i], "\x0a\x01r", 3);
        ProtobufCMessage *m = NULL;
        CHECK_EQ_INT(decode_as(out.d, out.n, &internal__request__descriptor, &m), 0);
        if (m)
            psrpc__wire_free(m);
    }
    static const char *const bad[] = {"type.googleapis.com/", "", "x/"};
    for (size_t i = 0; i < PSRPC__ARRAY_SIZE(bad); i++) {
        pb out;
        pb_msg(&out, bad[i], "\x0a\x01r", 3);
        psrpc__envelope env;
        CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), PSRPC_MALFORMED_REQUEST);
    }
    /* Well-formed but of another type than expected. */
    pb out;
    pb_msg(&out, "type.googleapis.com/internal.Request", "\x0a\x01r", 3);
    ProtobufCMessage *m = NULL;
    CHECK_EQ_INT(decode_as(out.d, out.n, &internal__response__descriptor, &m),
                 PSRPC_MALFORMED_REQUEST);
    CHECK(m == NULL);
    pb_msg(&out, "type.googleapis.com/internal.RequestX", "\x0a\x01r", 3);
    CHECK_EQ_INT(decode_as(out.d, out.n, &internal__request__descriptor, &m),
                 PSRPC_MALFORMED_REQUEST);
}

/* ---- UTF-8 ------------------------------------------------------------------ */

static int decode_inner(const char *type, const pb *in, const ProtobufCMessageDescriptor *desc) {
    pb out;
    pb_msg(&out, type, in->d, in->n);
    ProtobufCMessage *m = NULL;
    int rc = decode_as(out.d, out.n, desc, &m);
    if (m)
        psrpc__wire_free(m);
    return rc;
}

TEST(invalid_utf8_rejected_on_decode) {
    const int MAL = PSRPC_MALFORMED_REQUEST;
    pb out = {0};
    psrpc__envelope env;
    char *k = NULL;

    pb_msg(&out, "type.googleapis.com/internal.Req\xff", "", 0);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), MAL);
    pb_msg(&out, "type.googleapis.com/internal.Request", "", 0);
    pb_str(&out, 3, "Normal\xed\xa0\x80");
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), MAL);
    CHECK_EQ_INT(psrpc__wire_peek_channel(&k, out.d, out.n), MAL);
    CHECK(k == NULL);
    /* An invalid earlier occurrence fails even if a later one is valid. */
    pb_str(&out, 3, "ok");
    CHECK_EQ_INT(psrpc__wire_peek_channel(&k, out.d, out.n), MAL);

    pb in = {0};
    pb_str(&in, 1, "REQ_\xe2\x82");
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Request", &in, &internal__request__descriptor),
        MAL);
    in.n = 0;
    pb_bytes(&in, 1, "REQ_a\0b", 7); /* NUL: valid UTF-8 but not a C string */
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Request", &in, &internal__request__descriptor),
        MAL);
    in.n = 0;
    pb_raw(&in, "\x3a\x03\x0a\x01\xff", 5); /* metadata key */
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Request", &in, &internal__request__descriptor),
        MAL);
    in.n = 0;
    pb_raw(&in, "\x3a\x06\x0a\x01k\x12\x01\xc0", 8); /* metadata value */
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Request", &in, &internal__request__descriptor),
        MAL);
    in.n = 0;
    pb_raw(&in, "\x32\x03\x0a\x01\x80", 5); /* Stream.open.node_id */
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Stream", &in, &internal__stream__descriptor),
        MAL);
    in.n = 0;
    pb_raw(&in, "\x32\x05\x3a\x03\x12\x01\xff", 7); /* Stream.open.metadata value */
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Stream", &in, &internal__stream__descriptor),
        MAL);
    in.n = 0;
    pb_raw(&in, "\x42\x03\x0a\x01\xff", 5); /* Response.error_details[0].type_url */
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Response", &in, &internal__response__descriptor),
        MAL);
    in.n = 0;
    pb_raw(&in, "\x2a\x02\xc3\x28", 4); /* Response.error */
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Response", &in, &internal__response__descriptor),
        MAL);
    in.n = 0;
    pb_raw(&in, "\x4a\x04\x12\x02\xed\xbf", 6); /* Stream.close.code */
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Stream", &in, &internal__stream__descriptor),
        MAL);
    /* Bytes fields are not strings: anything goes. */
    in.n = 0;
    pb_raw(&in, "\x42\x02\xff\xfe", 4);
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Request", &in, &internal__request__descriptor),
        0);
    /* Valid multi-byte text passes. */
    in.n = 0;
    pb_str(&in, 5, "r\xc3\xa9gion \xf0\x9f\x9a\x80 \xe8\xbd\xaf");
    CHECK_EQ_INT(
        decode_inner("type.googleapis.com/internal.Response", &in, &internal__response__descriptor),
        0);
}

TEST(invalid_utf8_rejected_on_encode) {
    psrpc_msg *m = NULL;
    Internal__Request r;
    request_56(&r);
    Internal__Request__MetadataEntry bad = INTERNAL__REQUEST__METADATA_ENTRY__INIT;
    bad.key = "k";
    bad.value = "\xc3";
    Internal__Request__MetadataEntry *list[] = {&md_kv, &bad};
    r.metadata = list;
    r.n_metadata = 2;
    CHECK_EQ_INT(psrpc__wire_wrap_message(&m, &r.base, NULL, 0), PSRPC_INVALID_ARGUMENT);
    CHECK(m == NULL);
    r.n_metadata = 1;
    r.client_id = "\xed\xa0\x80";
    CHECK_EQ_INT(psrpc__wire_wrap_message(&m, &r.base, NULL, 0), PSRPC_INVALID_ARGUMENT);

    Internal__Any any = INTERNAL__ANY__INIT;
    any.type_url = "type.googleapis.com/\xff";
    Internal__Any *details[] = {&any};
    Internal__Response resp = INTERNAL__RESPONSE__INIT;
    resp.error = "x";
    resp.n_error_details = 1;
    resp.error_details = details;
    CHECK_EQ_INT(psrpc__wire_wrap_message(&m, &resp.base, NULL, 0), PSRPC_INVALID_ARGUMENT);
    any.type_url = "type.googleapis.com/google.protobuf.StringValue";
    CHECK_EQ_INT(psrpc__wire_wrap_message(&m, &resp.base, NULL, 0), 0);
    psrpc_msg_release(m);
    m = NULL;

    Internal__StreamOpen open = INTERNAL__STREAM_OPEN__INIT;
    open.node_id = "CLI_\x80";
    Internal__Stream s = INTERNAL__STREAM__INIT;
    s.body_case = INTERNAL__STREAM__BODY_OPEN;
    s.open = &open;
    CHECK_EQ_INT(psrpc__wire_wrap_message(&m, &s.base, NULL, 0), PSRPC_INVALID_ARGUMENT);
    /* A string in a oneof member that is not set is not looked at. */
    s.body_case = INTERNAL__STREAM__BODY__NOT_SET;
    CHECK_EQ_INT(psrpc__wire_wrap_message(&m, &s.base, NULL, 0), 0);
    psrpc_msg_release(m);
    m = NULL;

    CHECK_EQ_INT(psrpc__wire_wrap(&m, "internal.Req\xff", NULL, 0, NULL, 0),
                 PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc__wire_wrap(&m, "", NULL, 0, NULL, 0), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc__wire_wrap(&m, "internal.Request", NULL, 0, "M.\xe2\x82", 0),
                 PSRPC_INVALID_ARGUMENT);
    CHECK(m == NULL);
}

/* ---- subscriptions: arbitrary payload types ------------------------------------ */

TEST(wrap_application_payload) {
    psrpc_msg *m = NULL;
    CHECK_EQ_INT(psrpc__wire_wrap(&m, "psrpc.internal.test.customservice.MyUpdate",
                                  (const uint8_t *)"\x08\x2a", 2, "ProcessUpdate.REQ", 0),
                 0);
    REQUIRE(m);
    psrpc__envelope env;
    CHECK_EQ_INT(psrpc__envelope_decode(&env, m->data, m->len, 0), 0);
    CHECK_EQ_STR(env.type_name, "psrpc.internal.test.customservice.MyUpdate");
    CHECK_EQ_STR(env.channel, "ProcessUpdate.REQ");
    CHECK(env.value_len == 2 && env.value[1] == 0x2a);
    psrpc__envelope_clear(&env);
    psrpc__envelope_clear(&env); /* idempotent */
    psrpc_msg_release(m);

    /* An empty payload travels as an absent value. */
    CHECK_EQ_INT(psrpc__wire_wrap(&m, "google.protobuf.Empty", NULL, 0, NULL, 1), 0);
    REQUIRE(m);
    CHECK(bytes_eq_hex(m->data, m->len,
                       "0a29747970652e676f6f676c65617069732e636f6d2f676f6f676c652e70726f746f"
                       "6275662e456d707479"));
    CHECK_EQ_INT(psrpc__envelope_decode(&env, m->data, m->len, 0), 0);
    CHECK(env.value != NULL && env.value_len == 0);
    psrpc__envelope_clear(&env);
    psrpc_msg_release(m);
}

/* ---- size limits and compression (v0.8.x) -------------------------------------- */

TEST(max_value_size_uncompressed) {
    pb out;
    uint8_t big[1000];
    memset(big, 'x', sizeof big);
    pb_msg(&out, "x/y", big, sizeof big);
    psrpc__envelope env;
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 1000), 0);
    psrpc__envelope_clear(&env);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 999), PSRPC_RESOURCE_EXHAUSTED);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), 0); /* 0: no limit */
    psrpc__envelope_clear(&env);
}

TEST(gzip_round_trip_and_threshold) {
    size_t n = 10000;
    uint8_t *payload = malloc(n);
    for (size_t i = 0; i < n; i++)
        payload[i] = (uint8_t)("psrpc compresses well "[i % 22]);
    psrpc_msg *plain = NULL, *zipped = NULL;
    CHECK_EQ_INT(psrpc__wire_wrap(&plain, "x.Y", payload, n, "K", 0), 0);
    CHECK_EQ_INT(psrpc__wire_wrap(&zipped, "x.Y", payload, n, "K", 1024), 0);
    REQUIRE(plain && zipped);
    CHECK(zipped->len < plain->len / 10);
    CHECK(ends_with_hex(zipped, "2001")); /* compression = GZIP, after channel */
    CHECK(!ends_with_hex(plain, "2001"));
    psrpc__envelope env;
    CHECK_EQ_INT(psrpc__envelope_decode(&env, zipped->data, zipped->len, n), 0);
    CHECK_EQ_STR(env.type_name, "x.Y");
    CHECK_EQ_STR(env.channel, "K");
    CHECK(env.value_len == n && memcmp(env.value, payload, n) == 0);
    psrpc__envelope_clear(&env);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, zipped->data, zipped->len, n - 1),
                 PSRPC_RESOURCE_EXHAUSTED);
    char *k = NULL;
    CHECK_EQ_INT(psrpc__wire_peek_channel(&k, zipped->data, zipped->len), 0);
    CHECK_EQ_STR(k, "K");
    free(k);
    psrpc_msg_release(zipped);

    /* Below the threshold: not compressed. At it: compressed (Go: len < t skips). */
    CHECK_EQ_INT(psrpc__wire_wrap(&zipped, "x.Y", payload, n, "K", n + 1), 0);
    CHECK(zipped->len == plain->len && memcmp(zipped->data, plain->data, plain->len) == 0);
    psrpc_msg_release(zipped);
    CHECK_EQ_INT(psrpc__wire_wrap(&zipped, "x.Y", payload, n, "K", n), 0);
    CHECK(ends_with_hex(zipped, "2001"));
    psrpc_msg_release(zipped);
    psrpc_msg_release(plain);

    /* Incompressible: gzip would grow it, so it is sent plain. */
    for (size_t i = 0; i < n; i++)
        payload[i] = (uint8_t)rng();
    CHECK_EQ_INT(psrpc__wire_wrap(&zipped, "x.Y", payload, n, NULL, 1), 0);
    CHECK(!ends_with_hex(zipped, "2001"));
    CHECK_EQ_INT(psrpc__envelope_decode(&env, zipped->data, zipped->len, n), 0);
    CHECK(env.value_len == n && memcmp(env.value, payload, n) == 0);
    psrpc__envelope_clear(&env);
    psrpc_msg_release(zipped);

    /* A tiny payload never compresses. */
    CHECK_EQ_INT(psrpc__wire_wrap(&zipped, "x.Y", (const uint8_t *)"a", 1, NULL, 1), 0);
    CHECK(!ends_with_hex(zipped, "2001"));
    psrpc_msg_release(zipped);
    free(payload);
}

static void gz_msg(pb *out, const void *z, size_t zn, uint64_t compression) {
    pb_msg(out, "x/y", z, zn);
    pb_varint(out, 4, compression);
}

TEST(gzip_hostile_inputs) {
    pb out;
    psrpc__envelope env;
    const int MAL = PSRPC_MALFORMED_REQUEST;
    size_t an, bn;
    uint8_t *a = gzip_bytes("hello ", 6, &an), *b = gzip_bytes("world", 5, &bn);
    REQUIRE(a && b);

    /* Concatenated members (Go's reader is multistream). */
    uint8_t two[256];
    memcpy(two, a, an);
    memcpy(two + an, b, bn);
    gz_msg(&out, two, an + bn, 1);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), 0);
    CHECK(env.value_len == 11 && memcmp(env.value, "hello world", 11) == 0);
    psrpc__envelope_clear(&env);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 10), PSRPC_RESOURCE_EXHAUSTED);

    /* Trailing garbage, truncation, a bad CRC, a zlib (not gzip) stream. */
    memcpy(two + an, "junk", 4);
    gz_msg(&out, two, an + 4, 1);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), MAL);
    for (size_t cut = 0; cut < an; cut++) {
        gz_msg(&out, a, cut, 1);
        CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), MAL);
    }
    memcpy(two, a, an);
    two[an - 5] ^= 1; /* the CRC32 */
    gz_msg(&out, two, an, 1);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), MAL);
    uint8_t zl[64];
    uLongf zln = sizeof zl;
    compress(zl, &zln, (const Bytef *)"hello", 5);
    gz_msg(&out, zl, zln, 1);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), MAL);

    /* Unknown compression values; int32 truncation of the enum like Go. */
    gz_msg(&out, "plain", 5, 2);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), MAL);
    gz_msg(&out, "plain", 5, UINT64_MAX);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), MAL);
    gz_msg(&out, "plain", 5, (uint64_t)1 << 32);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), 0);
    CHECK(env.value_len == 5);
    psrpc__envelope_clear(&env);
    gz_msg(&out, a, an, ((uint64_t)1 << 32) + 1);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), 0);
    CHECK(env.value_len == 6 && memcmp(env.value, "hello ", 6) == 0);
    psrpc__envelope_clear(&env);

    /* GZIP with no value at all. */
    gz_msg(&out, NULL, 0, 1);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 0), MAL);

    /* A gzip of nothing is an empty value. */
    size_t en;
    uint8_t *e = gzip_bytes("", 0, &en);
    gz_msg(&out, e, en, 1);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 1), 0);
    CHECK(env.value_len == 0 && env.value != NULL);
    psrpc__envelope_clear(&env);
    free(e);
    free(a);
    free(b);
}

TEST(decompression_bomb_capped) {
    size_t n = 32u << 20; /* 32 MiB of zeros: about 32 KiB compressed */
    uint8_t *zeros = calloc(1, n);
    size_t zn;
    uint8_t *z = gzip_bytes(zeros, n, &zn);
    free(zeros);
    REQUIRE(z);
    CHECK(zn < 64 * 1024);
    static pb out;
    gz_msg(&out, z, zn, 1);
    psrpc__envelope env;
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, 1u << 20), PSRPC_RESOURCE_EXHAUSTED);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, n - 1), PSRPC_RESOURCE_EXHAUSTED);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, out.d, out.n, n), 0);
    CHECK(env.value_len == n && env.value[n - 1] == 0);
    psrpc__envelope_clear(&env);
    free(z);
}

/* ---- malformed framing ------------------------------------------------------- */

TEST(malformed_framing) {
    const int MAL = PSRPC_MALFORMED_REQUEST;
    static const struct {
        const char *hex;
        int want;
    } cases[] = {
        {"", MAL},                                 /* no type */
        {"0a", MAL},                               /* truncated length */
        {"0a05616263", MAL},                       /* length past the end */
        {"0a0378", MAL},                           /* truncated string */
        {"00", MAL},                               /* field number 0 */
        {"0f00", MAL},                             /* wire type 7 */
        {"0e00", MAL},                             /* wire type 6 */
        {"0c", MAL},                               /* stray end group */
        {"0b", MAL},                               /* unterminated group */
        {"0b14", MAL},                             /* group closed by another number */
        {"20ffffffffffffffffff02", MAL},           /* 10th varint byte > 1 */
        {"20ffffffffffffffffffff01", MAL},         /* 11-byte varint */
        {"f8ffffff7f00", MAL},                     /* a field number above 2^29 - 1 */
        {"0a03782f7920ffffffffffffffffff01", MAL}, /* varint max: enum truncates to -1 */
        {"0a03782f790d00000000", 0},               /* fixed32 unknown */
        {"0a03782f790900000000000000", MAL},       /* truncated fixed64 */
        {"0a03782f79fdffffff0f00000000", 0},       /* field 2^29-1, fixed32 */
        {"0a03782f79858080801000000000", MAL},     /* field 2^29 */
    };
    for (size_t i = 0; i < PSRPC__ARRAY_SIZE(cases); i++) {
        size_t n;
        uint8_t *d = unhex(cases[i].hex, &n);
        REQUIRE(d);
        psrpc__envelope env;
        int rc = psrpc__envelope_decode(&env, d, n, 0);
        if (rc != cases[i].want) {
            fprintf(stderr, "  case %zu (%s): %d\n", i, cases[i].hex, rc);
            CHECK(false);
        }
        if (rc == 0)
            psrpc__envelope_clear(&env);
        poke(d, n);
        free(d);
    }

    /* Deeply nested unknown groups are refused, not recursed into forever. */
    static pb deep;
    deep.n = 0;
    pb_str(&deep, 1, "x/y");
    for (int i = 0; i < 5000; i++)
        pb_raw(&deep, "\x53", 1);
    for (int i = 0; i < 5000; i++)
        pb_raw(&deep, "\x54", 1);
    psrpc__envelope env;
    CHECK_EQ_INT(psrpc__envelope_decode(&env, deep.d, deep.n, 0), MAL);
    char *k = NULL;
    CHECK_EQ_INT(psrpc__wire_peek_channel(&k, deep.d, deep.n), MAL);
    poke(deep.d, deep.n);
    /* A few levels are fine. */
    deep.n = 0;
    pb_str(&deep, 1, "x/y");
    pb_raw(&deep, "\x53\x53\x54\x54", 4);
    CHECK_EQ_INT(psrpc__envelope_decode(&env, deep.d, deep.n, 0), 0);
    psrpc__envelope_clear(&env);

    /* Peek on empty input and on a Msg without channel. */
    CHECK_EQ_INT(psrpc__wire_peek_channel(&k, NULL, 0), 0);
    CHECK_EQ_STR(k, "");
    free(k);
    CHECK_EQ_INT(psrpc__wire_peek_channel(&k, (const uint8_t *)"\x1a\x05", 2), MAL);
    CHECK(k == NULL);
    CHECK_EQ_INT(psrpc__wire_peek_channel(&k, (const uint8_t *)"\x18\x05\x1a\x01q", 5), 0);
    CHECK_EQ_STR(k, "q"); /* field 3 as a varint is an unknown field, skipped */
    free(k);
}

/* The allocation budget of unpacking must not refuse legitimate dense input:
 * tens of thousands of empty map entries or unknown fields. */
TEST(unpack_budget_allows_dense_inputs) {
    static pb in;
    in.n = 0;
    for (int i = 0; i < 30000; i++)
        pb_raw(&in, "\x3a\x00", 2);
    psrpc__envelope env = {"internal.Request", in.d, in.n, "", NULL};
    ProtobufCMessage *m = NULL;
    CHECK_EQ_INT(psrpc__wire_unpack(&m, &env, &internal__request__descriptor), 0);
    CHECK(m && ((Internal__Request *)m)->n_metadata == 30000);
    if (m)
        psrpc__wire_free(m);

    in.n = 0;
    for (int i = 0; i < 30000; i++)
        pb_raw(&in, "\x78\x00", 2); /* unknown field 15 */
    env.value_len = in.n;
    CHECK_EQ_INT(psrpc__wire_unpack(&m, &env, &internal__request__descriptor), 0);
    if (m)
        psrpc__wire_free(m);

    /* A singular message field and oneof bodies repeated: merged / replaced. */
    in.n = 0;
    for (int i = 0; i < 30000; i++)
        pb_raw(&in, "\x22\x00", 2);
    env.type_name = "internal.Response";
    env.value_len = in.n;
    CHECK_EQ_INT(psrpc__wire_unpack(&m, &env, &internal__response__descriptor), 0);
    if (m)
        psrpc__wire_free(m);
    in.n = 0;
    for (int i = 0; i < 20000; i++)
        pb_raw(&in, "\x42\x00\x4a\x00", 4);
    env.type_name = "internal.Stream";
    env.value_len = in.n;
    CHECK_EQ_INT(psrpc__wire_unpack(&m, &env, &internal__stream__descriptor), 0);
    CHECK(m && ((Internal__Stream *)m)->body_case == INTERNAL__STREAM__BODY_CLOSE);
    if (m)
        psrpc__wire_free(m);

    in.n = 0;
    pb_str(&in, 1, "s");
    pb_tag(&in, 6, 2); /* Stream.open with 10000 metadata entries */
    pb_uvarint(&in, 20000);
    for (int i = 0; i < 10000; i++)
        pb_raw(&in, "\x3a\x00", 2);
    env.type_name = "internal.Stream";
    env.value_len = in.n;
    CHECK_EQ_INT(psrpc__wire_unpack(&m, &env, &internal__stream__descriptor), 0);
    CHECK(m && ((Internal__Stream *)m)->open->n_metadata == 10000);
    if (m)
        psrpc__wire_free(m);
}

/* ---- fuzz-ish ---------------------------------------------------------------- */

TEST(bit_flips_and_random_bytes) {
    /* Seeds: the golden envelopes plus a few built here. */
    uint8_t *seeds[64];
    size_t seed_len[64];
    size_t ns = 0;
    FILE *fp = golden_open();
    REQUIRE(fp);
    golden_line l = {0};
    while (golden_next(fp, &l) && ns < 48) {
        if (strcmp(l.f[0], "envelope") == 0 && l.n == 4) {
            seeds[ns] = unhex(l.f[3], &seed_len[ns]);
            ns++;
            if (l.f[2][0] && ns < 48) {
                seeds[ns] = unhex(l.f[2], &seed_len[ns]);
                ns++;
            }
        }
    }
    free(l.buf);
    fclose(fp);
    REQUIRE(ns > 10);

    uint8_t buf[4096];
    for (int iter = 0; iter < 6000; iter++) {
        size_t s = rng() % ns, n = seed_len[s];
        if (n > sizeof buf)
            n = sizeof buf;
        memcpy(buf, seeds[s], n);
        int flips = 1 + (int)(rng() % 4);
        for (int f = 0; f < flips && n; f++) {
            size_t at = rng() % n;
            switch (rng() % 4) {
            case 0:
                buf[at] ^= (uint8_t)(1u << (rng() % 8));
                break;
            case 1:
                buf[at] = (uint8_t)rng();
                break;
            case 2:
                buf[at] = (uint8_t)(0x80 | rng()); /* varint continuation / non-ASCII */
                break;
            default:
                n = at; /* truncate */
                break;
            }
        }
        poke(buf, n);
    }
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = rng() % 96;
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)rng();
        if (n && iter % 2)
            buf[0] = 0x0a; /* start like a Msg */
        poke(buf, n);
    }
    for (size_t i = 0; i < ns; i++)
        free(seeds[i]);
}

/* Request ids and lock values are printed with psrpc__u64_str: exactly what
 * "%llu" prints. */
TEST(u64_str_matches_printf) {
    uint64_t v[] = {0, 1, 9, 10, 99, 100, 12345678901234567890ull, UINT64_MAX, UINT64_MAX / 2};
    for (size_t i = 0; i < sizeof v / sizeof v[0] + 1000; i++) {
        uint64_t x = i < sizeof v / sizeof v[0] ? v[i] : (uint64_t)rand() * 2654435761u * (i + 1);
        char want[32], got[32];
        memset(got, 'x', sizeof got);
        int n = snprintf(want, sizeof want, "%llu", (unsigned long long)x);
        CHECK_EQ_INT(psrpc__u64_str(got, x), n);
        CHECK(strcmp(got, want) == 0);
        CHECK(got[n + 1] == 'x');
    }
}

TEST_MAIN()
