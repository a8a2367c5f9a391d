/* NATS transport: bus URL parsing, nats.c options, NKey seeds. Runs on the
 * caller's thread of psrpc_bus_open. Secrets (passwords, tokens, seeds) are
 * handed to nats.c and wiped from our own buffers; no message built here
 * contains one. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <uv.h>

#include "bus_nats.h"

void psrpc__nats_wipe(void *p, size_t len) {
    volatile unsigned char *v = p;
    while (len--)
        *v++ = 0;
}

static void free_secret(char *s) {
    if (s) {
        psrpc__nats_wipe(s, strlen(s));
        free(s);
    }
}

void psrpc__nats_settings_init(psrpc__nats_settings *s, const psrpc_bus_options *o) {
    s->connect_timeout_ms =
        o->connect_timeout_ms ? o->connect_timeout_ms : PSRPC__NATS_CONNECT_TIMEOUT_MS;
    s->ping_interval_ms = o->ping_interval_ms ? o->ping_interval_ms : PSRPC__NATS_PING_INTERVAL_MS;
    s->reconnect_wait_ms =
        o->reconnect_wait_ms ? o->reconnect_wait_ms : PSRPC__NATS_RECONNECT_WAIT_MS;
    s->reconnect_wait_max_ms =
        o->reconnect_wait_max_ms ? o->reconnect_wait_max_ms : PSRPC__NATS_RECONNECT_WAIT_MAX_MS;
    if (s->reconnect_wait_max_ms < s->reconnect_wait_ms)
        s->reconnect_wait_max_ms = s->reconnect_wait_ms;
    s->reconnect_buffer_size =
        o->reconnect_buffer_size ? o->reconnect_buffer_size : PSRPC__NATS_RECONNECT_BUFFER;
    s->queue_capacity = o->queue_capacity ? o->queue_capacity : 1000;
}

bool psrpc__nats_subject_valid(const char *subject) {
    if (!subject || !*subject)
        return false;
    bool token_empty = true;
    for (const unsigned char *p = (const unsigned char *)subject; *p; p++) {
        if (*p <= ' ' || *p == 0x7f)
            return false;
        if (*p == '.') {
            if (token_empty)
                return false;
            token_empty = true;
        } else {
            token_empty = false;
        }
    }
    return !token_empty;
}

/* ---- URL ---- */

/* Percent-decodes a URL part; *bad is set on a bad escape. */
static char *unescape(const char *s, size_t n, bool *bad) {
    bool oom = false;
    char *out = psrpc__url_unescape(s, n, &oom);
    if (!out && !oom)
        *bad = true;
    return out;
}

typedef struct parsed_url {
    char **servers;
    size_t nservers;
    bool secure;
    bool have_userinfo;
    char *userinfo; /* raw, for comparing the servers' credentials */
    char *user, *password, *token;
    char *common_host; /* the host all servers share, or NULL */
    bool hosts_differ;
} parsed_url;

static void parsed_url_clear(parsed_url *u) {
    for (size_t i = 0; i < u->nservers; i++)
        free(u->servers[i]);
    free(u->servers);
    free_secret(u->userinfo);
    free_secret(u->user);
    free_secret(u->password);
    free_secret(u->token);
    free(u->common_host);
    memset(u, 0, sizeof *u);
}

static int bad_url(const char *why) {
    return psrpc__error(PSRPC_INVALID_ARGUMENT, "invalid NATS bus URL: %s", why);
}

static bool is_ip_literal(const char *host) {
    if (strchr(host, ':'))
        return true; /* IPv6 */
    for (const char *p = host; *p; p++)
        if (!isdigit((unsigned char)*p) && *p != '.')
            return false;
    return true;
}

/* One "[scheme://][userinfo@]host[:port][/]" item of the list. */
static int parse_item(parsed_url *u, const char *item, size_t n) {
    while (n && isspace((unsigned char)*item)) {
        item++;
        n--;
    }
    while (n && isspace((unsigned char)item[n - 1]))
        n--;
    if (n == 0)
        return bad_url("empty server in the list");
    if (n >= 7 && strncmp(item, "nats://", 7) == 0) {
        item += 7;
        n -= 7;
    } else if (n >= 6 && strncmp(item, "tls://", 6) == 0) {
        u->secure = true;
        item += 6;
        n -= 6;
    } else if (memmem(item, n, "://", 3)) {
        return bad_url("only nats:// and tls:// servers can be listed");
    }
    /* Path: only a bare trailing '/' is accepted. */
    const char *at = NULL;
    for (size_t i = 0; i < n; i++)
        if (item[i] == '@')
            at = item + i;
    const char *hp = at ? at + 1 : item;
    size_t hn = n - (size_t)(hp - item);
    const char *slash = memchr(hp, '/', hn);
    if (slash) {
        if (slash != hp + hn - 1)
            return bad_url("a NATS URL has no path");
        hn--;
    }
    if (memchr(hp, '?', hn) || memchr(hp, '#', hn))
        return bad_url("a NATS URL has no query or fragment");
    if (at) {
        size_t un = (size_t)(at - item);
        if (un == 0)
            return bad_url("empty user information before '@'");
        if (!u->have_userinfo) {
            u->userinfo = malloc(un + 1);
            if (!u->userinfo)
                return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            memcpy(u->userinfo, item, un);
            u->userinfo[un] = 0;
            u->have_userinfo = true;
            bool bad = false;
            const char *colon = memchr(item, ':', un);
            if (colon) {
                u->user = unescape(item, (size_t)(colon - item), &bad);
                if (u->user)
                    u->password = unescape(colon + 1, un - (size_t)(colon - item) - 1, &bad);
                if (!u->password && !bad)
                    return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            } else {
                u->token = unescape(item, un, &bad);
                if (!u->token && !bad)
                    return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            }
            if (bad)
                return bad_url("bad percent-escape in the user information");
        } else if (strlen(u->userinfo) != un || memcmp(u->userinfo, item, un) != 0) {
            return bad_url("the servers of one bus URL must share their credentials");
        }
    }
    /* host[:port] */
    const char *host = hp, *port = NULL;
    size_t hostn = hn, portn = 0;
    if (hn && hp[0] == '[') {
        const char *rb = memchr(hp, ']', hn);
        if (!rb)
            return bad_url("unterminated IPv6 address");
        host = hp + 1;
        hostn = (size_t)(rb - hp) - 1;
        size_t rest = hn - (size_t)(rb - hp) - 1;
        if (rest) {
            if (rb[1] != ':')
                return bad_url("junk after the IPv6 address");
            port = rb + 2;
            portn = rest - 1;
        }
    } else {
        const char *colon = NULL;
        for (size_t i = 0; i < hn; i++)
            if (hp[i] == ':')
                colon = hp + i;
        if (colon) {
            hostn = (size_t)(colon - hp);
            port = colon + 1;
            portn = hn - hostn - 1;
        }
    }
    if (hostn == 0)
        return bad_url("missing host");
    for (size_t i = 0; i < hostn; i++)
        if (isspace((unsigned char)host[i]) || host[i] == '@' || host[i] == ',')
            return bad_url("bad character in the host");
    long portv = 4222;
    if (port) {
        if (portn == 0 || portn > 5)
            return bad_url("bad port");
        portv = 0;
        for (size_t i = 0; i < portn; i++) {
            if (!isdigit((unsigned char)port[i]))
                return bad_url("bad port");
            portv = portv * 10 + (port[i] - '0');
        }
        if (portv < 1 || portv > 65535)
            return bad_url("port out of range");
    }
    char **grown = realloc(u->servers, (u->nservers + 1) * sizeof *grown);
    if (!grown)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    u->servers = grown;
    size_t len = hostn + 32;
    char *srv = malloc(len);
    char *h = malloc(hostn + 1);
    if (!srv || !h) {
        free(srv);
        free(h);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    memcpy(h, host, hostn);
    h[hostn] = 0;
    bool v6 = strchr(h, ':') != NULL;
    /* The scheme is fixed up once every item is known (tls:// anywhere makes
     * the whole bus TLS). */
    snprintf(srv, len, "%s%.*s%s:%ld", v6 ? "[" : "", (int)hostn, host, v6 ? "]" : "", portv);
    u->servers[u->nservers++] = srv;
    if (!u->common_host && !u->hosts_differ) {
        u->common_host = h;
        h = NULL;
    } else if (u->common_host && strcmp(u->common_host, h) != 0) {
        u->hosts_differ = true;
        free(u->common_host);
        u->common_host = NULL;
    }
    free(h);
    return PSRPC_OK;
}

static int parse_url(parsed_url *u, const char *url) {
    memset(u, 0, sizeof *u);
    const char *body;
    if (strncmp(url, "nats://", 7) == 0) {
        body = url + 7;
    } else if (strncmp(url, "tls://", 6) == 0) {
        body = url + 6;
        u->secure = true;
    } else {
        return bad_url("the scheme must be nats:// or tls://");
    }
    const char *p = body;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        int rc = parse_item(u, p, n);
        if (rc != PSRPC_OK)
            return rc;
        if (!comma)
            break;
        p = comma + 1;
    }
    /* "nats://host:port" / "tls://host:port" for nats.c. */
    for (size_t i = 0; i < u->nservers; i++) {
        size_t len = strlen(u->servers[i]) + 8;
        char *full = malloc(len);
        if (!full)
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        snprintf(full, len, "%s://%s", u->secure ? "tls" : "nats", u->servers[i]);
        free(u->servers[i]);
        u->servers[i] = full;
    }
    return PSRPC_OK;
}

char *psrpc__nats_server_list(const char *url) {
    parsed_url u;
    char *out = NULL;
    if (parse_url(&u, url) == PSRPC_OK) {
        size_t len = 1;
        for (size_t i = 0; i < u.nservers; i++)
            len += strlen(u.servers[i]) + 1;
        if ((out = malloc(len)) != NULL) {
            size_t off = 0;
            for (size_t i = 0; i < u.nservers; i++) {
                const char *hp = strstr(u.servers[i], "://");
                hp = hp ? hp + 3 : u.servers[i];
                off += (size_t)snprintf(out + off, len - off, "%s%s", i ? "," : "", hp);
            }
        }
    }
    parsed_url_clear(&u);
    return out;
}

/* "host:port" or "[v6]:port" into host and port; false if neither. */
static bool split_host_port(const char *hp, size_t n, char *host, size_t hn, char *port,
                            size_t pn) {
    const char *colon = NULL;
    for (size_t i = 0; i < n; i++)
        if (hp[i] == ':')
            colon = hp + i;
    if (!colon || (size_t)(colon - hp) + 1 >= n)
        return false;
    const char *h = hp;
    size_t hl = (size_t)(colon - hp);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= hn || (size_t)(hp + n - colon - 1) >= pn)
        return false;
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(port, pn, "%.*s", (int)(hp + n - colon - 1), colon + 1);
    return true;
}

/* Why one server does not take a TCP connection, or "" if it does. */
static void probe_one(const char *host, const char *port, int timeout_ms, char *why, size_t n) {
    why[0] = 0;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(host, port, &hints, &ai);
    if (g != 0) {
        snprintf(why, n, "cannot resolve the host: %s", gai_strerror(g));
        return;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int pr;
            do
                pr = poll(&pfd, 1, timeout_ms);
            while (pr < 0 && errno == EINTR);
            socklen_t len = sizeof err;
            if (pr == 0)
                err = ETIMEDOUT;
            else if (pr < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = errno;
        }
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    if (err) /* libuv's wording, as the Redis transport's messages */
        snprintf(why, n, "%s", uv_strerror(uv_translate_sys_error(err)));
}

size_t psrpc__nats_probe(const char *servers, int timeout_ms, char *out, size_t n) {
    size_t off = 0;
    if (n)
        out[0] = 0;
    for (const char *p = servers; p && *p && off + 1 < n;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char host[256], port[16], why[128];
        if (split_host_port(p, len, host, sizeof host, port, sizeof port)) {
            probe_one(host, port, timeout_ms, why, sizeof why);
            if (why[0])
                off += (size_t)snprintf(out + off, n - off, "%s%.*s: %s", off ? "; " : "", (int)len,
                                        p, why);
        }
        if (off >= n)
            off = n - 1;
        p = comma ? comma + 1 : NULL;
    }
    return off;
}

/* ---- NKeys ---- */

static const char b32_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

static uint16_t crc16_xmodem(const uint8_t *p, size_t n) {
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

/* Decodes unpadded base32; returns the byte count or -1. */
static int b32_decode(uint8_t *out, size_t cap, const char *s, size_t n) {
    uint32_t acc = 0;
    int bits = 0;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        const char *pos = strchr(b32_alphabet, s[i]);
        if (!pos || !s[i])
            return -1;
        acc = (acc << 5) | (uint32_t)(pos - b32_alphabet);
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            if (j >= cap)
                return -1;
            out[j++] = (uint8_t)(acc >> bits);
        }
    }
    return (int)j;
}

static void b32_encode(char *out, const uint8_t *p, size_t n) {
    uint32_t acc = 0;
    int bits = 0;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | p[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            out[j++] = b32_alphabet[(acc >> bits) & 31];
        }
    }
    if (bits > 0)
        out[j++] = b32_alphabet[(acc << (5 - bits)) & 31];
    out[j] = 0;
}

int psrpc__nkey_public_from_seed(char out[PSRPC__NKEY_PUBLIC_LEN + 1], const char *seed) {
    uint8_t raw[40];
    int rc = PSRPC_INVALID_ARGUMENT;
    size_t n = seed ? strlen(seed) : 0;
    int len = n == PSRPC__NKEY_SEED_LEN ? b32_decode(raw, sizeof raw, seed, n) : -1;
    if (len != 36)
        goto out;
    uint16_t want = (uint16_t)(raw[34] | (raw[35] << 8));
    if (crc16_xmodem(raw, 34) != want || (raw[0] & 0xf8) != (18 << 3))
        goto out;
    uint8_t prefix = (uint8_t)(((raw[0] & 7) << 5) | ((raw[1] & 0xf8) >> 3));
    EVP_PKEY *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw + 2, 32);
    if (!key)
        goto out;
    uint8_t pub[35];
    size_t publen = 32;
    int ok = EVP_PKEY_get_raw_public_key(key, pub + 1, &publen);
    EVP_PKEY_free(key);
    if (ok != 1 || publen != 32)
        goto out;
    pub[0] = prefix;
    uint16_t crc = crc16_xmodem(pub, 33);
    pub[33] = (uint8_t)(crc & 0xff);
    pub[34] = (uint8_t)(crc >> 8);
    b32_encode(out, pub, sizeof pub);
    rc = PSRPC_OK;
out:
    psrpc__nats_wipe(raw, sizeof raw);
    return rc;
}

int psrpc__nkey_seed_from_file(char out[PSRPC__NKEY_SEED_LEN + 1], const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        return PSRPC_INVALID_ARGUMENT;
    char line[512];
    int rc = PSRPC_INVALID_ARGUMENT;
    while (fgets(line, sizeof line, f)) {
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        size_t n = 0;
        while (p[n] && strchr(b32_alphabet, p[n]))
            n++;
        if (p[0] == 'S' && n == PSRPC__NKEY_SEED_LEN) {
            memcpy(out, p, n);
            out[n] = 0;
            rc = PSRPC_OK;
            break;
        }
    }
    psrpc__nats_wipe(line, sizeof line);
    fclose(f);
    if (rc != PSRPC_OK)
        psrpc__nats_wipe(out, PSRPC__NKEY_SEED_LEN + 1);
    return rc;
}

/* ---- natsOptions ---- */

static int nats_opt_fail(natsStatus s, const char *what) {
    const char *txt = nats_GetLastError(NULL);
    if (txt && txt[0] == '(' && strstr(txt, "): "))
        txt = strstr(txt, "): ") + 3;
    return psrpc__error(s == NATS_NO_MEMORY ? PSRPC_RESOURCE_EXHAUSTED : PSRPC_INVALID_ARGUMENT,
                        "NATS option %s: %s", what, txt && *txt ? txt : natsStatus_GetText(s));
}

static int readable(const char *path, const char *what) {
    FILE *f = fopen(path, "r");
    if (!f)
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "cannot read %s '%s'", what, path);
    fclose(f);
    return PSRPC_OK;
}

static int clamp_int(int64_t v) { return v > INT_MAX ? INT_MAX : (int)v; }

int psrpc__nats_options_new(natsOptions **out, const char *url, const psrpc_bus_options *o,
                            const psrpc__nats_settings *st) {
    *out = NULL;
    if (o->connect_timeout_ms < 0 || o->ping_interval_ms < 0 || o->reconnect_wait_ms < 0 ||
        o->reconnect_wait_max_ms < 0 || o->reconnect_buffer_size < 0)
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "negative NATS timing or buffer option");
    if ((o->tls_cert_file == NULL) != (o->tls_key_file == NULL))
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "tls_cert_file and tls_key_file must be given together");
    if (o->nats_creds_file && o->nats_nkey_seed_file)
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "nats_creds_file and nats_nkey_seed_file exclude each other");

    parsed_url u;
    int rc = parse_url(&u, url);
    if (rc != PSRPC_OK) {
        parsed_url_clear(&u);
        return rc;
    }
    natsOptions *no = NULL;
    natsStatus s = natsOptions_Create(&no);
    if (s != NATS_OK) {
        parsed_url_clear(&u);
        return nats_opt_fail(s, "create");
    }
#define SET(call, what)                  \
    do {                                 \
        if ((s = (call)) != NATS_OK) {   \
            rc = nats_opt_fail(s, what); \
            goto fail;                   \
        }                                \
    } while (0)
    SET(natsOptions_SetServers(no, (const char **)u.servers, (int)u.nservers), "servers");
    if (u.user)
        SET(natsOptions_SetUserInfo(no, u.user, u.password), "user information");
    else if (u.token)
        SET(natsOptions_SetToken(no, u.token), "token");

    bool secure = u.secure || (o->flags & PSRPC_BUS_TLS) || o->tls_ca_file || o->tls_cert_file;
    if (secure) {
        SET(natsOptions_SetSecure(no, true), "TLS");
        if (o->tls_ca_file) {
            if ((rc = readable(o->tls_ca_file, "tls_ca_file")) != PSRPC_OK)
                goto fail;
            SET(natsOptions_LoadCATrustedCertificates(no, o->tls_ca_file), "tls_ca_file");
        }
        if (o->tls_cert_file) {
            if ((rc = readable(o->tls_cert_file, "tls_cert_file")) != PSRPC_OK ||
                (rc = readable(o->tls_key_file, "tls_key_file")) != PSRPC_OK)
                goto fail;
            SET(natsOptions_LoadCertificatesChain(no, o->tls_cert_file, o->tls_key_file),
                "tls_cert_file/tls_key_file");
        }
        /* nats.c checks the host name only when told which one; an IP
         * literal cannot be checked that way (the CA check still applies). */
        const char *name = o->tls_server_name;
        if (!name && u.common_host && !is_ip_literal(u.common_host))
            name = u.common_host;
        if (name)
            SET(natsOptions_SetExpectedHostname(no, name), "tls_server_name");
    }
    if (o->nats_creds_file) {
        if ((rc = readable(o->nats_creds_file, "nats_creds_file")) != PSRPC_OK)
            goto fail;
        SET(natsOptions_SetUserCredentialsFromFiles(no, o->nats_creds_file, NULL),
            "nats_creds_file");
    }
    if (o->nats_nkey_seed_file) {
        char seed[PSRPC__NKEY_SEED_LEN + 1], pub[PSRPC__NKEY_PUBLIC_LEN + 1];
        if (psrpc__nkey_seed_from_file(seed, o->nats_nkey_seed_file) != PSRPC_OK) {
            rc = psrpc__error(PSRPC_INVALID_ARGUMENT, "no NKey seed in nats_nkey_seed_file '%s'",
                              o->nats_nkey_seed_file);
            goto fail;
        }
        int prc = psrpc__nkey_public_from_seed(pub, seed);
        psrpc__nats_wipe(seed, sizeof seed);
        if (prc != PSRPC_OK) {
            rc = psrpc__error(PSRPC_INVALID_ARGUMENT,
                              "the NKey seed in nats_nkey_seed_file '%s' is not valid",
                              o->nats_nkey_seed_file);
            goto fail;
        }
        SET(natsOptions_SetNKeyFromSeed(no, pub, o->nats_nkey_seed_file), "nats_nkey_seed_file");
    }
    SET(natsOptions_SetName(no, "libpsrpc"), "name");
    SET(natsOptions_SetTimeout(no, st->connect_timeout_ms), "connect_timeout_ms");
    SET(natsOptions_SetPingInterval(no, st->ping_interval_ms), "ping_interval_ms");
    SET(natsOptions_SetMaxPingsOut(no, PSRPC__NATS_MAX_PINGS_OUT), "max pings out");
    /* No reconnects by nats.c: a lost link closes the connection and our own
     * retry loop (bus_nats.c) makes a new one. nats.c (3.4.1, and upstream
     * main) keeps a connection's protocol parser across its reconnects, and
     * with an external event loop nothing resets it: a link lost in the
     * middle of a message (large payloads under load) leaves the parser in
     * MSG_PAYLOAD, so it takes the new link's PONGs and messages for the rest
     * of that payload. Flushes and pings then go unanswered, each of nats.c's
     * reconnects inherits the same parser, and the bus stays down. A new
     * natsConnection starts with a new parser. */
    SET(natsOptions_SetAllowReconnect(no, false), "allow reconnect");
    SET(natsOptions_SetReconnectBufSize(no, clamp_int(st->reconnect_buffer_size)),
        "reconnect_buffer_size");
    SET(natsOptions_SetMaxPendingMsgs(no, clamp_int(st->queue_capacity)), "queue_capacity");
    SET(natsOptions_UseGlobalMessageDelivery(no, true), "global message delivery");
    SET(natsOptions_SetSendAsap(no, true), "send asap");
    int64_t wd = st->connect_timeout_ms < PSRPC__NATS_WRITE_DEADLINE_MAX_MS
                     ? st->connect_timeout_ms
                     : PSRPC__NATS_WRITE_DEADLINE_MAX_MS;
    SET(natsOptions_SetWriteDeadline(no, wd), "write deadline");
#undef SET
    parsed_url_clear(&u);
    *out = no;
    return PSRPC_OK;
fail:
    parsed_url_clear(&u);
    natsOptions_Destroy(no);
    return rc;
}
