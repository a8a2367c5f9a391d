/* Test plan B6: Redis's `client-output-buffer-limit pubsub` trips on a slow
 * subscriber. The subscriber's on_message blocks its bus's loop thread (a
 * consumer that cannot keep up: nothing reads its socket) while a publisher on
 * another bus sends 64 KiB messages; the private redis-server, limited to
 * 1 MB of pending pub/sub output per client, closes the subscriber's
 * connection. The subscriber bus must notice, report it (DISCONNECTED with
 * the reason, a WARN log line), reconnect, resubscribe on its own, and
 * deliver what is published afterwards; the publisher's bus is untouched.
 * What was lost is counted from sequence numbers in the payloads: messages
 * Redis discarded with the connection, never duplicated, never reordered. */
#include "rt.h"

#define PAYLOAD (64 * 1024)
#define BURST 200  /* published while the subscriber is stalled: 12.8 MB */
#define STALL_AT 5 /* on_message of this sequence number blocks until released */
#define AFTER 50   /* published once the subscription is back */
#define MAXSEQ 100000

typedef struct sub_state {
    atomic_int received, out_of_order, max_seq, stalled, release;
    unsigned char *seen; /* seen[seq] = times delivered */
} sub_state;

typedef struct log_state {
    atomic_int warn_bus, lost_lines, first_ready;
    char first[512]; /* read once first_ready is set */
    atomic_flag first_taken;
} log_state;

static log_state logs;

static void log_cb(int level, const char *component, const char *message, void *ud) {
    (void)ud;
    if (level == PSRPC_LOG_WARN && strcmp(component, "bus") == 0) {
        atomic_fetch_add(&logs.warn_bus, 1);
        if (strstr(message, "lost"))
            atomic_fetch_add(&logs.lost_lines, 1);
        if (!atomic_flag_test_and_set(&logs.first_taken)) {
            snprintf(logs.first, sizeof logs.first, "%s", message);
            atomic_store(&logs.first_ready, 1);
        }
    }
}

static void on_message(psrpc_sub *sub, const psrpc_msg *msg, void *ud) {
    (void)sub;
    sub_state *s = (sub_state *)ud;
    if (psrpc_msg_size(msg) < sizeof(uint32_t))
        return;
    uint32_t seq;
    memcpy(&seq, psrpc_msg_data(msg), sizeof seq);
    if (seq >= MAXSEQ)
        return;
    /* seen[] first: the main thread reads it once it sees max_seq reach the
     * last sequence number, so the store to max_seq publishes it. */
    s->seen[seq]++;
    if ((int)seq <= atomic_load(&s->max_seq))
        atomic_fetch_add(&s->out_of_order, 1);
    else
        atomic_store(&s->max_seq, (int)seq);
    atomic_fetch_add(&s->received, 1);
    if (seq == STALL_AT && !atomic_exchange(&s->stalled, 1)) {
        /* The slow consumer: this bus's loop thread reads nothing until the
         * burst is out (bounded: 20 s). */
        for (int i = 0; i < 2000 && !atomic_load(&s->release); i++)
            th_sleep_ms(10);
    }
}

static int publish_seq(psrpc_server *srv, const psrpc_method *m, char *buf, uint32_t seq) {
    memcpy(buf, &seq, sizeof seq);
    int rc = psrpc_server_publish(srv, m, NULL, 0, buf, PAYLOAD);
    if (rc != PSRPC_OK)
        fprintf(stderr, "  publish %u: %d %s\n", seq, rc, psrpc_last_error());
    return rc;
}

TEST(slow_subscriber_dropped_by_output_buffer_limit_recovers) {
    rs_server rs = {0};
    rs_args(&rs, "--client-output-buffer-limit", "pubsub 1mb 512kb 1", NULL);
    REQUIRE(rs_start(&rs));
    REQUIRE(psrpc_set_log_callback(log_cb, PSRPC_LOG_WARN, NULL) == PSRPC_OK);

    psrpc_bus_options o = rt_opts(300);
    o.max_message_size = 1 << 20;
    psrpc_bus *pb = rt_bus_ready(rs.url, &o), *sb = rt_bus_ready(rs.url, &o);
    REQUIRE(pb && sb);
    rt_watch *wp = rt_watch_new(pb), *ws = rt_watch_new(sb);

    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    m.output_type = "google.protobuf.BytesValue";
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, pb, svc, NULL) == PSRPC_OK);
    psrpc_client *cl = tu_client(sb, svc, 1000, 500);
    REQUIRE(cl);
    sub_state *st = (sub_state *)calloc(1, sizeof *st);
    st->seen = (unsigned char *)calloc(MAXSEQ, 1);
    atomic_store(&st->max_seq, -1);
    psrpc_sub *sub = NULL;
    REQUIRE(psrpc_client_subscribe(&sub, cl, &m, NULL, 0, on_message, NULL, st, NULL) == PSRPC_OK);
    REQUIRE(psrpc_sub_wait_ready(sub, tu_ms(5000)) == PSRPC_OK);
    psrpc_bus_stats before = tu_stats(sb);

    char *buf = (char *)calloc(1, PAYLOAD);
    uint32_t seq = 0;
    /* The burst: the subscriber stalls on STALL_AT; the rest pile up in Redis. */
    for (; seq < BURST; seq++) {
        REQUIRE(publish_seq(srv, &m, buf, seq) == PSRPC_OK);
        if (seq == STALL_AT)
            CHECK(WAIT_UNTIL(atomic_load(&st->stalled), 5000));
    }
    th_sleep_ms(500); /* Redis has written or queued all of it */
    long long t_burst = th_now_ms();
    atomic_store(&st->release, 1);
    /* Redis drops the subscriber; the bus sees it once its loop runs again. */
    long long t_down = rt_wait_event(ws, 0, PSRPC_BUS_DISCONNECTED, 10000);
    CHECK(t_down >= 0);
    int down_idx = rt_nevents(ws);
    char why[512];
    rt_last(ws, NULL, why, sizeof why);
    long long t_up = rt_wait_event(ws, down_idx > 0 ? down_idx - 1 : 0, PSRPC_BUS_CONNECTED, 10000);
    CHECK(t_up >= 0);

    /* Back: publish until one message arrives through the renewed
     * subscription (bounded), then AFTER more, which must all arrive. */
    uint32_t first_after = seq;
    long long t_first = -1;
    for (int i = 0; i < 500 && t_first < 0; i++, seq++) {
        REQUIRE(publish_seq(srv, &m, buf, seq) == PSRPC_OK);
        th_sleep_ms(20);
        if (atomic_load(&st->max_seq) >= (int)first_after)
            t_first = th_now_ms();
    }
    CHECK(t_first >= 0);
    uint32_t tail_from = seq;
    for (int i = 0; i < AFTER; i++, seq++)
        REQUIRE(publish_seq(srv, &m, buf, seq) == PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&st->max_seq) == (int)seq - 1, 10000));

    int burst_got = 0, tail_got = 0, dups = 0;
    for (uint32_t i = 0; i < seq; i++) {
        if (st->seen[i] > 1)
            dups++;
        if (i < BURST && st->seen[i])
            burst_got++;
        if (i >= tail_from && st->seen[i])
            tail_got++;
    }
    psrpc_bus_stats ss = tu_stats(sb), ps = tu_stats(pb);
    fprintf(stderr,
            "  burst: %d published while stalled, %d delivered, %d lost with the connection\n"
            "  subscriber bus: disconnected %lld ms after the stall ended (\"%s\"), reconnected "
            "%lld ms "
            "later, first new message %lld ms after that; connects %llu, disconnects %llu\n"
            "  after recovery: %d/%d delivered; duplicates %d, out of order %d; publisher bus "
            "connects %llu, disconnects %llu; WARN bus log lines %d (first: \"%s\")\n",
            BURST, burst_got, BURST - burst_got, t_down - t_burst, why, t_up - t_down,
            t_first - t_up, (unsigned long long)ss.connects, (unsigned long long)ss.disconnects,
            tail_got, AFTER, dups, atomic_load(&st->out_of_order), (unsigned long long)ps.connects,
            (unsigned long long)ps.disconnects, atomic_load(&logs.warn_bus),
            atomic_load(&logs.first_ready) ? logs.first : "");

    CHECK(burst_got < BURST);    /* the limit tripped: Redis discarded messages */
    CHECK(burst_got > STALL_AT); /* what was delivered before the stall is kept */
    CHECK_EQ_INT(tail_got, AFTER);
    CHECK_EQ_INT(dups, 0);
    CHECK_EQ_INT(atomic_load(&st->out_of_order), 0);
    CHECK(ss.disconnects >= before.disconnects + 1);
    CHECK(ss.connects >= before.connects + 1);
    CHECK(ps.disconnects == 0); /* only the slow subscriber was dropped */
    CHECK(atomic_load(&logs.warn_bus) >= 1);
    CHECK(rt_event_at(wp, 0, PSRPC_BUS_DISCONNECTED) < 0);

    psrpc_set_log_callback(NULL, 0, NULL);
    psrpc_sub_free(sub);
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(sb);
    psrpc_bus_free(pb);
    free(buf);
    free(st->seen);
    free(st);
    rs_stop(&rs);
}

TEST_MAIN()
