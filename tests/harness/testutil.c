/* See testutil.h. */
#include "testutil.h"

#include "conf/policy.h"


#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "common/clock.h"

const char *bm_test_env(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        fail_msg("environment variable %s is not set: run integration tests "
                 "through ctest (the bm_services fixture sets it)", name);
    return v;
}

void bm_test_unique(char *buf, size_t len, const char *prefix)
{
    static unsigned counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(buf, len, "%s.%ld.%u.%lx", prefix, (long)getpid(), ++counter,
             (unsigned long)(ts.tv_nsec ^ ts.tv_sec));
}

int64_t bm_test_now_ms(void)
{
    return bm_mono_ms();
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sa;
}

int bm_test_http(int port, const char *method, const char *path, char *body, size_t bodylen)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = loopback(port);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: localhost\r\n\r\n", method, path);
    if (n < 0 || (size_t)n >= sizeof req || write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    static char resp[1 << 20];
    size_t got = 0;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        ssize_t r = -1;
        if (poll(&p, 1, 5000) == 1)
            r = read(fd, resp + got, sizeof resp - 1 - got);
        if (r < 0) {
            close(fd);
            return -1;
        }
        if (r == 0 || (got += (size_t)r) == sizeof resp - 1)
            break;
    }
    close(fd);
    resp[got] = '\0';
    int status = 0;
    const char *sep = strstr(resp, "\r\n\r\n");
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1 || sep == NULL)
        return -1;
    snprintf(body, bodylen, "%s", sep + 4);
    return status;
}

int bm_test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = loopback(0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

void bm_test_bin(char *buf, size_t len, const char *name)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(n > 0);
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    assert_non_null(slash);
    *slash = '\0';
    int w = snprintf(buf, len, "%s/../bin/%s", self, name);
    assert_true(w > 0 && (size_t)w < len);
}

int bm_test_run_selected(const char *group, const struct CMUnitTest *tests, size_t n)
{
    const char *only = getenv("BM_TEST_ONLY");
    if (only == NULL || only[0] == '\0')
        return _cmocka_run_group_tests(group, tests, n, NULL, NULL);
    struct CMUnitTest *sel = calloc(n, sizeof *sel);
    assert_non_null(sel);
    size_t k = 0;
    for (const char *p = only; *p != '\0';) {
        size_t len = strcspn(p, ",");
        size_t found = 0;
        for (size_t i = 0; i < n; i++)
            if (strlen(tests[i].name) == len && strncmp(tests[i].name, p, len) == 0 && k < n) {
                sel[k++] = tests[i];
                found = 1;
            }
        if (!found) {
            fprintf(stderr, "BM_TEST_ONLY: no test named %.*s in %s\n", (int)len, p, group);
            free(sel);
            return 1;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    int rc = _cmocka_run_group_tests(group, sel, k, NULL, NULL);
    free(sel);
    return rc;
}

struct bm_signer *bm_test_signer(const char *kid, char *pub)
{
    char err[256], *pem = NULL;
    if (bm_signer_keygen(&pem, pub, BM_POLICY_PUB_B64_LEN, err, sizeof err) != 0)
        fail_msg("keygen: %s", err);
    struct bm_signer *s = bm_signer_from_pem(pem, strlen(pem), kid, err, sizeof err);
    free(pem);
    if (s == NULL)
        fail_msg("signer: %s", err);
    return s;
}
