/* The public header as a strict C99 user sees it: built with -std=c99
 * -pedantic -Wall -Wextra -Werror (tests/abi/CMakeLists.txt), linked against
 * the shared library, and run: the header and the library it was built
 * against agree on versions, status tables and option defaults. */
#include <psrpc.h>

#include <stdio.h>
#include <string.h>

static int failures;

#define EXPECT(cond)                                                                  \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: EXPECT(%s) failed\n", __FILE__, __LINE__, #cond); \
            failures++;                                                               \
        }                                                                             \
    } while (0)

static int str_eq(const char *a, const char *b) {
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}

static void check_status(int value, const char *name, const char *code) {
    EXPECT(str_eq(psrpc_status_name(value), name));
    EXPECT(psrpc_status_str(value) != NULL && psrpc_status_str(value)[0] != '\0');
    /* Local-only codes (wire string NULL) travel as "internal". */
    EXPECT(str_eq(psrpc_status_code(value), code ? code : "internal"));
    if (code != NULL)
        EXPECT(psrpc_status_from_code(code) == value);
}

int main(void) {
    psrpc_method method = PSRPC_METHOD_INIT;
    psrpc_bus_options bus_opts = PSRPC_BUS_OPTIONS_INIT;
    psrpc_client_options client_opts = PSRPC_CLIENT_OPTIONS_INIT;
    psrpc_selection_options sel_opts = PSRPC_SELECTION_OPTIONS_INIT;
    psrpc_call_options call_opts = PSRPC_CALL_OPTIONS_INIT;
    psrpc_server_options server_opts = PSRPC_SERVER_OPTIONS_INIT;

    EXPECT(psrpc_version() == PSRPC_VERSION_HEX);
    EXPECT(str_eq(psrpc_version_string(), PSRPC_VERSION_STRING));

#define CHECK_STATUS(name, value, code, desc) check_status(PSRPC_##name, "PSRPC_" #name, code);
    PSRPC_STATUS_MAP(CHECK_STATUS)
#undef CHECK_STATUS
    EXPECT(psrpc_status_from_code(NULL) == PSRPC_OK);
    EXPECT(psrpc_status_from_code("no_such_code") == PSRPC_UNKNOWN);

    EXPECT(method.struct_size == sizeof method);
    EXPECT(bus_opts.struct_size == sizeof bus_opts);
    EXPECT(client_opts.struct_size == sizeof client_opts);
    EXPECT(sel_opts.struct_size == sizeof sel_opts);
    EXPECT(call_opts.struct_size == sizeof call_opts);
    EXPECT(server_opts.struct_size == sizeof server_opts);

    memset(&bus_opts, 0xff, sizeof bus_opts);
    EXPECT(psrpc_bus_options_init(&bus_opts, sizeof bus_opts) == PSRPC_OK);
    EXPECT(bus_opts.struct_size == sizeof bus_opts);
    memset(&client_opts, 0xff, sizeof client_opts);
    EXPECT(psrpc_client_options_init(&client_opts, sizeof client_opts) == PSRPC_OK);
    EXPECT(client_opts.struct_size == sizeof client_opts);
    memset(&call_opts, 0xff, sizeof call_opts);
    EXPECT(psrpc_call_options_init(&call_opts, sizeof call_opts) == PSRPC_OK);
    EXPECT(call_opts.struct_size == sizeof call_opts);
    memset(&sel_opts, 0xff, sizeof sel_opts);
    EXPECT(psrpc_selection_options_init(&sel_opts, sizeof sel_opts) == PSRPC_OK);
    EXPECT(sel_opts.struct_size == sizeof sel_opts);
    memset(&server_opts, 0xff, sizeof server_opts);
    EXPECT(psrpc_server_options_init(&server_opts, sizeof server_opts) == PSRPC_OK);
    EXPECT(server_opts.struct_size == sizeof server_opts);

    printf("%s: %d failures\n", __FILE__, failures);
    return failures ? 1 : 0;
}
