/* add_value: the Counter.AddValue service of add_value.proto, with the
 * public libpsrpc API only.
 *
 *   add_value [--bus URL]            a server and a client in one process
 *                                    (default bus local://): three calls,
 *                                    each value printed, then a graceful close
 *   add_value --bus URL serve        serve until SIGINT or SIGTERM; prints
 *                                    "ready" once the broker confirmed the
 *                                    registration
 *   add_value --bus URL call N       one call AddValue(increment=N); prints
 *                                    the counter's new value
 *
 * The server keeps one counter; AddValue adds the request's increment to it
 * and answers with the sum. Messages are protobuf-c structs generated from
 * add_value.proto, serialized to the bytes psrpc carries.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <psrpc.h>

#include "add_value.pb-c.h"

#define SERVICE "Counter"
#define TIMEOUT_MS 5000

/* What both sides agree on about the method (protoc-gen-psrpc would derive
 * it from the .proto): a plain unary call routed to one server. */
static psrpc_method add_value_method(void) {
    psrpc_method m = PSRPC_METHOD_INIT;
    m.routing = PSRPC_ROUTING_QUEUE;
    m.name = "AddValue";
    m.output_type = "example.AddResult";
    return m;
}

/* Reports a failed psrpc call with the thread's last error. Returns -1. */
static int fail(const char *what) {
    fprintf(stderr, "add_value: %s: %s (%s)\n", what, psrpc_last_error(),
            psrpc_status_name(psrpc_last_error_status()));
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Waiting for the library's closed and release callbacks                    */
/* ------------------------------------------------------------------------ */

/* Posted by every closed callback; one close is awaited at a time. File scope
 * so that a callback arriving after a timed-out wait still finds it alive. */
static sem_t closed_sem;
/* Posted by the release callback of the AddValue registration. */
static sem_t released_sem;

static void on_closed(void *user_data) {
    (void)user_data;
    sem_post(&closed_sem);
}

static int wait_for(sem_t *sem, const char *what) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 2 * TIMEOUT_MS / 1000;
    for (;;) {
        if (sem_timedwait(sem, &deadline) == 0)
            return 0;
        if (errno != EINTR) {
            fprintf(stderr, "add_value: %s did not complete: %s\n", what, strerror(errno));
            return -1;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Server                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct counter {
    int32_t value; /* touched only by the handler, which runs on the loop thread */
} counter;

/* File scope, like the semaphores: it outlives any handler invocation. */
static counter the_counter;

static void answer_add_value(psrpc_request *request, counter *c) {
    const psrpc_msg *payload = psrpc_request_payload(request);
    Example__AddRequest *in = example__add_request__unpack(
        NULL, payload ? psrpc_msg_size(payload) : 0, payload ? psrpc_msg_data(payload) : NULL);
    if (in == NULL) {
        if (psrpc_request_fail(request, PSRPC_MALFORMED_REQUEST, "not an example.AddRequest") !=
            PSRPC_OK)
            fail("psrpc_request_fail");
        return;
    }
    /* Wraps like Go's int32 instead of overflowing. */
    c->value = (int32_t)((uint32_t)c->value + (uint32_t)in->increment);
    example__add_request__free_unpacked(in, NULL);

    Example__AddResult out = EXAMPLE__ADD_RESULT__INIT;
    out.value = c->value;
    uint8_t buf[16]; /* an int32 field takes at most 11 bytes */
    size_t len = example__add_result__get_packed_size(&out);
    if (len > sizeof buf) {
        if (psrpc_request_fail(request, PSRPC_INTERNAL, "AddResult too large") != PSRPC_OK)
            fail("psrpc_request_fail");
        return;
    }
    example__add_result__pack(&out, buf);
    if (psrpc_request_respond(request, buf, len) != PSRPC_OK)
        fail("psrpc_request_respond");
}

/* The handler: runs on the bus's loop thread and must not block. It answers
 * at once here; it could as well hand the request to another thread. */
static void handle_add_value(psrpc_request *request, void *user_data) {
    answer_add_value(request, user_data);
}

/* Runs once, after the handler can no longer be called. */
static void release_counter(void *user_data) {
    (void)user_data;
    sem_post(&released_sem);
}

/* Creates the server, registers AddValue and waits until the broker confirmed
 * the registration. *registered tells whether release_counter will run. */
static int server_start(psrpc_server **out, psrpc_bus *bus, counter *c, int *registered) {
    psrpc_server *server = NULL;
    psrpc_method method = add_value_method();

    *out = NULL;
    *registered = 0;
    if (psrpc_server_create(&server, bus, SERVICE, NULL) != PSRPC_OK)
        return fail("psrpc_server_create");
    *out = server;
    if (psrpc_server_register(server, &method, NULL, 0, handle_add_value, NULL, NULL, c,
                              release_counter) != PSRPC_OK)
        return fail("psrpc_server_register");
    *registered = 1;
    if (psrpc_server_wait_ready(server, TIMEOUT_MS) != PSRPC_OK)
        return fail("psrpc_server_wait_ready");
    return 0;
}

/* Graceful close: requests already handed to the handler are answered first. */
static int server_stop(psrpc_server *server, int registered) {
    int rc = 0;
    if (server == NULL)
        return 0;
    if (psrpc_server_close(server, 0, on_closed, NULL) != PSRPC_OK)
        rc = fail("psrpc_server_close");
    else if (wait_for(&closed_sem, "psrpc_server_close") != 0)
        return -1; /* leave the handle alone: its callbacks may still come */
    psrpc_server_free(server);
    if (registered && wait_for(&released_sem, "the AddValue release callback") != 0)
        return -1;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Client                                                                    */
/* ------------------------------------------------------------------------ */

static int call_add_value(psrpc_client *client, int32_t increment, int32_t *value) {
    Example__AddRequest req = EXAMPLE__ADD_REQUEST__INIT;
    psrpc_call_options opts = PSRPC_CALL_OPTIONS_INIT;
    psrpc_method method = add_value_method();
    psrpc_msg *response = NULL;
    uint8_t buf[16]; /* an int32 field takes at most 11 bytes */
    size_t len;

    req.increment = increment;
    len = example__add_request__get_packed_size(&req);
    if (len > sizeof buf) {
        fprintf(stderr, "add_value: AddRequest too large\n");
        return -1;
    }
    example__add_request__pack(&req, buf);
    opts.timeout_ms = TIMEOUT_MS;

    /* Blocks this thread (never a loop thread) until the answer or an error. */
    if (psrpc_client_call_sync(&response, client, &method, buf, len, &opts) != PSRPC_OK)
        return fail("AddValue");

    Example__AddResult *res =
        example__add_result__unpack(NULL, psrpc_msg_size(response), psrpc_msg_data(response));
    psrpc_msg_release(response);
    if (res == NULL) {
        fprintf(stderr, "add_value: the response is not an example.AddResult\n");
        return -1;
    }
    *value = res->value;
    example__add_result__free_unpacked(res, NULL);
    return 0;
}

static int client_start(psrpc_client **out, psrpc_bus *bus) {
    *out = NULL;
    if (psrpc_client_create(out, bus, SERVICE, NULL) != PSRPC_OK)
        return fail("psrpc_client_create");
    return 0;
}

static int client_stop(psrpc_client *client) {
    if (client == NULL)
        return 0;
    if (psrpc_client_close(client, on_closed, NULL) != PSRPC_OK) {
        fail("psrpc_client_close");
        psrpc_client_free(client);
        return -1;
    }
    if (wait_for(&closed_sem, "psrpc_client_close") != 0)
        return -1;
    psrpc_client_free(client);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Bus                                                                       */
/* ------------------------------------------------------------------------ */

static int bus_open(psrpc_bus **out, const char *url) {
    *out = NULL;
    if (psrpc_bus_open(out, url, NULL) != PSRPC_OK)
        return fail("psrpc_bus_open");
    return 0;
}

static int bus_stop(psrpc_bus *bus) {
    if (bus == NULL)
        return 0;
    if (psrpc_bus_close(bus, on_closed, NULL) != PSRPC_OK) {
        fail("psrpc_bus_close");
        psrpc_bus_free(bus);
        return -1;
    }
    if (wait_for(&closed_sem, "psrpc_bus_close") != 0)
        return -1;
    psrpc_bus_free(bus); /* joins the loop thread */
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Modes                                                                     */
/* ------------------------------------------------------------------------ */

/* Server and client in one process, on one bus. */
static int run_demo(const char *url) {
    static const int32_t increments[] = {1, 2, 3};
    psrpc_bus *bus = NULL;
    psrpc_server *server = NULL;
    psrpc_client *client = NULL;
    int registered = 0, rc = 0;

    if (bus_open(&bus, url) != 0)
        return 1;
    if (server_start(&server, bus, &the_counter, &registered) != 0 ||
        client_start(&client, bus) != 0)
        rc = -1;
    for (size_t i = 0; rc == 0 && i < sizeof increments / sizeof increments[0]; i++) {
        int32_t value;
        rc = call_add_value(client, increments[i], &value);
        if (rc == 0)
            printf("AddValue(increment=%d) -> value=%d\n", (int)increments[i], (int)value);
    }
    fflush(stdout);
    if (client_stop(client) != 0)
        rc = -1;
    if (server_stop(server, registered) != 0)
        rc = -1;
    if (bus_stop(bus) != 0)
        rc = -1;
    return rc == 0 ? 0 : 1;
}

/* Serves until SIGINT or SIGTERM. The signals are blocked before the bus
 * starts its thread (which inherits the mask) and taken with sigwait. */
static int run_serve(const char *url) {
    psrpc_bus *bus = NULL;
    psrpc_server *server = NULL;
    int registered = 0, rc = 0, sig = 0;
    sigset_t stop;

    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    if (pthread_sigmask(SIG_BLOCK, &stop, NULL) != 0) {
        fprintf(stderr, "add_value: pthread_sigmask failed\n");
        return 1;
    }
    if (bus_open(&bus, url) != 0)
        return 1;
    if (server_start(&server, bus, &the_counter, &registered) == 0) {
        printf("ready\n");
        fflush(stdout);
        if (sigwait(&stop, &sig) != 0) {
            fprintf(stderr, "add_value: sigwait failed\n");
            rc = -1;
        } else {
            fprintf(stderr, "add_value: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
        }
    } else {
        rc = -1;
    }
    if (server_stop(server, registered) != 0)
        rc = -1;
    if (bus_stop(bus) != 0)
        rc = -1;
    return rc == 0 ? 0 : 1;
}

static int run_call(const char *url, int32_t increment) {
    psrpc_bus *bus = NULL;
    psrpc_client *client = NULL;
    int32_t value = 0;
    int rc = 0;

    if (bus_open(&bus, url) != 0)
        return 1;
    if (client_start(&client, bus) != 0 || call_add_value(client, increment, &value) != 0)
        rc = -1;
    else
        printf("%d\n", (int)value);
    fflush(stdout);
    if (client_stop(client) != 0)
        rc = -1;
    if (bus_stop(bus) != 0)
        rc = -1;
    return rc == 0 ? 0 : 1;
}

static int usage(FILE *to) {
    fprintf(to, "usage: add_value [--bus URL]             server + client in one process\n"
                "       add_value [--bus URL] serve       serve until SIGINT/SIGTERM\n"
                "       add_value [--bus URL] call N      one call with increment N\n"
                "URL: local:// (default), redis://HOST:PORT, nats://HOST:PORT\n");
    return to == stdout ? 0 : 2;
}

static int parse_int32(const char *s, int32_t *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < INT32_MIN || v > INT32_MAX)
        return -1;
    *out = (int32_t)v;
    return 0;
}

int main(int argc, char **argv) {
    const char *url = "local://";
    int i = 1, rc;

    if (sem_init(&closed_sem, 0, 0) != 0 || sem_init(&released_sem, 0, 0) != 0) {
        perror("add_value: sem_init");
        return 1;
    }
    if (i < argc && (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0))
        return usage(stdout);
    if (i < argc && strcmp(argv[i], "--bus") == 0) {
        if (i + 1 >= argc)
            return usage(stderr);
        url = argv[i + 1];
        i += 2;
    }
    if (i == argc) {
        printf("libpsrpc %s, bus %s\n", psrpc_version_string(), url);
        rc = run_demo(url);
    } else if (strcmp(argv[i], "serve") == 0 && i + 1 == argc) {
        rc = run_serve(url);
    } else if (strcmp(argv[i], "call") == 0 && i + 2 == argc) {
        int32_t increment;
        if (parse_int32(argv[i + 1], &increment) != 0) {
            fprintf(stderr, "add_value: '%s' is not an int32\n", argv[i + 1]);
            return 2;
        }
        rc = run_call(url, increment);
    } else {
        return usage(stderr);
    }
    /* Not destroyed on failure: a late callback may still post them. */
    if (rc == 0) {
        sem_destroy(&closed_sem);
        sem_destroy(&released_sem);
    }
    return rc;
}
