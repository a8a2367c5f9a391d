// The public header as a C++ user sees it: built with -std=c++11 -pedantic
// -Wall -Wextra -Werror and linked against the shared library, which proves
// the extern "C" block covers every function this file calls.
#include <psrpc.h>

#include <cstdio>
#include <cstring>
#include <string>

static int failures;

#define EXPECT(cond)                                                                       \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            std::fprintf(stderr, "%s:%d: EXPECT(%s) failed\n", __FILE__, __LINE__, #cond); \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

// Not called: a callback with C linkage, as the function pointer types ask.
extern "C" {
static void on_call(uint64_t, const psrpc_msg *, const psrpc_error *, const char *, void *) {}
}

namespace {

bool same(const char *a, const char *b) {
    return a != nullptr && b != nullptr && std::string(a) == b;
}

} // namespace

int main() {
    psrpc_method method = PSRPC_METHOD_INIT;
    psrpc_call_options call_opts = PSRPC_CALL_OPTIONS_INIT;
    psrpc_server_options server_opts = PSRPC_SERVER_OPTIONS_INIT;
    psrpc_call_cb cb = on_call;
    (void)cb;

    EXPECT(psrpc_version() == PSRPC_VERSION_HEX);
    EXPECT(same(psrpc_version_string(), PSRPC_VERSION_STRING));
    EXPECT(method.struct_size == sizeof method);
    EXPECT(call_opts.struct_size == sizeof call_opts);
    EXPECT(server_opts.struct_size == sizeof server_opts);

    // The enum is usable as a C++ type and converts to int as in C.
    psrpc_status st = PSRPC_DEADLINE_EXCEEDED;
    EXPECT(same(psrpc_status_name(st), "PSRPC_DEADLINE_EXCEEDED"));
    EXPECT(same(psrpc_status_code(st), "deadline_exceeded"));
    EXPECT(psrpc_status_from_code("not_found") == PSRPC_NOT_FOUND);

    // Pure functions and per-thread error state work from C++.
    psrpc_clear_error();
    EXPECT(psrpc_last_error() != nullptr);
    EXPECT(psrpc_last_error_status() == PSRPC_OK);
    psrpc_msg *msg = nullptr;
    const char bytes[] = "abc";
    EXPECT(psrpc_msg_new(&msg, bytes, 3) == PSRPC_OK);
    if (msg != nullptr) {
        EXPECT(psrpc_msg_size(msg) == 3);
        EXPECT(std::memcmp(psrpc_msg_data(msg), "abc", 3) == 0);
        psrpc_msg_release(msg);
    }

    std::printf("%s: %d failures\n", __FILE__, failures);
    return failures ? 1 : 0;
}
