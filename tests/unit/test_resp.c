/* Redis commands are formatted by our RESP writer (redis_conn.c), straight
 * into the connection's write buffer. It must produce exactly what the hiredis
 * command formatter produces for the same arguments. */
#include <hiredis/hiredis.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "redis_conn.h"

static void check_same(int argc, const char *const *argv, const size_t *lens) {
    char *want = NULL;
    int wn = redisFormatCommandArgv(&want, argc, (const char **)argv, lens);
    REQUIRE(wn > 0 && want);
    size_t n = psrpc__resp_size(argc, argv, lens);
    CHECK_EQ_INT(n, (size_t)wn);
    char *got = malloc(n + 1);
    REQUIRE(got);
    got[n] = 'x';
    CHECK_EQ_INT(psrpc__resp_write(got, argc, argv, lens), n);
    CHECK(memcmp(got, want, n) == 0);
    CHECK(got[n] == 'x'); /* nothing written past the size */
    free(got);
    redisFreeCommand(want);
}

TEST(resp_matches_hiredis_formatter) {
    const char *a1[] = {"PING"};
    size_t l1[] = {4};
    check_same(1, a1, l1);

    const char *a2[] = {"PUBLISH", "svc|Method|REQ", "\x00\x01\r\n$*binary"};
    size_t l2[] = {7, 14, 12};
    check_same(3, a2, l2);

    const char *a3[] = {"SET", "", "", "EX", "5", "NX"}; /* empty arguments */
    size_t l3[] = {3, 0, 0, 2, 1, 2};
    check_same(6, a3, l3);

    /* lengths across digit-count boundaries, up to a 1 MiB payload */
    size_t sizes[] = {9, 10, 99, 100, 999, 1000, 65535, 65536, 1 << 20};
    char *big = malloc(1 << 20);
    REQUIRE(big);
    for (size_t i = 0; i < (1u << 20); i++)
        big[i] = (char)(i * 131 + 7);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        const char *a[] = {"PUBLISH", "chan", big};
        size_t l[] = {7, 4, sizes[i]};
        check_same(3, a, l);
    }
    free(big);

    /* 12 arguments: a two-digit count */
    const char *a4[12];
    size_t l4[12];
    for (int i = 0; i < 12; i++) {
        a4[i] = "arg";
        l4[i] = 3;
    }
    check_same(12, a4, l4);
}

/* libuv takes buffer lengths as unsigned int and SSL_write as int: the
 * connection writes larger buffers in pieces (issue 20, item 9). Every piece
 * fits both types unchanged, and the pieces add up to the whole. */
TEST(write_pieces_fit_libuv_and_openssl_lengths) {
    CHECK(PSRPC__RCONN_MAX_WRITE <= (size_t)INT_MAX);
    CHECK(PSRPC__RCONN_MAX_WRITE <= (size_t)UINT_MAX);
    const size_t sizes[] = {0,
                            1,
                            4096,
                            PSRPC__RCONN_MAX_WRITE - 1,
                            PSRPC__RCONN_MAX_WRITE,
                            PSRPC__RCONN_MAX_WRITE + 1,
                            (size_t)UINT_MAX,
                            (size_t)UINT_MAX + 1,
                            ((size_t)5 << 30) + 3,
                            ((size_t)1 << 40) + 7};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t left = sizes[i], total = 0, pieces = 0;
        while (left > 0) {
            size_t piece = psrpc__rconn_write_chunk(left);
            CHECK(piece > 0 && piece <= left);
            CHECK((size_t)(unsigned int)piece == piece);
            CHECK((size_t)(int)piece == piece);
            if (piece == 0 || piece > left)
                break;
            left -= piece;
            total += piece;
            pieces++;
        }
        CHECK_EQ_INT(total, sizes[i]);
        CHECK_EQ_INT(pieces, (sizes[i] + PSRPC__RCONN_MAX_WRITE - 1) / PSRPC__RCONN_MAX_WRITE);
    }
    CHECK_EQ_INT(psrpc__rconn_write_chunk(SIZE_MAX), PSRPC__RCONN_MAX_WRITE);
}

TEST_MAIN()
