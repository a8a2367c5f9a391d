/* A program outside the tree that uses an installed libpsrpc: built by
 * consumer.sh with `cc $(pkg-config --cflags --libs psrpc)` and by the
 * find_package(psrpc) project in consumer_cmake/. Opens a private local bus,
 * prints the library version and closes everything. */
#include <psrpc.h>

#include <stdio.h>
#include <string.h>

int main(void) {
    psrpc_bus *bus = NULL;

    if (strcmp(psrpc_version_string(), PSRPC_VERSION_STRING) != 0) {
        fprintf(stderr, "header %s but library %s\n", PSRPC_VERSION_STRING, psrpc_version_string());
        return 1;
    }
    if (psrpc_bus_open(&bus, "local://", NULL) != PSRPC_OK) {
        fprintf(stderr, "psrpc_bus_open: %s\n", psrpc_last_error());
        return 1;
    }
    printf("libpsrpc %s\n", psrpc_version_string());
    if (psrpc_bus_close(bus, NULL, NULL) != PSRPC_OK) {
        fprintf(stderr, "psrpc_bus_close: %s\n", psrpc_last_error());
        psrpc_bus_free(bus);
        return 1;
    }
    psrpc_bus_free(bus);
    return 0;
}
