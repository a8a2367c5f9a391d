/* Channel names, sanitizing, CamelCase, ids and the Redis lock key
 * (wire-protocol.md sections 4-6), against the spec's tables and against
 * vectors printed by the real livekit/psrpc v0.8.2 (golden_v0.8.2.txt). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel.h"
#include "common.h"
#include "golden.h"
#include "harness.h"

/* ---- helpers --------------------------------------------------------------- */

static void check_sanitize(const char *in, size_t len, const char *want) {
    char *got = psrpc__sanitize(in, len);
    CHECK_EQ_STR(got, want);
    free(got);
}

#define SANITIZE(lit, want) check_sanitize(lit, sizeof(lit) - 1, want)

typedef int (*method_fn)(psrpc__channel *, const char *, const char *, const char *const *, size_t);

static int rpc_noq(psrpc__channel *c, const char *s, const char *m, const char *const *t,
                   size_t n) {
    return psrpc__channel_rpc(c, s, m, t, n, false);
}

static int rpc_q(psrpc__channel *c, const char *s, const char *m, const char *const *t, size_t n) {
    return psrpc__channel_rpc(c, s, m, t, n, true);
}

static void check_method(method_fn fn, const char *s, const char *m, const char *const *t, size_t n,
                         const char *legacy, const char *server, const char *local) {
    psrpc__channel c = {0};
    CHECK_EQ_INT(fn(&c, s, m, t, n), 0);
    CHECK_EQ_STR(c.legacy, legacy);
    CHECK_EQ_STR(c.server, server);
    CHECK_EQ_STR(c.local, local);
    psrpc__channel_clear(&c);
}

typedef int (*client_fn)(psrpc__channel *, const char *, const char *);

static void check_client(client_fn fn, const char *s, const char *id, const char *legacy,
                         const char *server) {
    psrpc__channel c = {0};
    CHECK_EQ_INT(fn(&c, s, id), 0);
    CHECK_EQ_STR(c.legacy, legacy);
    CHECK_EQ_STR(c.server, server);
    CHECK(c.local == NULL);
    psrpc__channel_clear(&c);
}

/* ---- section 4.1 ----------------------------------------------------------- */

TEST(camel_case_table) {
    static const char *const table[][2] = {
        {"MyService", "MyService"},
        {"my_service", "MyService"},
        {"Haberdasher_v1", "HaberdasherV1"},
        {"MakeHat_v1", "MakeHatV1"},
        {"get_stats", "GetStats"},
        {"normalRPC", "NormalRPC"},
        {"getHTTP", "GetHTTP"},
        {"a2b", "A2B"},
        {"_foo", "XFoo"},
        {"foo__bar", "Foo_Bar"},
        {"foo_1bar", "Foo_1Bar"},
        {"", ""},
        {"_", "X"},
        {"a_", "A_"},
        {"__x", "XX"},
    };
    for (size_t i = 0; i < PSRPC__ARRAY_SIZE(table); i++) {
        char *got = psrpc__camel_case(table[i][0]);
        CHECK_EQ_STR(got, table[i][1]);
        free(got);
    }
}

/* ---- section 5.3 ----------------------------------------------------------- */

TEST(sanitize_table) {
    SANITIZE("us-east-1", "usu+002deastu+002d1");
    SANITIZE("us-east.1", "usu+002deastu+002e1");
    SANITIZE("r\xc3\xa9gion 1", "ru+00e9gionu+00201");
    SANITIZE("a|b", "au+007cb");
    SANITIZE("*", "u+002a");
    SANITIZE(">", "u+003e");
    SANITIZE("\xf0\x9f\x9a\x80_\xc3\x89", "U+0001f680_u+00c9");
    SANITIZE("\xe8\xbd\xaf\xe4\xbb\xb6", "u+8f6fu+4ef6");
    SANITIZE("azAZ09_", "azAZ09_");
    SANITIZE("", "");
}

TEST(sanitize_invalid_utf8_like_go) {
    SANITIZE("a\xff"
             "b",
             "au+fffdb");
    SANITIZE("\xe2\x82", "u+fffdu+fffd");                     /* truncated 3-byte sequence */
    SANITIZE("\xed\xa0\x80", "u+fffdu+fffdu+fffd");           /* encoded surrogate */
    SANITIZE("\xc0\xaf", "u+fffdu+fffd");                     /* overlong */
    SANITIZE("\xe0\x80\xaf", "u+fffdu+fffdu+fffd");           /* overlong 3-byte */
    SANITIZE("\xf4\x90\x80\x80", "u+fffdu+fffdu+fffdu+fffd"); /* above U+10FFFF */
    SANITIZE("\xf0\x9f\x9a", "u+fffdu+fffdu+fffd");           /* truncated 4-byte */
    SANITIZE("\xef\xbf\xbd", "u+fffd");                       /* a real U+FFFD */
    SANITIZE("\x80", "u+fffd");
    SANITIZE("\xc3", "u+fffd");
    SANITIZE("\xc3(", "u+fffdu+0028");
    SANITIZE("\xf4\x8f\xbf\xbf", "U+0010ffff");
    SANITIZE("\xed\x9f\xbf", "u+d7ff");
    SANITIZE("\x7f", "u+007f");
    check_sanitize("\0x", 2, "u+0000x");
}

TEST(utf8_valid) {
    CHECK(psrpc__utf8_valid("", 0));
    CHECK(psrpc__utf8_valid("plain", 5));
    CHECK(psrpc__utf8_valid("\xf0\x9f\x9a\x80", 4));
    CHECK(psrpc__utf8_valid("\xef\xbf\xbd", 3));
    CHECK(psrpc__utf8_valid("\xf4\x8f\xbf\xbf", 4));
    CHECK(psrpc__utf8_valid("\0", 1));
    CHECK(!psrpc__utf8_valid("a\xff"
                             "b",
                             3));
    CHECK(!psrpc__utf8_valid("\xe2\x82", 2));
    CHECK(!psrpc__utf8_valid("\xed\xa0\x80", 3));
    CHECK(!psrpc__utf8_valid("\xc0\xaf", 2));
    CHECK(!psrpc__utf8_valid("\xf4\x90\x80\x80", 4));
    CHECK(!psrpc__utf8_valid("\xf8\x88\x80\x80\x80", 5));
    CHECK(!psrpc__utf8_valid("\x80", 1));
    CHECK(!psrpc__utf8_valid("\xf0\x9f\x9a\x80", 3));
}

/* ---- section 5.4 ----------------------------------------------------------- */

TEST(join_table) {
    const char *abc[] = {"a", "b", "c"}, *e[] = {""}, *ea[] = {"", "a"}, *aeb[] = {"a", "", "b"},
               *ae[] = {"a", ""};
    check_method(rpc_noq, "svc", "M", NULL, 0, "svc|M|REQ", "SRV.svc", "M.REQ");
    check_method(rpc_q, "svc", "M", NULL, 0, "svc|M|REQ", "SRV.svc.Q", "M.REQ");
    check_method(rpc_noq, "svc", "M", abc, 3, "svc|M|a|b|c|REQ", "SRV.svc.a.b.c", "M.REQ");
    check_method(rpc_q, "svc", "M", abc, 3, "svc|M|a|b|c|REQ", "SRV.svc.a.b.c.Q", "M.REQ");
    check_method(rpc_noq, "svc", "M", e, 1, "svc|M|REQ", "SRV.svc", "M.REQ");
    check_method(rpc_q, "svc", "M", e, 1, "svc|M|REQ", "SRV.svc.Q", "M.REQ");
    check_method(rpc_noq, "svc", "M", ea, 2, "svc|M|a|REQ", "SRV.svc.a", "M.REQ");
    check_method(rpc_noq, "svc", "M", aeb, 3, "svc|M|a|b|REQ", "SRV.svc.a.b", "M.REQ");
    check_method(rpc_noq, "svc", "M", ae, 2, "svc|M|a||REQ", "SRV.svc.a", "M.REQ"); /* Q7 */
    check_method(rpc_q, "svc", "M", ae, 2, "svc|M|a||REQ", "SRV.svc.a.Q", "M.REQ");
}

/* ---- section 5.5 ----------------------------------------------------------- */

TEST(worked_examples) {
    const char *east[] = {"us-east-1"}, *eu[] = {"eu"};
    check_method(rpc_q, "MyService", "NormalRPC", NULL, 0, "MyService|NormalRPC|REQ",
                 "SRV.MyService.Q", "NormalRPC.REQ");
    check_method(psrpc__channel_claim_response, "MyService", "NormalRPC", NULL, 0,
                 "MyService|NormalRPC|RCLAIM", "SRV.MyService", "NormalRPC.RCLAIM");
    check_method(rpc_noq, "MyService", "IntensiveRPC", NULL, 0, "MyService|IntensiveRPC|REQ",
                 "SRV.MyService", "IntensiveRPC.REQ");
    check_method(psrpc__channel_claim_response, "MyService", "IntensiveRPC", NULL, 0,
                 "MyService|IntensiveRPC|RCLAIM", "SRV.MyService", "IntensiveRPC.RCLAIM");
    check_method(rpc_noq, "MyService", "GetStats", NULL, 0, "MyService|GetStats|REQ",
                 "SRV.MyService", "GetStats.REQ");
    check_method(psrpc__channel_stream_server, "MyService", "ExchangeUpdates", NULL, 0,
                 "MyService|ExchangeUpdates|STR", "SRV.MyService", "ExchangeUpdates.STR");
    check_method(psrpc__channel_claim_response, "MyService", "ExchangeUpdates", NULL, 0,
                 "MyService|ExchangeUpdates|RCLAIM", "SRV.MyService", "ExchangeUpdates.RCLAIM");
    check_method(rpc_noq, "MyService", "GetRegionStats", east, 1,
                 "MyService|GetRegionStats|usu+002deastu+002d1|REQ",
                 "SRV.MyService.usu+002deastu+002d1", "GetRegionStats.REQ");
    check_method(rpc_q, "MyService", "ProcessUpdate", NULL, 0, "MyService|ProcessUpdate|REQ",
                 "SRV.MyService.Q", "ProcessUpdate.REQ");
    check_method(rpc_noq, "MyService", "UpdateRegionState", eu, 1,
                 "MyService|UpdateRegionState|eu|REQ", "SRV.MyService.eu", "UpdateRegionState.REQ");
    check_client(psrpc__channel_client_response, "MyService", "CLI_a1B2c3D4e5F6",
                 "MyService|CLI_a1B2c3D4e5F6|RES", "CLI.MyService.CLI_a1B2c3D4e5F6.RES");
    check_client(psrpc__channel_client_claim, "MyService", "CLI_a1B2c3D4e5F6",
                 "MyService|CLI_a1B2c3D4e5F6|CLAIM", "CLI.MyService.CLI_a1B2c3D4e5F6.CLAIM");
    check_client(psrpc__channel_client_stream, "MyService", "CLI_a1B2c3D4e5F6",
                 "MyService|CLI_a1B2c3D4e5F6|STR", "CLI.MyService.CLI_a1B2c3D4e5F6.STR");
    check_client(psrpc__channel_client_response, "MyService", "my.client",
                 "MyService|myu+002eclient|RES", "CLI.MyService.my.client.RES");
}

TEST(upstream_foo_bar_vectors) {
    const char *abc[] = {"a", "b", "c"};
    check_client(psrpc__channel_client_response, "foo", "bar", "foo|bar|RES", "CLI.foo.bar.RES");
    check_client(psrpc__channel_client_claim, "foo", "bar", "foo|bar|CLAIM", "CLI.foo.bar.CLAIM");
    check_client(psrpc__channel_client_stream, "foo", "bar", "foo|bar|STR", "CLI.foo.bar.STR");
    check_method(rpc_noq, "foo", "bar", NULL, 0, "foo|bar|REQ", "SRV.foo", "bar.REQ");
    check_method(rpc_noq, "foo", "bar", abc, 3, "foo|bar|a|b|c|REQ", "SRV.foo.a.b.c", "bar.REQ");
    check_method(rpc_q, "foo", "bar", abc, 3, "foo|bar|a|b|c|REQ", "SRV.foo.a.b.c.Q", "bar.REQ");
    check_method(psrpc__channel_claim_response, "foo", "bar", abc, 3, "foo|bar|a|b|c|RCLAIM",
                 "SRV.foo.a.b.c", "bar.RCLAIM");
    check_method(psrpc__channel_stream_server, "foo", "bar", abc, 3, "foo|bar|a|b|c|STR",
                 "SRV.foo.a.b.c", "bar.STR");
}

TEST(copy_and_clear) {
    psrpc__channel a = {0}, b = {0}, c = {0};
    CHECK_EQ_INT(psrpc__channel_rpc(&a, "S", "M", NULL, 0, true), 0);
    CHECK_EQ_INT(psrpc__channel_copy(&b, &a), 0);
    CHECK_EQ_STR(b.legacy, "S|M|REQ");
    CHECK_EQ_STR(b.server, "SRV.S.Q");
    CHECK_EQ_STR(b.local, "M.REQ");
    CHECK(b.legacy != a.legacy);
    CHECK_EQ_INT(psrpc__channel_client_response(&c, "S", "C"), 0);
    psrpc__channel d = {0};
    CHECK_EQ_INT(psrpc__channel_copy(&d, &c), 0);
    CHECK(d.local == NULL);
    psrpc__channel_clear(&a);
    psrpc__channel_clear(&b);
    psrpc__channel_clear(&c);
    psrpc__channel_clear(&d);
    CHECK(a.legacy == NULL && a.server == NULL && a.local == NULL);
    psrpc__channel_clear(&a); /* idempotent */
    psrpc__channel_clear(NULL);
}

/* ---- the real Go module ------------------------------------------------------ */

/* Topic lists are "hex.,hex.,..." ("-" for none); returns the count. */
static size_t golden_topics(const char *field, char **out, size_t max) {
    size_t n = 0;
    if (strcmp(field, "-") == 0)
        return 0;
    char *copy = strdup(field);
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok && n < max;
         tok = strtok_r(NULL, ",", &save)) {
        size_t l = strlen(tok);
        if (l > 0 && tok[l - 1] == '.')
            tok[l - 1] = '\0';
        out[n++] = unhex_str(tok[0] ? tok : "-");
    }
    free(copy);
    return n;
}

static bool same(const char *got, const char *want_hex) {
    char *want = unhex_str(want_hex);
    bool ok = got && want && strcmp(got, want) == 0;
    if (!ok)
        fprintf(stderr, "    got \"%s\" want \"%s\"\n", got ? got : "(null)",
                want ? want : "(null)");
    free(want);
    return ok;
}

/* True if a hex topic list holds a NUL byte ("00" at an even offset). */
static bool has_nul_field(const char *topics) {
    size_t pos = 0;
    for (const char *p = topics; *p; p++) {
        if (*p == ',' || *p == '.') {
            pos = 0;
            continue;
        }
        if (pos % 2 == 0 && p[0] == '0' && p[1] == '0')
            return true;
        pos++;
    }
    return false;
}

TEST(golden_channels_v0_8_2) {
    FILE *fp = golden_open();
    REQUIRE(fp);
    golden_line l = {0};
    int checked = 0;
    while (golden_next(fp, &l)) {
        psrpc__channel c = {0};
        bool method = strcmp(l.f[0], "rpc") == 0 || strcmp(l.f[0], "claim_response") == 0 ||
                      strcmp(l.f[0], "stream_server") == 0;
        bool client = strncmp(l.f[0], "client_", 7) == 0;
        if (method && l.n == 8 && has_nul_field(l.f[3])) {
            /* A topic with a NUL byte cannot be passed as a C string. */
        } else if (method && l.n == 8) {
            char *s = unhex_str(l.f[1]), *m = unhex_str(l.f[2]);
            char *topics[16];
            size_t nt = golden_topics(l.f[3], topics, 16);
            bool q = strcmp(l.f[4], "true") == 0;
            const char *const *t = (const char *const *)topics;
            int rc;
            if (strcmp(l.f[0], "rpc") == 0)
                rc = psrpc__channel_rpc(&c, s, m, t, nt, q);
            else if (strcmp(l.f[0], "claim_response") == 0)
                rc = psrpc__channel_claim_response(&c, s, m, t, nt);
            else
                rc = psrpc__channel_stream_server(&c, s, m, t, nt);
            CHECK_EQ_INT(rc, 0);
            bool ok = same(c.legacy, l.f[5]) && same(c.server, l.f[6]) && same(c.local, l.f[7]);
            if (!ok)
                fprintf(stderr, "  golden line: %s %s %s %s %s\n", l.f[0], l.f[1], l.f[2], l.f[3],
                        l.f[4]);
            CHECK(ok);
            for (size_t i = 0; i < nt; i++)
                free(topics[i]);
            free(s);
            free(m);
            checked++;
        } else if (client && l.n == 6) {
            char *s = unhex_str(l.f[1]), *id = unhex_str(l.f[2]);
            int rc;
            if (strcmp(l.f[0], "client_response") == 0)
                rc = psrpc__channel_client_response(&c, s, id);
            else if (strcmp(l.f[0], "client_claim") == 0)
                rc = psrpc__channel_client_claim(&c, s, id);
            else
                rc = psrpc__channel_client_stream(&c, s, id);
            CHECK_EQ_INT(rc, 0);
            bool ok = same(c.legacy, l.f[3]) && same(c.server, l.f[4]) && c.local == NULL &&
                      strcmp(l.f[5], "-") == 0;
            if (!ok)
                fprintf(stderr, "  golden line: %s %s %s\n", l.f[0], l.f[1], l.f[2]);
            CHECK(ok);
            free(s);
            free(id);
            checked++;
        } else if (strcmp(l.f[0], "lock_key") == 0 && l.n == 3) {
            size_t n;
            uint8_t *payload = unhex(l.f[1], &n);
            char key[PSRPC__LOCK_KEY_LEN + 1];
            psrpc__redis_lock_key(key, payload, n);
            CHECK_EQ_STR(key, l.f[2]);
            free(payload);
            checked++;
        }
        psrpc__channel_clear(&c);
    }
    free(l.buf);
    fclose(fp);
    CHECK(checked > 500);
}

/* ---- section 4.2 ----------------------------------------------------------- */

static bool id_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int cmp_ids(const void *a, const void *b) { return memcmp(a, b, 16); }

/* Ids come from a per-thread pool of random bytes: a forked child must not
 * draw the bytes its parent still holds (it would repeat the parent's next
 * ids, and responses would cross between the two processes). */
TEST(ids_differ_after_fork) {
    char first[17];
    psrpc__new_id(first, "REQ_"); /* fills this thread's pool */
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        char child[10][17];
        for (int i = 0; i < 10; i++)
            psrpc__new_id(child[i], "REQ_");
        ssize_t w = write(fds[1], child, sizeof child);
        _exit(w == (ssize_t)sizeof child ? 0 : 1);
    }
    close(fds[1]);
    char parent[10][17], child[10][17];
    for (int i = 0; i < 10; i++)
        psrpc__new_id(parent[i], "REQ_");
    size_t got = 0;
    while (got < sizeof child) {
        ssize_t r = read(fds[0], (char *)child + got, sizeof child - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    REQUIRE(got == sizeof child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    int same = 0;
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 10; j++)
            same += strcmp(parent[i], child[j]) == 0;
    CHECK_EQ_INT(same, 0);
}

TEST(ids_format_and_uniqueness) {
    const char *prefixes[] = {"CLI_", "SRV_", "REQ_", "STR_", ""};
    for (size_t p = 0; p < PSRPC__ARRAY_SIZE(prefixes); p++) {
        char id[32];
        memset(id, 'x', sizeof id);
        psrpc__new_id(id, prefixes[p]);
        size_t pl = strlen(prefixes[p]);
        CHECK_EQ_INT(strlen(id), pl + PSRPC__ID_RANDOM_LEN);
        CHECK(strncmp(id, prefixes[p], pl) == 0);
        for (size_t i = pl; i < pl + PSRPC__ID_RANDOM_LEN; i++)
            CHECK(id_char(id[i]));
    }

    enum { N = 100000 };
    char(*ids)[17] = calloc(N, sizeof *ids); /* "REQ_" + 12 + NUL */
    REQUIRE(ids);
    unsigned long counts[128] = {0};
    for (int i = 0; i < N; i++) {
        psrpc__new_id(ids[i], "REQ_");
        for (int k = 4; k < 16; k++)
            counts[(unsigned char)ids[i][k]]++;
    }
    qsort(ids, N, sizeof *ids, cmp_ids);
    int dups = 0;
    for (int i = 1; i < N; i++)
        dups += memcmp(ids[i - 1], ids[i], 16) == 0;
    CHECK_EQ_INT(dups, 0);
    free(ids);

    /* 1.2M symbols over 62: each ~19355; a biased draw (e.g. modulo) or a
     * missing symbol would be far outside +-5%. */
    int symbols = 0;
    for (int c = 0; c < 128; c++) {
        if (!counts[c])
            continue;
        symbols++;
        CHECK(id_char((char)c));
        double expect = N * 12.0 / 62.0;
        CHECK(counts[c] > expect * 0.95 && counts[c] < expect * 1.05);
    }
    CHECK_EQ_INT(symbols, 62);
}

/* ---- section 6.1 ----------------------------------------------------------- */

TEST(redis_lock_key) {
    /* The 108-byte Redis Msg of section 5.6. */
    size_t n;
    uint8_t *payload = unhex("0a24747970652e676f6f676c65617069732e636f6d2f696e7465726e616c2e52"
                             "65717565737412440a105245515f6162636465666768696a6b6c1210434c495f"
                             "6d6e6f707172737475767778188080a8b1e39fe7cb172080bce9c7ee9fe7cb17"
                             "3a060a016b12017642020801",
                             &n);
    REQUIRE(payload);
    CHECK_EQ_INT(n, 108);
    char key[PSRPC__LOCK_KEY_LEN + 1];
    psrpc__redis_lock_key(key, payload, n);
    CHECK_EQ_STR(key, "RqBmrW1TbdJBNER66ehF2IaPNzTcJ1o6sHkrACWswGA=");
    free(payload);
    psrpc__redis_lock_key(key, NULL, 0);
    CHECK_EQ_STR(key, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    psrpc__redis_lock_key(key, (const uint8_t *)"abc", 3);
    CHECK_EQ_STR(key, "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
}

TEST_MAIN()
