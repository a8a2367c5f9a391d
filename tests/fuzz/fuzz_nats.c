/* fuzz_nats (test plan J4): bytes from a NATS server -> the NATS bus's
 * receive path: nats.c's protocol parser as our bus runs it (on our loop
 * through nats_evloop.c), our pull of queued messages, the size check, the
 * SRV. router (psrpc__wire_peek_channel of Msg.channel, unknown keys dropped
 * and counted) and the server core behind it. A real psrpc_bus on
 * nats://127.0.0.1:P talks to a fake NATS server in this process
 * (fake_broker.h): it sends INFO, answers PING with PONG, records each SUB's
 * sid, and once the server's three registrations are confirmed writes the
 * fuzz bytes, in which "MSG <subject> * " gets the sid subscribed for that
 * subject. Then it sends PING and waits for the PONG (so everything before
 * it was parsed and pulled), or for the bus to drop the connection, or
 * 100 ms; then half-closes and waits for the bus to drop it.
 *
 * Findings: crash, UB, leak, a hang (5 s), the server not coming up. */
#include <pthread.h>
#include <stdatomic.h>

#include "fuzz_server.h"

#define MAX_SUBS 32
static fake_broker fb;
static char sub_subject[MAX_SUBS][256], sub_sid[MAX_SUBS][32];
static int nsubs;
static int pongs;

/* Handles the client's complete lines (and PUB payloads). */
static void serve(void) {
    for (int i = 0; i < fb.nconns; i++) {
        fb_conn *c = &fb.conns[i];
        if (c->role == 0) {
            char info[512];
            int n = snprintf(info, sizeof info,
                             "INFO {\"server_id\":\"FUZZ\",\"server_name\":\"fuzz\",\"version\":"
                             "\"2.9.15\",\"proto\":1,\"go\":\"go1.21\",\"host\":\"127.0.0.1\","
                             "\"port\":%d,\"headers\":true,\"max_payload\":1048576}\r\n",
                             fb.port);
            fb_write(c, info, (size_t)n);
            c->role = 1;
        }
        for (;;) {
            char *nl = c->in_len ? memchr(c->in, '\n', c->in_len) : NULL;
            if (!nl)
                break;
            size_t ll = (size_t)(nl - c->in) + 1;
            char line[600];
            size_t cl = ll < sizeof line ? ll : sizeof line - 1;
            memcpy(line, c->in, cl);
            line[cl] = 0;
            line[strcspn(line, "\r\n")] = 0;
            if (strncmp(line, "PUB ", 4) == 0 || strncmp(line, "HPUB ", 5) == 0) {
                const char *last = strrchr(line, ' ');
                size_t pl = (size_t)strtoul(last + 1, NULL, 10);
                if (c->in_len < ll + pl + 2)
                    break; /* payload incomplete */
                fb_consume(c, ll + pl + 2);
                continue;
            }
            if (strcmp(line, "PING") == 0) {
                fb_write(c, "PONG\r\n", 6);
            } else if (strcmp(line, "PONG") == 0) {
                pongs++;
            } else if (strncmp(line, "SUB ", 4) == 0 && nsubs < MAX_SUBS) {
                char *tok[4];
                int nt = 0;
                for (char *t = strtok(line + 4, " "); t && nt < 4; t = strtok(NULL, " "))
                    tok[nt++] = t;
                if (nt >= 2) {
                    snprintf(sub_subject[nsubs], sizeof sub_subject[0], "%s", tok[0]);
                    snprintf(sub_sid[nsubs], sizeof sub_sid[0], "%s", tok[nt - 1]);
                    nsubs++;
                }
            }
            fb_consume(c, ll);
        }
    }
}

/* The fuzz bytes with "MSG <subject> * " given the subscribed sid. */
static char *with_sids(const uint8_t *d, size_t n, size_t *out_n) {
    char *o = malloc(n + 64 * 32 + 1);
    FUZZ_ASSERT(o);
    size_t j = 0, i = 0;
    int subs_done = 0;
    while (i < n) {
        bool line_start = i == 0 || d[i - 1] == '\n';
        if (line_start && subs_done < 64 && n - i > 4 && memcmp(d + i, "MSG ", 4) == 0) {
            const uint8_t *s = d + i + 4, *e = memchr(s, ' ', n - (i + 4));
            if (e && (size_t)(d + n - e) >= 3 && e[1] == '*' && e[2] == ' ') {
                size_t sl = (size_t)(e - s);
                const char *sid = "999";
                for (int k = 0; k < nsubs; k++)
                    if (strlen(sub_subject[k]) == sl && memcmp(sub_subject[k], s, sl) == 0)
                        sid = sub_sid[k];
                memcpy(o + j, d + i, 4 + sl + 1);
                j += 4 + sl + 1;
                size_t l = strlen(sid);
                memcpy(o + j, sid, l);
                j += l;
                i += 4 + sl + 2; /* at the space after '*' */
                subs_done++;
                continue;
            }
        }
        o[j++] = (char)d[i++];
    }
    *out_n = j;
    return o;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fb_listen(&fb);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (fb.lfd == 0)
        LLVMFuzzerInitialize(NULL, NULL);
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", fb.port);
    nsubs = 0;
    pongs = 0;
    fz_server fz;
    fz_server_open(&fz, &fb, serve, url);
    FUZZ_ASSERT(fb.nconns == 1);
    fb_conn *c = &fb.conns[0];
    size_t n = 0;
    char *bytes = with_sids(data, size, &n);
    fb_write(c, bytes, n);
    free(bytes);
    fb_write(c, "PING\r\n", 6);
    int64_t deadline = fb_now_ms() + 100;
    while (!pongs && !c->eof && fb_now_ms() < deadline) {
        fb_poll(&fb, 5);
        serve();
    }
    shutdown(c->fd, SHUT_WR);
    fz_serve_until_eof(&fz, c);
    fz_server_close(&fz);
    return 0;
}
