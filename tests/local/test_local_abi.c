/* C ABI misuse (test plan G1, G2): NULL and wrong arguments to every exported
 * function of capi/psrpc.h (the list is checked against the header itself),
 * wrong handle kinds, options structs of other sizes, status tables,
 * versions. Failing calls must return the documented status and set the
 * thread's last error; functions returning void or a pointer must not crash. */
#include "util.h"

#ifndef PSRPC_HEADER_PATH
#define PSRPC_HEADER_PATH "capi/psrpc.h"
#endif

/* Every exported function this file exercises with bad arguments. */
static const char *const covered[] = {
    "psrpc_version",
    "psrpc_version_string",
    "psrpc_status_name",
    "psrpc_status_str",
    "psrpc_status_code",
    "psrpc_status_from_code",
    "psrpc_last_error",
    "psrpc_last_error_status",
    "psrpc_clear_error",
    "psrpc_msg_new",
    "psrpc_msg_data",
    "psrpc_msg_size",
    "psrpc_msg_retain",
    "psrpc_msg_release",
    "psrpc_bus_options_init",
    "psrpc_bus_open",
    "psrpc_bus_close",
    "psrpc_bus_free",
    "psrpc_bus_get_stats",
    "psrpc_bus_watch",
    "psrpc_bus_wait_ready",
    "psrpc_bus_release",
    "psrpc_client_options_init",
    "psrpc_selection_choose",
    "psrpc_selection_fail",
    "psrpc_call_options_init",
    "psrpc_selection_options_init",
    "psrpc_client_create",
    "psrpc_client_id",
    "psrpc_client_call",
    "psrpc_client_call_multi",
    "psrpc_client_cancel",
    "psrpc_client_call_sync",
    "psrpc_client_subscribe",
    "psrpc_sub_wait_ready",
    "psrpc_sub_close",
    "psrpc_sub_free",
    "psrpc_client_close",
    "psrpc_client_free",
    "psrpc_server_options_init",
    "psrpc_server_create",
    "psrpc_server_id",
    "psrpc_server_register",
    "psrpc_server_deregister",
    "psrpc_server_wait_ready",
    "psrpc_server_publish",
    "psrpc_server_close",
    "psrpc_server_free",
    "psrpc_request_payload",
    "psrpc_request_id",
    "psrpc_request_client_id",
    "psrpc_request_method",
    "psrpc_request_topic_count",
    "psrpc_request_topic",
    "psrpc_request_metadata_count",
    "psrpc_request_metadata_at",
    "psrpc_request_metadata_get",
    "psrpc_request_sent_at_ns",
    "psrpc_request_expiry_ns",
    "psrpc_request_remaining_ms",
    "psrpc_request_respond",
    "psrpc_request_fail",
    "psrpc_request_fail_details",
    "psrpc_request_claim",
    "psrpc_client_open_stream",
    "psrpc_server_register_stream",
    "psrpc_stream_set_callbacks",
    "psrpc_stream_send",
    "psrpc_stream_close",
    "psrpc_stream_free",
    "psrpc_stream_id",
    "psrpc_stream_node_id",
    "psrpc_stream_method",
    "psrpc_stream_metadata_count",
    "psrpc_stream_metadata_at",
    "psrpc_stream_metadata_get",
    /* issue 20 additions: covered by test_local_ext.c */
    "psrpc_error_copy",
    "psrpc_error_free",
    "psrpc_client_call_sync_ex",
    "psrpc_request_abandon",
    "psrpc_stream_defer",
    "psrpc_stream_ack",
    "psrpc_stream_close_code",
    /* issue 16 additions: covered by test_local_hooks.c (issue16_bad_arguments) */
    "psrpc_client_hooks_init",
    "psrpc_client_add_hooks",
    "psrpc_server_hooks_init",
    "psrpc_server_add_hooks",
    "psrpc_hook_call_metadata_count",
    "psrpc_hook_call_metadata_at",
    "psrpc_hook_call_metadata_get",
    "psrpc_hook_call_metadata_set",
    "psrpc_hook_call_fail",
    "psrpc_retry_options_init",
    "psrpc_client_set_retries",
    "psrpc_set_log_callback",
    "psrpc_metrics_new",
    "psrpc_metrics_attach_client",
    "psrpc_metrics_attach_server",
    "psrpc_metrics_bucket_bound_ms",
    "psrpc_metrics_read",
    "psrpc_metrics_free",
    "psrpc_trace_child",
    "psrpc_trace_forward",
    "psrpc_request_reject",
    "psrpc_stream_expiry_ns",
};

/* The call returns `code`, sets a non-empty last error and its status. */
#define EXPECT_ERR(expr, code)                                                                  \
    do {                                                                                        \
        psrpc_clear_error();                                                                    \
        int rc_ = (expr);                                                                       \
        if (rc_ != (code) || psrpc_last_error()[0] == 0 || psrpc_last_error_status() != rc_) {  \
            fprintf(stderr, "  %s:%d: %s -> %d (%s) last_error \"%s\" status %d, want %s\n",    \
                    __FILE__, __LINE__, #expr, rc_, psrpc_status_name(rc_), psrpc_last_error(), \
                    psrpc_last_error_status(), #code);                                          \
            th_failed_current = 1;                                                              \
        }                                                                                       \
    } while (0)

/* Any failure status, with a last error. */
#define EXPECT_FAIL(expr)                                                                      \
    do {                                                                                       \
        psrpc_clear_error();                                                                   \
        int rc_ = (expr);                                                                      \
        if (rc_ >= 0 || psrpc_last_error()[0] == 0) {                                          \
            fprintf(stderr, "  %s:%d: %s -> %d last_error \"%s\", want a failure\n", __FILE__, \
                    __LINE__, #expr, rc_, psrpc_last_error());                                 \
            th_failed_current = 1;                                                             \
        }                                                                                      \
    } while (0)

static void nop_call(uint64_t id, const psrpc_msg *r, const psrpc_error *e, const char *s,
                     void *u) {
    (void)id, (void)r, (void)e, (void)s, (void)u;
}
static void nop_msg(psrpc_sub *s, const psrpc_msg *m, void *u) { (void)s, (void)m, (void)u; }
static void nop_handler(psrpc_request *r, void *u) {
    (void)u;
    psrpc_request_respond(r, NULL, 0);
}
static void nop_release(void *u) { (void)u; }
static void nop_state(int st, const psrpc_error *e, void *u) { (void)st, (void)e, (void)u; }

/* Reads the header and returns how many exported functions are not in
 * `covered` (printing them). */
static int missing_from_coverage(int *total) {
    FILE *fp = fopen(PSRPC_HEADER_PATH, "r");
    if (!fp) {
        fprintf(stderr, "  cannot open %s\n", PSRPC_HEADER_PATH);
        *total = 0;
        return 1;
    }
    static char text[200000];
    size_t n = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    text[n] = 0;
    int missing = 0;
    *total = 0;
    const char *p = text;
    while ((p = strstr(p, "PSRPC_API ")) != NULL) {
        p += 10;
        /* skip "#define PSRPC_API ..." lines */
        const char *ls = p;
        while (ls > text && ls[-1] != '\n')
            ls--;
        if (*ls == '#')
            continue;
        /* the identifier directly followed by '(' */
        const char *q = p;
        char name[128] = {0};
        while (*q && *q != ';') {
            if (strncmp(q, "psrpc_", 6) == 0 &&
                (q == text || !(isalnum((unsigned char)q[-1]) || q[-1] == '_'))) {
                size_t l = 0;
                while (isalnum((unsigned char)q[l]) || q[l] == '_')
                    l++;
                if (q[l] == '(') {
                    snprintf(name, sizeof name, "%.*s", (int)l, q);
                    break;
                }
                q += l;
                continue;
            }
            q++;
        }
        if (!name[0])
            continue;
        (*total)++;
        bool found = false;
        for (size_t i = 0; i < sizeof covered / sizeof covered[0]; i++)
            found |= strcmp(covered[i], name) == 0;
        if (!found) {
            fprintf(stderr, "  exported but not covered by this test: %s\n", name);
            missing++;
        }
    }
    return missing;
}

TEST(abi_every_exported_function_is_covered) {
    int total = 0;
    int missing = missing_from_coverage(&total);
    fprintf(stderr, "  %d exported functions in the header, %zu covered\n", total,
            sizeof covered / sizeof covered[0]);
    CHECK(total >= 60);
    CHECK_EQ_INT(missing, 0);
}

/* ------------------------------------------------------------------------ */

TEST(abi_version_and_status_tables) {
    CHECK_EQ_INT(psrpc_version(), PSRPC_VERSION_HEX);
    CHECK_EQ_STR(psrpc_version_string(), PSRPC_VERSION_STRING);
#define X(name, value, code, desc)                                                      \
    CHECK_EQ_STR(psrpc_status_name(value), "PSRPC_" #name);                             \
    CHECK_EQ_STR(psrpc_status_str(value), desc);                                        \
    CHECK_EQ_STR(psrpc_status_code(value), (code) ? (const char *)(code) : "internal"); \
    if (code)                                                                           \
        CHECK_EQ_INT(psrpc_status_from_code(code), value);
    PSRPC_STATUS_MAP(X)
#undef X
    CHECK_EQ_INT(psrpc_status_from_code(NULL), PSRPC_OK);
    CHECK_EQ_INT(psrpc_status_from_code(""), PSRPC_OK);
    CHECK_EQ_INT(psrpc_status_from_code("no_such_code"), PSRPC_UNKNOWN);
    CHECK_EQ_INT(psrpc_status_from_code("NOT_FOUND"), PSRPC_UNKNOWN); /* exact strings */
    CHECK_EQ_STR(psrpc_status_name(12345), "PSRPC_UNKNOWN");
    CHECK_EQ_STR(psrpc_status_name(-99), "PSRPC_UNKNOWN");
    CHECK(psrpc_status_str(12345) != NULL);
    CHECK(psrpc_status_code(12345) != NULL);
    /* values distinct */
    int vals[] = {
#define X(name, value, code, desc) value,
        PSRPC_STATUS_MAP(X)
#undef X
    };
    size_t nv = sizeof vals / sizeof vals[0];
    int dup = 0;
    for (size_t i = 0; i < nv; i++)
        for (size_t j = i + 1; j < nv; j++)
            dup += vals[i] == vals[j];
    CHECK_EQ_INT(dup, 0);
}

TEST(abi_struct_sizes) {
    CHECK_EQ_INT(sizeof(psrpc_method), PSRPC_METHOD_SIZE_V1);
    CHECK_EQ_INT(sizeof(psrpc_bus_options), PSRPC_BUS_OPTIONS_SIZE_V1);
    CHECK_EQ_INT(sizeof(psrpc_client_options), PSRPC_CLIENT_OPTIONS_SIZE_V1);
    CHECK_EQ_INT(sizeof(psrpc_server_options), PSRPC_SERVER_OPTIONS_SIZE_V1);
    CHECK_EQ_INT(sizeof(psrpc_call_options), PSRPC_CALL_OPTIONS_SIZE_V1);
    CHECK_EQ_INT(sizeof(psrpc_selection_options), PSRPC_SELECTION_OPTIONS_SIZE_V1);
    CHECK_EQ_INT(sizeof(psrpc_bus_stats), PSRPC_BUS_STATS_SIZE_V2);
    CHECK_EQ_INT(offsetof(psrpc_bus_stats, dropped_held_limit), PSRPC_BUS_STATS_SIZE_V1);
}

/* ------------------------------------------------------------------------ */

TEST(abi_null_pure_and_msg) {
    psrpc_clear_error();
    CHECK(psrpc_last_error() != NULL);
    CHECK_EQ_STR(psrpc_last_error(), "");
    psrpc_msg *m = (psrpc_msg *)0x1;
    EXPECT_ERR(psrpc_msg_new(NULL, "x", 1), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_msg_new(&m, NULL, 5), PSRPC_INVALID_ARGUMENT);
    CHECK(m == NULL);
    (void)psrpc_msg_data(NULL); /* no crash */
    CHECK_EQ_INT(psrpc_msg_size(NULL), 0);
    CHECK(psrpc_msg_retain(NULL) == NULL);
    psrpc_msg_release(NULL);

    EXPECT_ERR(psrpc_bus_options_init(NULL, sizeof(psrpc_bus_options)), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_options_init(NULL, sizeof(psrpc_client_options)),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_options_init(NULL, sizeof(psrpc_server_options)),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_call_options_init(NULL, sizeof(psrpc_call_options)), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_selection_options_init(NULL, sizeof(psrpc_selection_options)),
               PSRPC_INVALID_ARGUMENT);
    psrpc_bus_options bo;
    EXPECT_ERR(psrpc_bus_options_init(&bo, 0), PSRPC_INVALID_ARGUMENT);

    psrpc_error *ec = (psrpc_error *)0x1;
    EXPECT_ERR(psrpc_error_copy(&ec, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK(ec == NULL);
    EXPECT_ERR(psrpc_error_copy(NULL, NULL), PSRPC_INVALID_ARGUMENT);
    psrpc_error_free(NULL);

    EXPECT_ERR(psrpc_selection_choose(NULL, "SRV_x"), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_selection_fail(NULL, PSRPC_UNAVAILABLE, "x"), PSRPC_INVALID_ARGUMENT);

    /* requests */
    CHECK(psrpc_request_payload(NULL) == NULL);
    CHECK(psrpc_request_id(NULL) == NULL);
    CHECK(psrpc_request_client_id(NULL) == NULL);
    CHECK(psrpc_request_method(NULL) == NULL);
    CHECK_EQ_INT(psrpc_request_topic_count(NULL), 0);
    CHECK(psrpc_request_topic(NULL, 0) == NULL);
    CHECK_EQ_INT(psrpc_request_metadata_count(NULL), 0);
    const char *k = NULL, *v = NULL;
    EXPECT_ERR(psrpc_request_metadata_at(NULL, 0, &k, &v), PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_request_metadata_get(NULL, "k") == NULL);
    (void)psrpc_request_sent_at_ns(NULL);
    (void)psrpc_request_expiry_ns(NULL);
    (void)psrpc_request_remaining_ms(NULL);
    EXPECT_ERR(psrpc_request_respond(NULL, "x", 1), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_request_fail(NULL, PSRPC_NOT_FOUND, "x"), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_request_fail_details(NULL, "not_found", "x", NULL, 0), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_request_claim(NULL, 1.0f), PSRPC_INVALID_ARGUMENT);
    psrpc_request_abandon(NULL, PSRPC_ABORTED, "x"); /* no-op */

    /* void functions with NULL are no-ops */
    psrpc_bus_free(NULL);
    psrpc_bus_release(NULL);
    psrpc_client_free(NULL);
    psrpc_server_free(NULL);
    psrpc_sub_free(NULL);
    CHECK(psrpc_client_id(NULL) == NULL);
    CHECK(psrpc_server_id(NULL) == NULL);
}

TEST(abi_null_bus) {
    psrpc_bus *b = (psrpc_bus *)0x1;
    EXPECT_ERR(psrpc_bus_open(NULL, "local://", NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_FAIL(psrpc_bus_open(&b, "bogus://host", NULL));
    CHECK(b == NULL);
    EXPECT_ERR(psrpc_bus_close(NULL, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    psrpc_bus_stats st = {sizeof st, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    EXPECT_ERR(psrpc_bus_get_stats(NULL, &st), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_bus_watch(NULL, nop_state, NULL, nop_release), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_bus_wait_ready(NULL, 10), PSRPC_INVALID_ARGUMENT);

    /* NULL url: a private local bus */
    b = NULL;
    CHECK_EQ_INT(psrpc_bus_open(&b, NULL, NULL), PSRPC_OK);
    REQUIRE(b);
    EXPECT_ERR(psrpc_bus_get_stats(b, NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_bus_watch(b, NULL, NULL, nop_release), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_bus_wait_ready(b, 10), PSRPC_OK); /* local: at once */
    psrpc_bus_free(b);
}

typedef struct live {
    psrpc_bus *bus;
    psrpc_client *cl;
    psrpc_server *srv;
    psrpc_sub *sub;
    char service[64];
} live;

static live *live_new(void) {
    live *l = (live *)calloc(1, sizeof *l);
    tu_service(l->service, sizeof l->service);
    psrpc_bus *v[1];
    if (open_bus_group(v, 1) != 0)
        return l;
    l->bus = v[0];
    l->cl = tu_client(l->bus, l->service, 0, 0);
    psrpc_server_create(&l->srv, l->bus, l->service, NULL);
    psrpc_method sm = tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    sm.output_type = "test.Update";
    if (l->cl)
        psrpc_client_subscribe(&l->sub, l->cl, &sm, NULL, 0, nop_msg, NULL, NULL, nop_release);
    return l;
}

static bool live_ok(live *l) { return l->bus && l->cl && l->srv && l->sub; }

static void live_free(live *l) {
    psrpc_sub_free(l->sub);
    psrpc_client_free(l->cl);
    psrpc_server_free(l->srv);
    psrpc_bus_free(l->bus);
    free(l);
}

TEST(abi_null_client) {
    live *l = live_new();
    REQUIRE(live_ok(l));
    psrpc_client *c = (psrpc_client *)0x1;
    EXPECT_ERR(psrpc_client_create(NULL, l->bus, "Svc", NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_create(&c, NULL, "Svc", NULL), PSRPC_INVALID_ARGUMENT);
    CHECK(c == NULL);
    c = (psrpc_client *)0x1;
    EXPECT_ERR(psrpc_client_create(&c, l->bus, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK(c == NULL);
    /* service names outside [A-Za-z_][A-Za-z0-9_]* (test plan F6) */
    const char *bad_svc[] = {"", "bad name", "a.b", "1abc", "a|b", "a*", "a>"};
    for (size_t i = 0; i < sizeof bad_svc / sizeof bad_svc[0]; i++) {
        c = NULL;
        EXPECT_ERR(psrpc_client_create(&c, l->bus, bad_svc[i], NULL), PSRPC_INVALID_ARGUMENT);
        if (c) {
            fprintf(stderr, "    (service \"%s\" accepted)\n", bad_svc[i]);
            psrpc_client_free(c);
        }
    }
    psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
    co.timeout_ms = -1;
    EXPECT_ERR(psrpc_client_create(&c, l->bus, "Svc", &co), PSRPC_INVALID_ARGUMENT);

    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    uint64_t id;
    EXPECT_ERR(psrpc_client_call(&id, NULL, &m, "x", 1, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call(&id, l->cl, NULL, "x", 1, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &m, NULL, 5, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &m, "x", 1, NULL, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    psrpc_method bad = m;
    bad.name = NULL;
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &bad, "x", 1, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    bad.name = "";
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &bad, "x", 1, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    bad = m;
    bad.routing = 7;
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &bad, "x", 1, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    bad = m;
    bad.struct_size = 0;
    EXPECT_FAIL(psrpc_client_call(&id, l->cl, &bad, "x", 1, NULL, nop_call, NULL));
    /* subscription methods are not called */
    psrpc_method sm = tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    sm.output_type = "test.Update";
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &sm, "x", 1, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);

    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.topic_count = 1;
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &m, "x", 1, &o, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    const char *nt[1] = {NULL};
    o.topics = nt;
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &m, "x", 1, &o, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    o = (psrpc_call_options)PSRPC_CALL_OPTIONS_INIT;
    o.metadata_count = 2;
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &m, "x", 1, &o, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    psrpc_kv kv[1] = {{NULL, "v"}};
    o.metadata = kv;
    o.metadata_count = 1;
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &m, "x", 1, &o, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    kv[0] = (psrpc_kv){"k", NULL};
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &m, "x", 1, &o, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    o = (psrpc_call_options)PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = -5;
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &m, "x", 1, &o, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);

    psrpc_method fm = tu_method("Fanout", PSRPC_ROUTING_MULTI, 0);
    EXPECT_ERR(psrpc_client_call_multi(&id, NULL, &fm, "x", 1, NULL, nop_call, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call_multi(&id, l->cl, NULL, "x", 1, NULL, nop_call, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call_multi(&id, l->cl, &fm, NULL, 3, NULL, nop_call, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call_multi(&id, l->cl, &fm, "x", 1, NULL, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call_multi(&id, l->cl, &fm, "x", 1, NULL, nop_call, NULL, NULL),
               PSRPC_INVALID_ARGUMENT);

    EXPECT_ERR(psrpc_client_cancel(NULL, 1), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_client_cancel(l->cl, 0x7fffffffULL), PSRPC_OK); /* unknown: ignored */

    psrpc_msg *out = (psrpc_msg *)0x1;
    EXPECT_ERR(psrpc_client_call_sync(NULL, l->cl, &m, "x", 1, NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call_sync(&out, NULL, &m, "x", 1, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK(out == NULL);
    EXPECT_ERR(psrpc_client_call_sync(&out, l->cl, NULL, "x", 1, NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call_sync(&out, l->cl, &m, NULL, 1, NULL), PSRPC_INVALID_ARGUMENT);
    psrpc_error *sx = NULL;
    EXPECT_ERR(psrpc_client_call_sync_ex(NULL, NULL, l->cl, &m, "x", 1, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call_sync_ex(&out, &sx, NULL, &m, "x", 1, NULL),
               PSRPC_INVALID_ARGUMENT);
    CHECK(out == NULL);
    CHECK(sx != NULL && sx->status == PSRPC_INVALID_ARGUMENT);
    psrpc_error_free(sx);

    psrpc_sub *s = (psrpc_sub *)0x1;
    EXPECT_ERR(psrpc_client_subscribe(NULL, l->cl, &sm, NULL, 0, nop_msg, NULL, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_subscribe(&s, NULL, &sm, NULL, 0, nop_msg, NULL, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    CHECK(s == NULL);
    EXPECT_ERR(psrpc_client_subscribe(&s, l->cl, NULL, NULL, 0, nop_msg, NULL, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_subscribe(&s, l->cl, &sm, NULL, 0, NULL, NULL, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_subscribe(&s, l->cl, &sm, NULL, 1, nop_msg, NULL, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_subscribe(&s, l->cl, &m, NULL, 0, nop_msg, NULL, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);

    EXPECT_ERR(psrpc_sub_wait_ready(NULL, 10), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_sub_close(NULL, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_close(NULL, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    live_free(l);
}

TEST(abi_null_server) {
    live *l = live_new();
    REQUIRE(live_ok(l));
    psrpc_server *s = (psrpc_server *)0x1;
    EXPECT_ERR(psrpc_server_create(NULL, l->bus, "Svc", NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_create(&s, NULL, "Svc", NULL), PSRPC_INVALID_ARGUMENT);
    CHECK(s == NULL);
    EXPECT_ERR(psrpc_server_create(&s, l->bus, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    s = NULL;
    EXPECT_ERR(psrpc_server_create(&s, l->bus, "bad name", NULL), PSRPC_INVALID_ARGUMENT);
    psrpc_server_free(s);
    psrpc_server_options so = PSRPC_SERVER_OPTIONS_INIT;
    /* Any UTF-8 id is accepted, as in Go (ids travel in messages only);
     * invalid UTF-8 cannot go into a protobuf string. */
    const char *bad_ids[] = {"\xff", "SRV_\xc0\xaf"};
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
        so.server_id = bad_ids[i];
        s = NULL;
        EXPECT_ERR(psrpc_server_create(&s, l->bus, "Svc", &so), PSRPC_INVALID_ARGUMENT);
        if (s) {
            fprintf(stderr, "    (server id \"%s\" accepted)\n", bad_ids[i]);
            psrpc_server_free(s);
        }
    }
    const char *good_ids[] = {"srv-1.a", "SRV_a|b", "SRV_*", "bad id!", "软件"};
    for (size_t i = 0; i < sizeof good_ids / sizeof good_ids[0]; i++) {
        so.server_id = good_ids[i];
        s = NULL;
        CHECK_EQ_INT(psrpc_server_create(&s, l->bus, "Svc", &so), PSRPC_OK);
        CHECK_EQ_STR(psrpc_server_id(s), good_ids[i]);
        psrpc_server_free(s);
    }
    so.server_id = ""; /* as Go: generated */
    s = NULL;
    CHECK_EQ_INT(psrpc_server_create(&s, l->bus, "Svc", &so), PSRPC_OK);
    CHECK(s && strncmp(psrpc_server_id(s), "SRV_", 4) == 0);
    psrpc_server_free(s);
    s = NULL;
    so = (psrpc_server_options)PSRPC_SERVER_OPTIONS_INIT;
    so.timeout_ms = -1;
    EXPECT_ERR(psrpc_server_create(&s, l->bus, "Svc", &so), PSRPC_INVALID_ARGUMENT);
    CHECK(s == NULL);

    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    EXPECT_ERR(psrpc_server_register(NULL, &m, NULL, 0, nop_handler, NULL, NULL, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(
        psrpc_server_register(l->srv, NULL, NULL, 0, nop_handler, NULL, NULL, NULL, nop_release),
        PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_register(l->srv, &m, NULL, 0, NULL, NULL, NULL, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(
        psrpc_server_register(l->srv, &m, NULL, 1, nop_handler, NULL, NULL, NULL, nop_release),
        PSRPC_INVALID_ARGUMENT);
    const char *nt[1] = {NULL};
    EXPECT_ERR(psrpc_server_register(l->srv, &m, nt, 1, nop_handler, NULL, NULL, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    const char *names[] = {"", "bad.name", "1abc", "a b", "a|b", "a*"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        psrpc_method b = m;
        b.name = names[i];
        int was = th_failed_current;
        th_failed_current = 0;
        EXPECT_ERR(
            psrpc_server_register(l->srv, &b, NULL, 0, nop_handler, NULL, NULL, NULL, nop_release),
            PSRPC_INVALID_ARGUMENT);
        if (th_failed_current)
            fprintf(stderr, "    (method name \"%s\")\n", names[i]);
        th_failed_current |= was;
    }
    psrpc_method b = m;
    b.routing = 3;
    EXPECT_ERR(
        psrpc_server_register(l->srv, &b, NULL, 0, nop_handler, NULL, NULL, NULL, nop_release),
        PSRPC_INVALID_ARGUMENT);
    /* servers publish subscription methods, they do not register them */
    psrpc_method sm = tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    sm.output_type = "test.Update";
    EXPECT_ERR(
        psrpc_server_register(l->srv, &sm, NULL, 0, nop_handler, NULL, NULL, NULL, nop_release),
        PSRPC_INVALID_ARGUMENT);

    EXPECT_ERR(psrpc_server_deregister(NULL, "Echo", NULL, 0), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_deregister(l->srv, NULL, NULL, 0), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_deregister(l->srv, "Echo", NULL, 1), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_deregister(l->srv, "Echo", NULL, 0), PSRPC_NOT_FOUND);
    EXPECT_ERR(psrpc_server_wait_ready(NULL, 10), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_server_wait_ready(l->srv, 10), PSRPC_OK); /* nothing registered */

    EXPECT_ERR(psrpc_server_publish(NULL, &sm, NULL, 0, "x", 1), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_publish(l->srv, NULL, NULL, 0, "x", 1), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_publish(l->srv, &sm, NULL, 0, NULL, 1), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_publish(l->srv, &sm, NULL, 1, "x", 1), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_close(NULL, 0, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    live_free(l);
}

static int nop_smsg(psrpc_stream *st, const psrpc_msg *m, void *u) {
    (void)st, (void)m, (void)u;
    return 0;
}
static void nop_sclose(psrpc_stream *st, const psrpc_error *e, void *u) {
    (void)st, (void)e, (void)u;
}
static void nop_shandler(psrpc_stream *st, void *u) {
    (void)u;
    psrpc_stream_free(st);
}
static void nop_done(const psrpc_error *e, void *u) { (void)e, (void)u; }

TEST(abi_null_stream) {
    live *l = live_new();
    REQUIRE(live_ok(l));
    psrpc_method sm = tu_method("Chat", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    psrpc_method um = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    psrpc_stream *st = (psrpc_stream *)0x1;
    EXPECT_ERR(psrpc_client_open_stream(NULL, l->cl, &sm, NULL, NULL, nop_smsg, nop_sclose, NULL,
                                        nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_open_stream(&st, NULL, &sm, NULL, NULL, nop_smsg, nop_sclose, NULL,
                                        nop_release),
               PSRPC_INVALID_ARGUMENT);
    CHECK(st == NULL);
    EXPECT_ERR(psrpc_client_open_stream(&st, l->cl, NULL, NULL, NULL, nop_smsg, nop_sclose, NULL,
                                        nop_release),
               PSRPC_INVALID_ARGUMENT);
    /* on_message and on_close are not optional (only on_open "may be NULL") */
    st = NULL;
    EXPECT_ERR(
        psrpc_client_open_stream(&st, l->cl, &sm, NULL, NULL, NULL, nop_sclose, NULL, nop_release),
        PSRPC_INVALID_ARGUMENT);
    psrpc_stream_free(st);
    st = NULL;
    EXPECT_ERR(
        psrpc_client_open_stream(&st, l->cl, &sm, NULL, NULL, nop_smsg, NULL, NULL, nop_release),
        PSRPC_INVALID_ARGUMENT);
    psrpc_stream_free(st);
    st = NULL;
    /* not a stream method */
    EXPECT_ERR(psrpc_client_open_stream(&st, l->cl, &um, NULL, NULL, nop_smsg, nop_sclose, NULL,
                                        nop_release),
               PSRPC_INVALID_ARGUMENT);
    CHECK(st == NULL);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.topic_count = 1;
    EXPECT_ERR(psrpc_client_open_stream(&st, l->cl, &sm, &o, NULL, nop_smsg, nop_sclose, NULL,
                                        nop_release),
               PSRPC_INVALID_ARGUMENT);

    EXPECT_ERR(psrpc_server_register_stream(NULL, &sm, NULL, 0, nop_shandler, NULL, NULL, NULL,
                                            nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_register_stream(l->srv, NULL, NULL, 0, nop_shandler, NULL, NULL, NULL,
                                            nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(
        psrpc_server_register_stream(l->srv, &sm, NULL, 0, NULL, NULL, NULL, NULL, nop_release),
        PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_register_stream(l->srv, &sm, NULL, 1, nop_shandler, NULL, NULL, NULL,
                                            nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_register_stream(l->srv, &um, NULL, 0, nop_shandler, NULL, NULL, NULL,
                                            nop_release),
               PSRPC_INVALID_ARGUMENT);
    /* the unary entry points refuse stream methods */
    EXPECT_ERR(
        psrpc_server_register(l->srv, &sm, NULL, 0, nop_handler, NULL, NULL, NULL, nop_release),
        PSRPC_INVALID_ARGUMENT);
    uint64_t id;
    EXPECT_ERR(psrpc_client_call(&id, l->cl, &sm, "x", 1, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);

    EXPECT_ERR(psrpc_stream_set_callbacks(NULL, nop_smsg, nop_sclose, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_stream_send(NULL, "x", 1, 0, nop_done, NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_stream_close(NULL, 0, NULL), PSRPC_INVALID_ARGUMENT);
    psrpc_stream_free(NULL);
    CHECK(psrpc_stream_id(NULL) == NULL);
    CHECK(psrpc_stream_node_id(NULL) == NULL);
    CHECK(psrpc_stream_method(NULL) == NULL);
    CHECK_EQ_INT(psrpc_stream_metadata_count(NULL), 0);
    const char *k = NULL, *v = NULL;
    EXPECT_ERR(psrpc_stream_metadata_at(NULL, 0, &k, &v), PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_stream_metadata_get(NULL, "k") == NULL);

    /* handles of another kind */
    EXPECT_ERR(psrpc_stream_send((psrpc_stream *)l->cl, "x", 1, 0, nop_done, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_stream_close((psrpc_stream *)l->srv, 0, NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(
        psrpc_stream_set_callbacks((psrpc_stream *)l->sub, nop_smsg, nop_sclose, NULL, nop_release),
        PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_stream_id((psrpc_stream *)l->bus) == NULL);
    live_free(l);
}

/* A handle of one kind passed as another (as a binding's cast could):
 * INVALID_ARGUMENT, never a crash. */
TEST(abi_wrong_handle_kind) {
    live *l = live_new();
    REQUIRE(live_ok(l));
    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    uint64_t id;
    EXPECT_ERR(psrpc_client_call(&id, (psrpc_client *)l->srv, &m, "x", 1, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_call(&id, (psrpc_client *)l->bus, &m, "x", 1, NULL, nop_call, NULL),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_cancel((psrpc_client *)l->sub, 1), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_client_close((psrpc_client *)l->srv, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_register((psrpc_server *)l->cl, &m, NULL, 0, nop_handler, NULL, NULL,
                                     NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_close((psrpc_server *)l->bus, 0, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_bus_close((psrpc_bus *)l->cl, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_bus_watch((psrpc_bus *)l->srv, nop_state, NULL, nop_release),
               PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_bus_wait_ready((psrpc_bus *)l->sub, 10), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_server_wait_ready((psrpc_server *)l->cl, 10), PSRPC_INVALID_ARGUMENT);
    psrpc_bus_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    EXPECT_ERR(psrpc_bus_get_stats((psrpc_bus *)l->srv, &st), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_sub_close((psrpc_sub *)l->cl, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_sub_wait_ready((psrpc_sub *)l->bus, 10), PSRPC_INVALID_ARGUMENT);
    psrpc_client *c = NULL;
    EXPECT_ERR(psrpc_client_create(&c, (psrpc_bus *)l->cl, "Svc", NULL), PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_client_id((psrpc_client *)l->srv) == NULL);
    CHECK(psrpc_server_id((psrpc_server *)l->cl) == NULL);
    EXPECT_ERR(psrpc_request_respond((psrpc_request *)l->srv, "x", 1), PSRPC_INVALID_ARGUMENT);
    EXPECT_ERR(psrpc_request_claim((psrpc_request *)l->bus, 1.0f), PSRPC_INVALID_ARGUMENT);
    psrpc_request_abandon((psrpc_request *)l->cl, PSRPC_ABORTED, "x"); /* no-op */
    /* everything still works afterwards */
    CHECK_EQ_INT(psrpc_client_cancel(l->cl, 1), PSRPC_OK);
    live_free(l);
}

/* ------------------------------------------------------------------------ */
/* Options struct sizes                                                      */
/* ------------------------------------------------------------------------ */

/* A buffer laid out as a caller compiled with a newer, larger struct. */
typedef struct big {
    uint8_t bytes[256];
} big;

#define BIG_OF(type, init_value, extra, tailbyte)       \
    ({                                                  \
        big b_;                                         \
        memset(&b_, 0, sizeof b_);                      \
        type t_ = init_value;                           \
        memcpy(b_.bytes, &t_, sizeof t_);               \
        uint32_t sz_ = (uint32_t)(sizeof t_ + (extra)); \
        memcpy(b_.bytes, &sz_, 4);                      \
        b_.bytes[sizeof t_ + (extra)-1] = (tailbyte);   \
        b_;                                             \
    })

TEST(abi_options_sizes_bus) {
    /* smaller (V1 prefix up to max_message_size) accepted */
    psrpc_bus_options small = PSRPC_BUS_OPTIONS_INIT;
    small.struct_size = 16;
    psrpc_bus *b = NULL;
    CHECK_EQ_INT(psrpc_bus_open(&b, NULL, &small), PSRPC_OK);
    psrpc_bus_free(b);
    /* larger with a zero tail accepted, non-zero tail refused */
    big z = BIG_OF(psrpc_bus_options, PSRPC_BUS_OPTIONS_INIT, 16, 0);
    b = NULL;
    CHECK_EQ_INT(psrpc_bus_open(&b, NULL, (const psrpc_bus_options *)z.bytes), PSRPC_OK);
    psrpc_bus_free(b);
    big nz = BIG_OF(psrpc_bus_options, PSRPC_BUS_OPTIONS_INIT, 16, 1);
    b = (psrpc_bus *)0x1;
    EXPECT_ERR(psrpc_bus_open(&b, NULL, (const psrpc_bus_options *)nz.bytes), PSRPC_NOT_SUPPORTED);
    CHECK(b == NULL);
    /* unknown flags refused rather than ignored? flags are reserved: 0 */
}

TEST(abi_options_sizes_client_server) {
    psrpc_bus *v[1];
    REQUIRE(open_bus_group(v, 1) == 0);
    psrpc_bus *bus = v[0];
    char svc[64];
    tu_service(svc, sizeof svc);

    psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
    co.struct_size = 24; /* without client_id */
    co.client_id = "CLI_shouldnotbeused";
    psrpc_client *c = NULL;
    CHECK_EQ_INT(psrpc_client_create(&c, bus, svc, &co), PSRPC_OK);
    if (c)
        CHECK(strcmp(psrpc_client_id(c), "CLI_shouldnotbeused") != 0);
    psrpc_client_free(c);
    big z = BIG_OF(psrpc_client_options, PSRPC_CLIENT_OPTIONS_INIT, 8, 0);
    c = NULL;
    CHECK_EQ_INT(psrpc_client_create(&c, bus, svc, (const psrpc_client_options *)z.bytes),
                 PSRPC_OK);
    psrpc_client_free(c);
    big nz = BIG_OF(psrpc_client_options, PSRPC_CLIENT_OPTIONS_INIT, 8, 0x80);
    c = (psrpc_client *)0x1;
    EXPECT_ERR(psrpc_client_create(&c, bus, svc, (const psrpc_client_options *)nz.bytes),
               PSRPC_NOT_SUPPORTED);
    CHECK(c == NULL);

    psrpc_server_options so = PSRPC_SERVER_OPTIONS_INIT;
    so.struct_size = 16; /* without server_id */
    so.server_id = "SRV_shouldnotbeused";
    psrpc_server *s = NULL;
    CHECK_EQ_INT(psrpc_server_create(&s, bus, svc, &so), PSRPC_OK);
    if (s)
        CHECK(strcmp(psrpc_server_id(s), "SRV_shouldnotbeused") != 0);
    psrpc_server_free(s);
    big sz = BIG_OF(psrpc_server_options, PSRPC_SERVER_OPTIONS_INIT, 32, 0);
    s = NULL;
    CHECK_EQ_INT(psrpc_server_create(&s, bus, svc, (const psrpc_server_options *)sz.bytes),
                 PSRPC_OK);
    psrpc_server_free(s);
    big snz = BIG_OF(psrpc_server_options, PSRPC_SERVER_OPTIONS_INIT, 32, 7);
    s = (psrpc_server *)0x1;
    EXPECT_ERR(psrpc_server_create(&s, bus, svc, (const psrpc_server_options *)snz.bytes),
               PSRPC_NOT_SUPPORTED);
    CHECK(s == NULL);
    psrpc_bus_free(bus);
}

static void count_call(uint64_t id, const psrpc_msg *r, const psrpc_error *e, const char *s,
                       void *u) {
    (void)id, (void)r, (void)s;
    tu_call *c = (tu_call *)u;
    c->status = e ? e->status : 0;
    atomic_fetch_add(&c->count, 1);
}

TEST(abi_options_sizes_call_selection_method) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server);
    /* a method struct from a caller that knows no output_type */
    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_AFFINITY, 0);
    m.struct_size = 24;
    m.output_type = (const char *)0x1; /* beyond struct_size: never read */
    REQUIRE(tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 0, 0);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(6);
    uint64_t id;

    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.struct_size = 16; /* only timeout_ms */
    o.timeout_ms = 3000;
    o.selection = (const psrpc_selection_options *)0x1; /* beyond: never read */
    CHECK_EQ_INT(psrpc_client_call(&id, cl, &m, "a", 1, &o, count_call, &c[0]), PSRPC_OK);
    CHECK(tu_wait_count(&c[0].count, 1, 5000));
    CHECK_EQ_INT(c[0].status, PSRPC_OK);

    big z = BIG_OF(psrpc_call_options, PSRPC_CALL_OPTIONS_INIT, 8, 0);
    CHECK_EQ_INT(psrpc_client_call(&id, cl, &m, "b", 1, (const psrpc_call_options *)z.bytes,
                                   count_call, &c[1]),
                 PSRPC_OK);
    CHECK(tu_wait_count(&c[1].count, 1, 5000));
    big nz = BIG_OF(psrpc_call_options, PSRPC_CALL_OPTIONS_INIT, 8, 1);
    EXPECT_ERR(psrpc_client_call(&id, cl, &m, "c", 1, (const psrpc_call_options *)nz.bytes,
                                 count_call, &c[2]),
               PSRPC_NOT_SUPPORTED);

    /* selection options: smaller (no select callback) and larger */
    psrpc_selection_options so = PSRPC_SELECTION_OPTIONS_INIT;
    so.struct_size = 24; /* flags, min, max, affinity_timeout */
    so.flags = PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE;
    so.affinity_timeout_ms = 1000;
    so.select = (psrpc_select_cb)0x1; /* beyond: never called */
    o = (psrpc_call_options)PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    CHECK_EQ_INT(psrpc_client_call(&id, cl, &m, "d", 1, &o, count_call, &c[3]), PSRPC_OK);
    CHECK(tu_wait_count(&c[3].count, 1, 5000));
    CHECK_EQ_INT(c[3].status, PSRPC_OK);
    big sz = BIG_OF(psrpc_selection_options, PSRPC_SELECTION_OPTIONS_INIT, 8, 0);
    ((psrpc_selection_options *)sz.bytes)->flags = PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE;
    ((psrpc_selection_options *)sz.bytes)->affinity_timeout_ms = 1000;
    o.selection = (const psrpc_selection_options *)sz.bytes;
    CHECK_EQ_INT(psrpc_client_call(&id, cl, &m, "e", 1, &o, count_call, &c[4]), PSRPC_OK);
    CHECK(tu_wait_count(&c[4].count, 1, 5000));
    CHECK_EQ_INT(c[4].status, PSRPC_OK);
    big snz = BIG_OF(psrpc_selection_options, PSRPC_SELECTION_OPTIONS_INIT, 8, 9);
    o.selection = (const psrpc_selection_options *)snz.bytes;
    EXPECT_ERR(psrpc_client_call(&id, cl, &m, "f", 1, &o, count_call, &c[5]), PSRPC_NOT_SUPPORTED);

    /* method struct larger with a non-zero tail */
    big mnz = BIG_OF(psrpc_method, PSRPC_METHOD_INIT, 8, 1);
    ((psrpc_method *)mnz.bytes)->name = "Echo";
    ((psrpc_method *)mnz.bytes)->routing = PSRPC_ROUTING_AFFINITY;
    EXPECT_ERR(psrpc_client_call(&id, cl, (const psrpc_method *)mnz.bytes, "g", 1, NULL, count_call,
                                 &c[5]),
               PSRPC_NOT_SUPPORTED);
    th_sleep_ms(50);
    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    CHECK_EQ_INT(atomic_load(&c[0].count), 1);
    CHECK_EQ_INT(atomic_load(&c[1].count), 1);
    CHECK_EQ_INT(atomic_load(&c[2].count), 0);
    CHECK_EQ_INT(atomic_load(&c[3].count), 1);
    CHECK_EQ_INT(atomic_load(&c[4].count), 1);
    CHECK_EQ_INT(atomic_load(&c[5].count), 0);
    free(c);
    tu_srv_destroy(srv);
}

/* *_options_init: fills the INIT values; with a smaller size writes only that
 * prefix. */
TEST(abi_options_init) {
    psrpc_bus_options bo;
    memset(&bo, 0xab, sizeof bo);
    CHECK_EQ_INT(psrpc_bus_options_init(&bo, sizeof bo), PSRPC_OK);
    psrpc_bus_options bi = PSRPC_BUS_OPTIONS_INIT;
    CHECK(memcmp(&bo, &bi, sizeof bo) == 0);
    memset(&bo, 0xab, sizeof bo);
    CHECK_EQ_INT(psrpc_bus_options_init(&bo, 16), PSRPC_OK);
    CHECK_EQ_INT(bo.struct_size, 16);
    CHECK_EQ_INT(bo.max_message_size, 0);
    CHECK_EQ_INT((uint64_t)bo.queue_capacity, 0xababababababababULL); /* untouched */

    psrpc_client_options co;
    memset(&co, 0xab, sizeof co);
    CHECK_EQ_INT(psrpc_client_options_init(&co, sizeof co), PSRPC_OK);
    psrpc_client_options ci = PSRPC_CLIENT_OPTIONS_INIT;
    CHECK(memcmp(&co, &ci, sizeof co) == 0);

    psrpc_server_options so;
    memset(&so, 0xab, sizeof so);
    CHECK_EQ_INT(psrpc_server_options_init(&so, sizeof so), PSRPC_OK);
    psrpc_server_options si = PSRPC_SERVER_OPTIONS_INIT;
    CHECK(memcmp(&so, &si, sizeof so) == 0);

    psrpc_call_options o;
    memset(&o, 0xab, sizeof o);
    CHECK_EQ_INT(psrpc_call_options_init(&o, sizeof o), PSRPC_OK);
    psrpc_call_options oi = PSRPC_CALL_OPTIONS_INIT;
    CHECK(memcmp(&o, &oi, sizeof o) == 0);
    memset(&o, 0xab, sizeof o);
    CHECK_EQ_INT(psrpc_call_options_init(&o, 16), PSRPC_OK);
    CHECK_EQ_INT(o.struct_size, 16);
    CHECK(o.topics == (const char *const *)(uintptr_t)0xababababababababULL);

    psrpc_selection_options sel;
    memset(&sel, 0xab, sizeof sel);
    CHECK_EQ_INT(psrpc_selection_options_init(&sel, sizeof sel), PSRPC_OK);
    psrpc_selection_options seli = PSRPC_SELECTION_OPTIONS_INIT;
    CHECK(memcmp(&sel, &seli, sizeof sel) == 0);
}

/* Stats: a caller knowing fewer fields gets only those written. */
TEST(abi_stats_smaller_struct) {
    psrpc_bus *b = NULL;
    REQUIRE(psrpc_bus_open(&b, NULL, NULL) == PSRPC_OK);
    psrpc_bus_stats s;
    memset(&s, 0xab, sizeof s);
    s.struct_size = 24; /* struct_size, reserved, connects, disconnects */
    CHECK_EQ_INT(psrpc_bus_get_stats(b, &s), PSRPC_OK);
    CHECK_EQ_INT(s.struct_size, 24);
    CHECK(s.reconnect_attempts == 0xababababababababULL);
    CHECK(s.streams_open == 0xababababababababULL);
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    CHECK_EQ_INT(psrpc_bus_get_stats(b, &s), PSRPC_OK);
    CHECK_EQ_INT(s.requests_in_flight, 0);
    CHECK_EQ_INT(s.dropped_malformed, 0);
    /* a caller built against V1 gets V1's fields and nothing past them */
    memset(&s, 0xab, sizeof s);
    s.struct_size = PSRPC_BUS_STATS_SIZE_V1;
    CHECK_EQ_INT(psrpc_bus_get_stats(b, &s), PSRPC_OK);
    CHECK_EQ_INT(s.struct_size, PSRPC_BUS_STATS_SIZE_V1);
    CHECK_EQ_INT(s.streams_open, 0);
    CHECK(s.dropped_held_limit == 0xababababababababULL);
    psrpc_bus_free(b);
}

TEST_MAIN()
