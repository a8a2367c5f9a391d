/* The frozen sizes of the size-prefixed structs (style.md 2.5): each
 * PSRPC_*_SIZE_V1 is the LP64 sizeof of the struct's first layout. A field
 * added anywhere but the end, or a changed type, breaks the build here.
 * At run time the library accepts a caller compiled against the V1 layout. */
#include <psrpc.h>

#include <stddef.h>
#include <stdio.h>

#if !defined(__LP64__)
#error "abi_sizes.c checks the LP64 layout; tests/abi/CMakeLists.txt only builds it there"
#endif

_Static_assert(sizeof(psrpc_method) == PSRPC_METHOD_SIZE_V1, "psrpc_method layout changed");
_Static_assert(sizeof(psrpc_bus_options) == PSRPC_BUS_OPTIONS_SIZE_V1,
               "psrpc_bus_options layout changed");
_Static_assert(sizeof(psrpc_bus_stats) == PSRPC_BUS_STATS_SIZE_V2,
               "psrpc_bus_stats layout changed");
/* V2 appended one field at the end of the V1 layout. */
_Static_assert(offsetof(psrpc_bus_stats, dropped_held_limit) == PSRPC_BUS_STATS_SIZE_V1,
               "psrpc_bus_stats grew elsewhere than at the end");
_Static_assert(sizeof(psrpc_client_options) == PSRPC_CLIENT_OPTIONS_SIZE_V1,
               "psrpc_client_options layout changed");
_Static_assert(sizeof(psrpc_selection_options) == PSRPC_SELECTION_OPTIONS_SIZE_V1,
               "psrpc_selection_options layout changed");
_Static_assert(sizeof(psrpc_call_options) == PSRPC_CALL_OPTIONS_SIZE_V1,
               "psrpc_call_options layout changed");
_Static_assert(sizeof(psrpc_server_options) == PSRPC_SERVER_OPTIONS_SIZE_V1,
               "psrpc_server_options layout changed");

/* struct_size leads every one of them, so the library can read it first. */
_Static_assert(offsetof(psrpc_method, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(psrpc_bus_options, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(psrpc_bus_stats, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(psrpc_client_options, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(psrpc_selection_options, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(psrpc_call_options, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(psrpc_server_options, struct_size) == 0, "struct_size first");

static int failures;

#define EXPECT_OK(call)                                                         \
    do {                                                                        \
        int st_ = (call);                                                       \
        if (st_ != PSRPC_OK) {                                                  \
            fprintf(stderr, "%s:%d: %s = %s (%s)\n", __FILE__, __LINE__, #call, \
                    psrpc_status_name(st_), psrpc_last_error());                \
            failures++;                                                         \
        }                                                                       \
    } while (0)

int main(void) {
    psrpc_bus_options bus_opts;
    psrpc_client_options client_opts;
    psrpc_selection_options sel_opts;
    psrpc_call_options call_opts;
    psrpc_server_options server_opts;

    /* A caller compiled against V1 passes the V1 size. */
    EXPECT_OK(psrpc_bus_options_init(&bus_opts, PSRPC_BUS_OPTIONS_SIZE_V1));
    EXPECT_OK(psrpc_client_options_init(&client_opts, PSRPC_CLIENT_OPTIONS_SIZE_V1));
    EXPECT_OK(psrpc_selection_options_init(&sel_opts, PSRPC_SELECTION_OPTIONS_SIZE_V1));
    EXPECT_OK(psrpc_call_options_init(&call_opts, PSRPC_CALL_OPTIONS_SIZE_V1));
    EXPECT_OK(psrpc_server_options_init(&server_opts, PSRPC_SERVER_OPTIONS_SIZE_V1));
    if (bus_opts.struct_size != PSRPC_BUS_OPTIONS_SIZE_V1 ||
        client_opts.struct_size != PSRPC_CLIENT_OPTIONS_SIZE_V1 ||
        sel_opts.struct_size != PSRPC_SELECTION_OPTIONS_SIZE_V1 ||
        call_opts.struct_size != PSRPC_CALL_OPTIONS_SIZE_V1 ||
        server_opts.struct_size != PSRPC_SERVER_OPTIONS_SIZE_V1) {
        fprintf(stderr, "an *_options_init did not record the caller's struct_size\n");
        failures++;
    }

    printf("%s: %d failures\n", __FILE__, failures);
    return failures ? 1 : 0;
}
