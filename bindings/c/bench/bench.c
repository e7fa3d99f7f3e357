/* put / get of one buffer through the C ABI, timed.
 * Usage: bench REPO_DIR MIB. Prints "put <seconds> get <seconds>". */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "asheville.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    size_t n = (size_t)atol(argv[2]) << 20;
    unsigned char *data = malloc(n);
    unsigned long long x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        memcpy(data + i, &x, n - i < 8 ? n - i : 8);
    }
    AshRepo *repo;
    if (ash_repo_create(argv[1], NULL, "bench", "pw", &repo)) {
        fprintf(stderr, "%s\n", ash_last_error());
        return 1;
    }
    double t0 = now();
    if (ash_put_buffer(repo, "/big", data, n)) { fprintf(stderr, "%s\n", ash_last_error()); return 1; }
    double t1 = now();
    unsigned char *out; size_t len;
    if (ash_get_buffer(repo, "/big", &out, &len)) { fprintf(stderr, "%s\n", ash_last_error()); return 1; }
    double t2 = now();
    if (len != n || memcmp(out, data, n) != 0) { fprintf(stderr, "mismatch\n"); return 1; }
    ash_buffer_free(out, len);
    ash_repo_close(repo);
    free(data);
    printf("put %.4f get %.4f\n", t1 - t0, t2 - t1);
    return 0;
}
