/* Per-call cost of the shim: run with and without LD_PRELOAD and compare.
 *
 *   bench_calls MODE N [PORT]
 *   devnull-write  N x write(/dev/null, 1 byte)            (unprotected fd)
 *   devnull-read   N x read(/dev/zero, 1 byte)             (unprotected fd)
 *   prot-write     N x write(accepted socket, 1 byte)      (protected, nothing unlogged)
 *   prot-read      N x read(accepted socket, 1 byte)       (protected: one report each)
 *   pingpong       N x {client 1 B -> server read -> server write -> client read}
 *                  (each server write waits until its read is logged)
 * Prints "MODE ns_per_op".  The socket modes listen on 127.0.0.1:PORT and
 * connect to themselves, so the accepted socket is protected when FTCP_PORT=PORT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long n;
static int cli, srv;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *drain(void *arg)
{
    (void)arg;
    char buf[65536];
    long got = 0;
    while (got < n) {
        ssize_t r = read(cli, buf, sizeof buf);
        if (r <= 0) break;
        got += r;
    }
    return NULL;
}

static void *feed(void *arg)
{
    (void)arg;
    char buf[65536];
    memset(buf, 'x', sizeof buf);
    long sent = 0;
    while (sent < n) {
        ssize_t r = write(cli, buf, n - sent < (long)sizeof buf ? (size_t)(n - sent) : sizeof buf);
        if (r <= 0) break;
        sent += r;
    }
    return NULL;
}

static void sockpair(int port)
{
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (void *)&a, sizeof a) || listen(l, 1)) { perror("listen"); exit(1); }
    cli = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(cli, (void *)&a, sizeof a)) { perror("connect"); exit(1); }
    srv = accept(l, NULL, NULL);
    setsockopt(cli, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(srv, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    close(l);
}

int main(int argc, char **argv)
{
    if (argc < 3) return 2;
    const char *mode = argv[1];
    n = atol(argv[2]);
    int port = argc > 3 ? atoi(argv[3]) : 0;
    char c = 'x';
    double t0, t1;
    pthread_t th;
    if (!strcmp(mode, "devnull-write") || !strcmp(mode, "devnull-read")) {
        int w = mode[8] == 'w';
        int fd = open(w ? "/dev/null" : "/dev/zero", w ? O_WRONLY : O_RDONLY);
        t0 = now();
        for (long i = 0; i < n; i++)
            if ((w ? write(fd, &c, 1) : read(fd, &c, 1)) != 1) return 1;
        t1 = now();
    } else if (!strcmp(mode, "prot-write")) {
        sockpair(port);
        pthread_create(&th, NULL, drain, NULL);
        t0 = now();
        for (long i = 0; i < n; i++)
            if (write(srv, &c, 1) != 1) return 1;
        t1 = now();
        pthread_join(th, NULL);
    } else if (!strcmp(mode, "prot-read")) {
        sockpair(port);
        pthread_create(&th, NULL, feed, NULL);
        t0 = now();
        for (long i = 0; i < n; i++)
            if (read(srv, &c, 1) != 1) return 1;
        t1 = now();
        pthread_join(th, NULL);
    } else if (!strcmp(mode, "pingpong")) {
        sockpair(port);
        t0 = now();
        for (long i = 0; i < n; i++) {
            if (write(cli, &c, 1) != 1 || read(srv, &c, 1) != 1) return 1;
            if (write(srv, &c, 1) != 1 || read(cli, &c, 1) != 1) return 1;
        }
        t1 = now();
    } else {
        return 2;
    }
    printf("%s %.1f\n", mode, (t1 - t0) * 1e9 / n);
    close(srv);
    close(cli);
    return 0;
}
