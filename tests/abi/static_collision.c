/* Links libpsrpc.a with the user's own protobuf-c code that defines the
 * same symbols as libpsrpc's internal generated code (user_internal.proto),
 * then uses both: the user's messages round-trip with the user's fields, and
 * an RPC over local:// (which encodes libpsrpc's own internal.Response)
 * returns the right bytes. Prints "ok" and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "psrpc.h"
#include "user_internal.pb-c.h"

static void echo(psrpc_request *req, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(req);
    psrpc_request_respond(req, psrpc_msg_data(p), psrpc_msg_size(p));
}

static int fail(const char *what) {
    printf("FAIL: %s (%s)\n", what, psrpc_last_error());
    return 1;
}

int main(void) {
    /* the user's internal.Response */
    Internal__Response r = INTERNAL__RESPONSE__INIT;
    r.text = "hello";
    r.number = 42;
    uint8_t buf[64];
    size_t n = internal__response__pack(&r, buf);
    Internal__Response *back = internal__response__unpack(NULL, n, buf);
    if (!back || strcmp(back->text, "hello") != 0 || back->number != 42)
        return fail("the user's own internal.Response does not round-trip");
    internal__response__free_unpacked(back, NULL);
    if (strcmp(internal__msg__descriptor.name, "internal.Msg") != 0 ||
        internal__msg__descriptor.n_fields != 1)
        return fail("internal__msg__descriptor is not the user's");

    /* libpsrpc's own internal.Response on the wire */
    psrpc_bus *bus = NULL;
    psrpc_server *srv = NULL;
    psrpc_client *cl = NULL;
    psrpc_method m = PSRPC_METHOD_INIT;
    m.name = "Echo";
    m.routing = PSRPC_ROUTING_QUEUE;
    if (psrpc_bus_open(&bus, "local://", NULL) != PSRPC_OK)
        return fail("psrpc_bus_open");
    if (psrpc_server_create(&srv, bus, "Svc", NULL) != PSRPC_OK ||
        psrpc_server_register(srv, &m, NULL, 0, echo, NULL, NULL, NULL, NULL) != PSRPC_OK ||
        psrpc_server_wait_ready(srv, 5000) != PSRPC_OK)
        return fail("server");
    if (psrpc_client_create(&cl, bus, "Svc", NULL) != PSRPC_OK)
        return fail("psrpc_client_create");
    psrpc_msg *out = NULL;
    if (psrpc_client_call_sync(&out, cl, &m, "payload", 7, NULL) != PSRPC_OK)
        return fail("psrpc_client_call_sync");
    int ok = psrpc_msg_size(out) == 7 && memcmp(psrpc_msg_data(out), "payload", 7) == 0;
    psrpc_msg_release(out);
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(bus);
    if (!ok)
        return fail("the echo came back wrong");
    printf("ok\n");
    return 0;
}
