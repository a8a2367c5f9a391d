/* Subscriptions (wire spec 10, interop plan 16.6): MULTI subscriptions reach
 * every subscriber, QUEUE subscriptions exactly one per message, topics,
 * wrong-typed messages dropped, on_ready, close stops delivery, release
 * once. Each subscriber is a client on its own bus, as in separate
 * processes. Subscription methods live in a service of their own (quirk
 * Q9). */
#include "util.h"

#define SUB_MAX_MSGS 256

typedef struct sub_rec {
    atomic_int msgs;
    atomic_int released;
    atomic_int after_release;
    atomic_int closed;
    atomic_int close_in_cb; /* close the subscription from on_message */
    psrpc_sub *self;
    tu_done ready;
    char got[SUB_MAX_MSGS][64];
    psrpc_msg *retained; /* first message, retained in the callback */
} sub_rec;

static void sub_msg_cb(psrpc_sub *sub, const psrpc_msg *msg, void *ud) {
    sub_rec *r = (sub_rec *)ud;
    tu_note_cb_thread();
    if (atomic_load(&r->released))
        atomic_fetch_add(&r->after_release, 1);
    int i = atomic_load(&r->msgs);
    if (i < SUB_MAX_MSGS) {
        size_t l = psrpc_msg_size(msg);
        if (l >= sizeof r->got[i])
            l = sizeof r->got[i] - 1;
        memcpy(r->got[i], psrpc_msg_data(msg), l);
        r->got[i][l] = 0;
    }
    if (i == 0)
        r->retained = psrpc_msg_retain(msg);
    if (atomic_load(&r->close_in_cb)) {
        psrpc_sub_close(sub, tu_count_cb, &r->closed);
        psrpc_sub_free(sub);
    }
    atomic_fetch_add(&r->msgs, 1);
}

static void sub_ready_cb(const psrpc_error *e, void *ud) { tu_done_cb(e, &((sub_rec *)ud)->ready); }

static void sub_release_cb(void *ud) {
    sub_rec *r = (sub_rec *)ud;
    tu_note_cb_thread();
    atomic_fetch_add(&r->released, 1);
}

static psrpc_method sub_method(uint32_t routing, uint32_t extra_flags, const char *type) {
    psrpc_method m = tu_method(routing == PSRPC_ROUTING_MULTI ? "Updates" : "Work", routing,
                               PSRPC_METHOD_SUBSCRIPTION | extra_flags);
    m.output_type = type;
    return m;
}

#define NSUB 3

typedef struct sfx {
    psrpc_bus *bus[NSUB + 1]; /* bus[0]: publisher */
    psrpc_server *pub;
    psrpc_client *cl[NSUB];
    psrpc_sub *sub[NSUB];
    sub_rec *rec[NSUB];
    int n;
    char service[64];
} sfx;

static sfx *sfx_new(int n, const psrpc_method *m, const char *const *topics_per_sub) {
    sfx *f = (sfx *)calloc(1, sizeof *f);
    f->n = n;
    tu_service(f->service, sizeof f->service);
    if (open_bus_group(f->bus, n + 1) != 0)
        return f;
    if (psrpc_server_create(&f->pub, f->bus[0], f->service, NULL) != PSRPC_OK)
        return f;
    for (int i = 0; i < n; i++) {
        f->rec[i] = (sub_rec *)calloc(1, sizeof(sub_rec));
        f->cl[i] = tu_client(f->bus[i + 1], f->service, 0, 0);
        if (!f->cl[i])
            return f;
        const char *t[1] = {topics_per_sub ? topics_per_sub[i] : NULL};
        int rc = psrpc_client_subscribe(&f->sub[i], f->cl[i], m, topics_per_sub ? t : NULL,
                                        topics_per_sub ? 1 : 0, sub_msg_cb, sub_ready_cb, f->rec[i],
                                        sub_release_cb);
        if (rc != PSRPC_OK) {
            fprintf(stderr, "  psrpc_client_subscribe: %d %s\n", rc, psrpc_last_error());
            f->sub[i] = NULL;
            return f;
        }
        f->rec[i]->self = f->sub[i];
        rc = psrpc_sub_wait_ready(f->sub[i], tu_ms(5000));
        if (rc != PSRPC_OK) {
            fprintf(stderr, "  psrpc_sub_wait_ready: %d %s\n", rc, psrpc_last_error());
            f->sub[i] = NULL;
            return f;
        }
    }
    return f;
}

static bool sfx_ok(sfx *f) {
    if (!f->pub)
        return false;
    for (int i = 0; i < f->n; i++)
        if (!f->sub[i])
            return false;
    return true;
}

static void sfx_free(sfx *f, bool subs_freed) {
    for (int i = 0; i < f->n; i++) {
        if (!subs_freed)
            psrpc_sub_free(f->sub[i]);
        psrpc_client_free(f->cl[i]);
    }
    psrpc_server_free(f->pub);
    for (int i = 0; i <= f->n; i++)
        psrpc_bus_free(f->bus[i]);
    for (int i = 0; i < f->n; i++) {
        if (!f->rec[i])
            continue;
        CHECK_EQ_INT(atomic_load(&f->rec[i]->released), f->sub[i] ? 1 : 0);
        CHECK_EQ_INT(atomic_load(&f->rec[i]->after_release), 0);
        psrpc_msg_release(f->rec[i]->retained);
        free(f->rec[i]);
    }
    free(f);
}

static int publish(sfx *f, const psrpc_method *m, const char *topic, const char *payload) {
    const char *t[1] = {topic};
    int rc =
        psrpc_server_publish(f->pub, m, topic ? t : NULL, topic ? 1 : 0, payload, strlen(payload));
    if (rc != PSRPC_OK)
        fprintf(stderr, "  psrpc_server_publish: %d %s\n", rc, psrpc_last_error());
    return rc;
}

static int total_msgs(sfx *f) {
    int t = 0;
    for (int i = 0; i < f->n; i++)
        t += atomic_load(&f->rec[i]->msgs);
    return t;
}

/* ------------------------------------------------------------------------ */

/* on_ready runs once with NULL error; every MULTI subscriber gets every
 * message, in publish order. */
TEST(sub_multi_reaches_all) {
    psrpc_method m = sub_method(PSRPC_ROUTING_MULTI, 0, "test.Update");
    sfx *f = sfx_new(NSUB, &m, NULL);
    REQUIRE(sfx_ok(f));
    for (int i = 0; i < NSUB; i++) {
        CHECK(WAIT_UNTIL(atomic_load(&f->rec[i]->ready.count) == 1, 2000));
        CHECK_EQ_INT(f->rec[i]->ready.status, PSRPC_OK);
    }
    enum { N = 20 };
    for (int k = 0; k < N; k++) {
        char p[32];
        snprintf(p, sizeof p, "update-%d", k);
        REQUIRE(publish(f, &m, NULL, p) == PSRPC_OK);
    }
    for (int i = 0; i < NSUB; i++)
        CHECK(WAIT_UNTIL(atomic_load(&f->rec[i]->msgs) == N, 5000));
    th_sleep_ms(100);
    for (int i = 0; i < NSUB; i++) {
        CHECK_EQ_INT(atomic_load(&f->rec[i]->msgs), N);
        for (int k = 0; k < N && k < atomic_load(&f->rec[i]->msgs); k++) {
            char p[32];
            snprintf(p, sizeof p, "update-%d", k);
            CHECK_EQ_STR(f->rec[i]->got[k], p);
        }
        CHECK_EQ_INT(atomic_load(&f->rec[i]->ready.count), 1);
    }
    /* the retained first message is still readable */
    REQUIRE(f->rec[0]->retained);
    CHECK_EQ_INT(psrpc_msg_size(f->rec[0]->retained), strlen("update-0"));
    CHECK(memcmp(psrpc_msg_data(f->rec[0]->retained), "update-0", 8) == 0);
    sfx_free(f, false);
    TU_CHECK_THREADS();
}

/* A QUEUE subscription: each message reaches exactly one of 3 subscribers. */
TEST(sub_queue_reaches_one) {
    psrpc_method m = sub_method(PSRPC_ROUTING_QUEUE, 0, "test.Update");
    sfx *f = sfx_new(NSUB, &m, NULL);
    REQUIRE(sfx_ok(f));
    enum { N = 60 };
    char tag[32];
    tu_unique(tag, sizeof tag, "w");
    for (int k = 0; k < N; k++) {
        char p[64];
        snprintf(p, sizeof p, "%s-%d", tag, k); /* distinct payloads (quirk Q12) */
        REQUIRE(publish(f, &m, NULL, p) == PSRPC_OK);
    }
    CHECK(WAIT_UNTIL(total_msgs(f) >= N, 5000));
    th_sleep_ms(200);
    CHECK_EQ_INT(total_msgs(f), N);
    for (int k = 0; k < N; k++) {
        char p[64];
        snprintf(p, sizeof p, "%s-%d", tag, k);
        int seen = 0;
        for (int i = 0; i < NSUB; i++)
            for (int j = 0; j < atomic_load(&f->rec[i]->msgs) && j < SUB_MAX_MSGS; j++)
                seen += strcmp(f->rec[i]->got[j], p) == 0;
        if (seen != 1) {
            fprintf(stderr, "  %s delivered %d times\n", p, seen);
            CHECK(0);
        }
    }
    sfx_free(f, false);
}

/* Topics: subscribers on "a" get only "a" messages. */
TEST(sub_topics) {
    psrpc_method m = sub_method(PSRPC_ROUTING_MULTI, PSRPC_METHOD_TOPICS, "test.Update");
    const char *topics[NSUB] = {"a", "b", "a"};
    sfx *f = sfx_new(NSUB, &m, topics);
    REQUIRE(sfx_ok(f));
    REQUIRE(publish(f, &m, "a", "for-a") == PSRPC_OK);
    REQUIRE(publish(f, &m, "b", "for-b") == PSRPC_OK);
    REQUIRE(publish(f, &m, "c", "for-c") == PSRPC_OK);
    CHECK(WAIT_UNTIL(total_msgs(f) >= 3, 5000));
    th_sleep_ms(200);
    CHECK_EQ_INT(atomic_load(&f->rec[0]->msgs), 1);
    CHECK_EQ_STR(f->rec[0]->got[0], "for-a");
    CHECK_EQ_INT(atomic_load(&f->rec[1]->msgs), 1);
    CHECK_EQ_STR(f->rec[1]->got[0], "for-b");
    CHECK_EQ_INT(atomic_load(&f->rec[2]->msgs), 1);
    CHECK_EQ_STR(f->rec[2]->got[0], "for-a");
    sfx_free(f, false);
}

/* Messages of another type than the method's output type are dropped and
 * counted as malformed; the subscription keeps working. A subscriber without
 * an output type accepts any. */
TEST(sub_wrong_type_dropped) {
    psrpc_method m = sub_method(PSRPC_ROUTING_MULTI, 0, "test.Update");
    sfx *f = sfx_new(1, &m, NULL);
    REQUIRE(sfx_ok(f));
    /* a second, untyped subscriber on the same bus */
    psrpc_method any = m;
    any.output_type = NULL;
    sub_rec *ra = (sub_rec *)calloc(1, sizeof *ra);
    psrpc_client *cla = tu_client(f->bus[1], f->service, 0, 0);
    REQUIRE(cla);
    psrpc_sub *sa = NULL;
    REQUIRE(psrpc_client_subscribe(&sa, cla, &any, NULL, 0, sub_msg_cb, NULL, ra, sub_release_cb) ==
            PSRPC_OK);
    REQUIRE(psrpc_sub_wait_ready(sa, tu_ms(5000)) == PSRPC_OK);

    uint64_t mal0 = tu_stats(f->bus[1]).dropped_malformed;
    psrpc_method other = m;
    other.output_type = "test.Other";
    REQUIRE(publish(f, &other, NULL, "wrong-type") == PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&ra->msgs) == 1, 3000));
    CHECK(WAIT_UNTIL(tu_stats(f->bus[1]).dropped_malformed > mal0, 3000));
    CHECK_EQ_INT(atomic_load(&f->rec[0]->msgs), 0);
    REQUIRE(publish(f, &m, NULL, "right-type") == PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&f->rec[0]->msgs) == 1, 3000));
    CHECK(WAIT_UNTIL(atomic_load(&ra->msgs) == 2, 3000));
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->rec[0]->msgs), 1);
    CHECK_EQ_STR(f->rec[0]->got[0], "right-type");
    CHECK_EQ_STR(ra->got[0], "wrong-type");

    /* publishing needs an output type */
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_server_publish(f->pub, &any, NULL, 0, "x", 1), PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_last_error()[0] != 0);
    /* and a subscription method */
    psrpc_method unary = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    unary.output_type = "test.Update";
    CHECK_EQ_INT(psrpc_server_publish(f->pub, &unary, NULL, 0, "x", 1), PSRPC_INVALID_ARGUMENT);
    psrpc_sub *bad = (psrpc_sub *)0x1;
    CHECK_EQ_INT(
        psrpc_client_subscribe(&bad, cla, &unary, NULL, 0, sub_msg_cb, NULL, ra, sub_release_cb),
        PSRPC_INVALID_ARGUMENT);
    CHECK(bad == NULL);

    psrpc_sub_free(sa);
    psrpc_client_free(cla);
    sfx_free(f, false);
    CHECK_EQ_INT(atomic_load(&ra->released), 1);
    psrpc_msg_release(ra->retained);
    free(ra);
}

/* psrpc_sub_close stops delivery; release and closed_cb run once; a second
 * close is OK and its closed_cb also runs once. */
TEST(sub_close_stops_delivery) {
    psrpc_method m = sub_method(PSRPC_ROUTING_MULTI, 0, "test.Update");
    sfx *f = sfx_new(2, &m, NULL);
    REQUIRE(sfx_ok(f));
    REQUIRE(publish(f, &m, NULL, "one") == PSRPC_OK);
    REQUIRE(
        WAIT_UNTIL(atomic_load(&f->rec[0]->msgs) == 1 && atomic_load(&f->rec[1]->msgs) == 1, 3000));
    atomic_int *closed = (atomic_int *)calloc(2, sizeof *closed);
    CHECK_EQ_INT(psrpc_sub_close(f->sub[0], tu_count_cb, &closed[0]), PSRPC_OK);
    CHECK_EQ_INT(psrpc_sub_close(f->sub[0], tu_count_cb, &closed[1]), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&closed[0]) == 1 && atomic_load(&closed[1]) == 1, 3000));
    CHECK(WAIT_UNTIL(atomic_load(&f->rec[0]->released) == 1, 3000));
    REQUIRE(publish(f, &m, NULL, "two") == PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&f->rec[1]->msgs) == 2, 3000));
    th_sleep_ms(200);
    CHECK_EQ_INT(atomic_load(&f->rec[0]->msgs), 1);
    CHECK_EQ_INT(atomic_load(&f->rec[0]->released), 1);
    CHECK_EQ_INT(atomic_load(&closed[0]), 1);
    CHECK_EQ_INT(atomic_load(&closed[1]), 1);
    /* waiting on a closed subscription does not block */
    int rc = psrpc_sub_wait_ready(f->sub[0], 100);
    CHECK(rc == PSRPC_OK || rc == PSRPC_CANCELED);
    sfx_free(f, false);
    free(closed);
}

/* Closing (and freeing) the subscription inside on_message: no further
 * message, even with several already published. */
TEST(sub_close_inside_callback) {
    psrpc_method m = sub_method(PSRPC_ROUTING_MULTI, 0, "test.Update");
    sfx *f = sfx_new(1, &m, NULL);
    REQUIRE(sfx_ok(f));
    atomic_store(&f->rec[0]->close_in_cb, 1);
    for (int k = 0; k < 5; k++) {
        char p[16];
        snprintf(p, sizeof p, "m%d", k);
        REQUIRE(publish(f, &m, NULL, p) == PSRPC_OK);
    }
    CHECK(WAIT_UNTIL(atomic_load(&f->rec[0]->closed) == 1, 3000));
    CHECK(WAIT_UNTIL(atomic_load(&f->rec[0]->released) == 1, 3000));
    th_sleep_ms(200);
    CHECK_EQ_INT(atomic_load(&f->rec[0]->msgs), 1);
    CHECK_EQ_STR(f->rec[0]->got[0], "m0");
    sfx_free(f, true);
}

/* Closing the client closes its subscriptions (release once). */
TEST(sub_client_close_releases) {
    psrpc_method m = sub_method(PSRPC_ROUTING_MULTI, 0, "test.Update");
    sfx *f = sfx_new(1, &m, NULL);
    REQUIRE(sfx_ok(f));
    atomic_int *closed = (atomic_int *)calloc(1, sizeof *closed);
    CHECK_EQ_INT(psrpc_client_close(f->cl[0], tu_count_cb, closed), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(closed) == 1, 3000));
    CHECK_EQ_INT(atomic_load(&f->rec[0]->released), 1); /* before the client's closed_cb */
    REQUIRE(publish(f, &m, NULL, "late") == PSRPC_OK);
    th_sleep_ms(200);
    CHECK_EQ_INT(atomic_load(&f->rec[0]->msgs), 0);
    sfx_free(f, false);
    CHECK_EQ_INT(atomic_load(closed), 1);
    free(closed);
}

/* Freeing the subscription without closing it first: release once, no
 * delivery after. */
TEST(sub_free_without_close) {
    psrpc_method m = sub_method(PSRPC_ROUTING_MULTI, 0, "test.Update");
    sfx *f = sfx_new(1, &m, NULL);
    REQUIRE(sfx_ok(f));
    psrpc_sub_free(f->sub[0]);
    CHECK(WAIT_UNTIL(atomic_load(&f->rec[0]->released) == 1, 3000));
    REQUIRE(publish(f, &m, NULL, "late") == PSRPC_OK);
    th_sleep_ms(200);
    CHECK_EQ_INT(atomic_load(&f->rec[0]->msgs), 0);
    sfx_free(f, true);
}

/* Subscribing, then waiting, from several subscriptions on one client. */
TEST(sub_many_on_one_client) {
    psrpc_bus *b[2];
    REQUIRE(open_bus_group(b, 2) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_server *pub = NULL;
    REQUIRE(psrpc_server_create(&pub, b[0], svc, NULL) == PSRPC_OK);
    psrpc_client *cl = tu_client(b[1], svc, 0, 0);
    REQUIRE(cl);
    psrpc_method m = sub_method(PSRPC_ROUTING_MULTI, PSRPC_METHOD_TOPICS, "test.Update");
    enum { K = 10 };
    sub_rec *r = (sub_rec *)calloc(K, sizeof *r);
    psrpc_sub *s[K];
    for (int i = 0; i < K; i++) {
        char t[16];
        snprintf(t, sizeof t, "t%d", i);
        const char *tt[1] = {t};
        REQUIRE(psrpc_client_subscribe(&s[i], cl, &m, tt, 1, sub_msg_cb, sub_ready_cb, &r[i],
                                       sub_release_cb) == PSRPC_OK);
    }
    for (int i = 0; i < K; i++)
        REQUIRE(psrpc_sub_wait_ready(s[i], tu_ms(5000)) == PSRPC_OK);
    for (int i = 0; i < K; i++) {
        char t[16], p[16];
        snprintf(t, sizeof t, "t%d", i);
        snprintf(p, sizeof p, "p%d", i);
        const char *tt[1] = {t};
        REQUIRE(psrpc_server_publish(pub, &m, tt, 1, p, strlen(p)) == PSRPC_OK);
    }
    for (int i = 0; i < K; i++) {
        char p[16];
        snprintf(p, sizeof p, "p%d", i);
        CHECK(WAIT_UNTIL(atomic_load(&r[i].msgs) == 1, 3000));
        CHECK_EQ_STR(r[i].got[0], p);
        CHECK_EQ_INT(atomic_load(&r[i].ready.count), 1);
    }
    psrpc_bus_free(b[1]); /* closes the client and its subscriptions */
    for (int i = 0; i < K; i++)
        CHECK_EQ_INT(atomic_load(&r[i].released), 1);
    for (int i = 0; i < K; i++)
        psrpc_sub_free(s[i]);
    psrpc_client_free(cl);
    psrpc_server_free(pub);
    psrpc_bus_free(b[0]);
    for (int i = 0; i < K; i++) {
        CHECK_EQ_INT(atomic_load(&r[i].released), 1);
        CHECK_EQ_INT(atomic_load(&r[i].msgs), 1);
        psrpc_msg_release(r[i].retained);
    }
    free(r);
}

/* Publishing on a bus that is still connecting: each publish either fails
 * (UNAVAILABLE, with a message) or its message is delivered; never accepted
 * and silently lost (R3). */
TEST(sub_publish_right_after_bus_open) {
    psrpc_method m = sub_method(PSRPC_ROUTING_MULTI, 0, "test.Update");
    sfx *f = sfx_new(1, &m, NULL);
    REQUIRE(sfx_ok(f));
    int accepted = 0, refused = 0, wrong = 0;
    /* a local bus is connected at once: nothing to race there */
    for (int round = 0; round < 5 && !tu_is_local(); round++) {
        psrpc_bus *pb = NULL;
        REQUIRE(psrpc_bus_open(&pb, tu_bus_url(), NULL) == PSRPC_OK);
        psrpc_server *ps = NULL;
        REQUIRE(psrpc_server_create(&ps, pb, f->service, NULL) == PSRPC_OK);
        for (int k = 0; k < 3; k++) {
            char p[32];
            snprintf(p, sizeof p, "early-%d-%d", round, k);
            psrpc_clear_error();
            int rc = psrpc_server_publish(ps, &m, NULL, 0, p, strlen(p));
            if (rc == PSRPC_OK)
                accepted++;
            else if (rc == PSRPC_UNAVAILABLE && psrpc_last_error()[0])
                refused++;
            else
                wrong++;
        }
        th_sleep_ms(300);
        psrpc_server_free(ps);
        psrpc_bus_free(pb);
    }
    CHECK(WAIT_UNTIL(atomic_load(&f->rec[0]->msgs) >= accepted, 3000));
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->rec[0]->msgs), accepted);
    CHECK_EQ_INT(wrong, 0);
    fprintf(stderr, "  (%d accepted, %d refused)\n", accepted, refused);
    sfx_free(f, false);
}

TEST_MAIN()
