/* fuzz_url: bus URLs and options -> the parsers psrpc_bus_open runs before
 * any thread or socket exists: the secret-masking copy kept for messages
 * (psrpc__url_mask), percent-decoding (psrpc__url_unescape), and the Redis,
 * NATS and local transports' open (URL, userinfo, hosts, ports, databases,
 * query options, TLS switch, timeouts, channel prefix), each followed by the
 * transport's destroy, as a failed psrpc_bus_open would. No connection is
 * made (connecting starts later, on the loop thread).
 *
 * Input: byte 0 = option bits, then the URL up to the first NUL, then an
 * optional channel prefix. Properties: no crash, leak or UB; the masked copy
 * is deterministic and never longer than the URL plus the "***" markers; an
 * open that fails sets an error text that does not hold the URL's password
 * (the text after the first ':' of the userinfo, when it has 6+ bytes). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "common.h"
#include "fuzz_assert.h"

/* The URL's password as a parser would see it: between "://user:" and the
 * last '@' of the authority (NULL when absent or too short to search for). */
static char *password_of(const char *url) {
    const char *s = strstr(url, "://");
    if (!s)
        return NULL;
    s += 3;
    const char *end = s + strcspn(s, "/?#,");
    const char *at = NULL;
    for (const char *q = s; q < end; q++)
        if (*q == '@')
            at = q;
    if (!at)
        return NULL;
    const char *colon = memchr(s, ':', (size_t)(at - s));
    if (!colon || at - colon - 1 < 6)
        return NULL;
    size_t n = (size_t)(at - colon - 1);
    char *p = malloc(n + 1);
    FUZZ_ASSERT(p);
    memcpy(p, colon + 1, n);
    p[n] = 0;
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 4096)
        return 0;
    uint8_t bits = data[0];
    char *buf = malloc(size + 1);
    FUZZ_ASSERT(buf);
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = 0;
    const char *url = buf;
    size_t ulen = strlen(url);
    const char *prefix = ulen + 1 < size - 1 ? url + ulen + 1 : NULL;

    char *m1 = psrpc__url_mask(url), *m2 = psrpc__url_mask(url);
    FUZZ_ASSERT(m1 && m2 && strcmp(m1, m2) == 0);
    size_t stars = 0;
    for (const char *q = m1; (q = strstr(q, "***")); q += 3)
        stars++;
    FUZZ_ASSERT(strlen(m1) <= ulen + 3 * stars);
    free(m1);
    free(m2);

    bool oom = false;
    char *u = psrpc__url_unescape(url, ulen, &oom);
    FUZZ_ASSERT(u || !oom);
    if (u)
        FUZZ_ASSERT(strlen(u) <= ulen);
    free(u);

    psrpc_bus *bus = calloc(1, sizeof *bus);
    FUZZ_ASSERT(bus);
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.flags = (bits & 1) ? PSRPC_BUS_TLS : 0;
    o.max_message_size = (bits & 2) ? 1024 : 1 << 20;
    o.queue_capacity = 10000;
    o.connect_timeout_ms = (bits & 4) ? -1 : (bits & 8) ? 1 : 0;
    o.ping_interval_ms = (bits & 16) ? INT64_MAX : 0;
    o.reconnect_wait_ms = (bits & 32) ? 5000 : 0;
    o.reconnect_wait_max_ms = (bits & 32) ? 10 : 0;
    o.reconnect_buffer_size = (bits & 64) ? -5 : 0;
    o.channel_prefix = (bits & 128) ? prefix : NULL;
    bus->opts = o;
    bus->magic = PSRPC__BUS_MAGIC;

    int rc = -1;
    if (strncmp(url, "local://", 8) == 0)
        rc = psrpc__local_open(bus, url + 8);
#ifdef PSRPC_WITH_REDIS
    else if (strncmp(url, "redis://", 8) == 0 || strncmp(url, "rediss://", 9) == 0)
        rc = psrpc__redis_open(bus, url);
#endif
#ifdef PSRPC_WITH_NATS
    else if (strncmp(url, "nats://", 7) == 0 || strncmp(url, "tls://", 6) == 0)
        rc = psrpc__nats_open(bus, url);
#endif
    if (rc == PSRPC_OK) {
        FUZZ_ASSERT(bus->transport && bus->transport->destroy);
        bus->transport->destroy(bus);
    } else if (rc != -1) {
        FUZZ_ASSERT(rc < 0);
        char *pw = password_of(url);
        if (pw) {
            const char *err = psrpc_last_error();
            FUZZ_ASSERT(!err || !strstr(err, pw));
            free(pw);
        }
    }
    free(bus);
    free(buf);
    return 0;
}
