/* FUZZ_ASSERT: a broken invariant is a finding; the target aborts (libFuzzer
 * keeps the input) and says where. One definition for every target. */
#ifndef PSRPC_FUZZ_ASSERT_H
#define PSRPC_FUZZ_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_ASSERT(c)                                                                  \
    do {                                                                                \
        if (!(c)) {                                                                     \
            fprintf(stderr, "%s:%d: FUZZ_ASSERT failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                    \
        }                                                                               \
    } while (0)

#endif
