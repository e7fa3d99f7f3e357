/* Round trips through the C ABI and checks the error paths.
 * Usage: roundtrip REPO_DIR WORK_DIR. Prints "all checks passed". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "asheville.h"

static int failures = 0;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
            fprintf(stderr, __VA_ARGS__);                             \
            fprintf(stderr, " (last error: %s)\n", ash_last_error()); \
            failures++;                                               \
        }                                                             \
    } while (0)

#define OK(call) CHECK((call) == ASH_STATUS_OK, "%s", #call)

static unsigned char *pattern(size_t n, unsigned seed) {
    unsigned char *p = malloc(n);
    unsigned x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)x;
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: roundtrip REPO_DIR WORK_DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    const char *work = argv[2];
    mkdir(work, 0755);
    AshRepo *repo = NULL;

    /* Create, then close and open again. */
    OK(ash_repo_create(dir, NULL, "acme", "pw", &repo));
    ash_repo_close(repo);
    repo = NULL;
    CHECK(ash_repo_open(dir, "acme", "wrong", &repo) == ASH_STATUS_WRONG_KEY, "wrong passphrase");
    CHECK(repo == NULL, "no handle after a failure");
    CHECK(strlen(ash_last_error()) > 0, "a message for the failure");
    OK(ash_repo_open(dir, "acme", "pw", &repo));

    /* A buffer round trip. */
    size_t n = 300000;
    unsigned char *data = pattern(n, 1);
    OK(ash_put_buffer(repo, "/docs/a.bin", data, n));
    unsigned char *got = NULL;
    size_t got_len = 0;
    OK(ash_get_buffer(repo, "/docs/a.bin", &got, &got_len));
    CHECK(got_len == n && memcmp(got, data, n) == 0, "buffer bytes");
    ash_buffer_free(got, got_len);

    /* Streaming write of 3 MiB in odd pieces, then streaming read. */
    size_t big = 3u << 20;
    unsigned char *bigdata = pattern(big, 2);
    AshWriter *w = NULL;
    OK(ash_writer_open(repo, "/docs/big.bin", &w));
    for (size_t off = 0; off < big;) {
        size_t piece = 70001 < big - off ? 70001 : big - off;
        OK(ash_writer_write(w, bigdata + off, piece));
        off += piece;
    }
    OK(ash_writer_finish(w));
    AshReader *r = NULL;
    OK(ash_reader_open(repo, "/docs/big.bin", &r));
    unsigned char *back = malloc(big);
    size_t total = 0, got_n = 0;
    do {
        char buf[65536];
        OK(ash_reader_read(r, (uint8_t *)buf, sizeof buf, &got_n));
        if (total + got_n <= big) memcpy(back + total, buf, got_n);
        total += got_n;
    } while (got_n > 0);
    ash_reader_close(r);
    CHECK(total == big && memcmp(back, bigdata, big) == 0, "streamed bytes (%zu of %zu)", total, big);
    free(back);

    /* An aborted writer commits nothing. */
    OK(ash_writer_open(repo, "/docs/never.bin", &w));
    OK(ash_writer_write(w, data, 1000));
    ash_writer_abort(w);
    char *json = NULL;
    CHECK(ash_stat(repo, "/docs/never.bin", &json) == ASH_STATUS_NOT_FOUND, "aborted write invisible");

    /* Paths: put a local file, get it back. */
    char local[4096], restored[4096];
    snprintf(local, sizeof local, "%s/local.bin", work);
    snprintf(restored, sizeof restored, "%s/restored.bin", work);
    FILE *f = fopen(local, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
    OK(ash_put_path(repo, "/files/local.bin", local));
    OK(ash_get_path(repo, "/files/local.bin", restored));
    f = fopen(restored, "rb");
    unsigned char *rb = malloc(n + 1);
    size_t rn = f ? fread(rb, 1, n + 1, f) : 0;
    if (f) fclose(f);
    CHECK(rn == n && memcmp(rb, data, n) == 0, "file round trip");
    free(rb);

    /* stat and list. */
    OK(ash_stat(repo, "/docs/big.bin", &json));
    CHECK(json && strstr(json, "\"size\":3145728"), "stat json: %s", json ? json : "(null)");
    ash_string_free(json);
    json = NULL;
    OK(ash_list(repo, "/docs", 1, NULL, 1, &json));
    CHECK(json && strstr(json, "a.bin") && strstr(json, "\"cursor\":\""), "first page: %s", json ? json : "(null)");
    ash_string_free(json);
    json = NULL;

    /* Delete. */
    OK(ash_delete(repo, "/docs/a.bin"));
    CHECK(ash_get_buffer(repo, "/docs/a.bin", &got, &got_len) == ASH_STATUS_NOT_FOUND, "deleted");
    CHECK(strstr(ash_last_error(), "not_found") != NULL, "message names the kind: %s", ash_last_error());

    /* Sync a local directory and read usage. */
    OK(ash_sync_dir(repo, "alice", "work", work, &json));
    CHECK(json && strstr(json, "\"state\":\"succeeded\""), "sync: %s", json ? json : "(null)");
    ash_string_free(json);
    json = NULL;
    OK(ash_sync_status(repo, "alice", &json));
    CHECK(json && strstr(json, "\"name\":\"work\"") && strstr(json, "\"state\":\"succeeded\""), "sync status: %s", json ? json : "(null)");
    ash_string_free(json);
    json = NULL;
    OK(ash_usage(repo, "storage.bytes_ingested", &json));
    CHECK(json && strstr(json, "\"value\""), "usage: %s", json ? json : "(null)");
    ash_string_free(json);
    json = NULL;

    /* Error paths: nulls, bad paths, bad UTF-8. */
    CHECK(ash_put_buffer(NULL, "/x", data, 1) == ASH_STATUS_INVALID_INPUT, "null repo");
    CHECK(ash_put_buffer(repo, NULL, data, 1) == ASH_STATUS_INVALID_INPUT, "null path");
    CHECK(ash_put_buffer(repo, "/x", NULL, 1) == ASH_STATUS_INVALID_INPUT, "null data");
    CHECK(ash_put_buffer(repo, "/a/../b", data, 1) == ASH_STATUS_INVALID_INPUT, "dot-dot path");
    CHECK(ash_get_buffer(repo, "\xff\xfe", &got, &got_len) == ASH_STATUS_INVALID_INPUT, "bad UTF-8");
    CHECK(ash_stat(repo, "/docs/big.bin", NULL) == ASH_STATUS_INVALID_INPUT, "null out");
    CHECK(ash_reader_open(repo, "/missing", &r) == ASH_STATUS_NOT_FOUND, "missing reader");
    CHECK(ash_writer_open(repo, "/docs/null-out.bin", NULL) == ASH_STATUS_INVALID_INPUT, "null writer out");
    CHECK(ash_stat(repo, "/docs/null-out.bin", &json) == ASH_STATUS_NOT_FOUND, "a refused writer writes nothing");
    CHECK(ash_repo_open(dir, "acme", "pw", NULL) == ASH_STATUS_INVALID_INPUT, "null repo out");
    CHECK(ash_repo_open("/nonexistent/asheville", "acme", "pw", &repo) != ASH_STATUS_OK, "missing repo");
    ash_repo_close(NULL);
    ash_reader_close(NULL);
    ash_writer_abort(NULL);
    ash_buffer_free(NULL, 0);
    ash_string_free(NULL);

    ash_repo_close(repo);
    free(data);
    free(bigdata);
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("asheville %s: all checks passed\n", ash_version());
    return 0;
}
