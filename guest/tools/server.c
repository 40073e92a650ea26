/* server PORT: the small "server" of the consolidation benchmark
 * (benches/src/consolidation.rs). It listens on TCP PORT; each connection
 * (served by a process of its own) carries requests of one line each,
 * "N\n", asking for N rounds of CPU work (a xorshift loop: no memory
 * traffic, no system calls), answered "ok X\n" with the loop's result (so
 * that the work cannot be optimized away). The host side sends requests
 * at a fixed rate and measures each one's latency from outside; N is
 * calibrated so that the guest takes the share of the host CPU the
 * benchmark wants. Prints "server: listening on PORT" once ready. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Rounds one request may ask for: a bound, not a limit anyone reaches. */
#define MAX_ROUNDS 4000000000UL

static unsigned long work(unsigned long n) {
    unsigned long x = 88172645463325252UL;
    for (unsigned long i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void serve(int c) {
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char buf[4096];
    size_t have = 0;
    for (;;) {
        ssize_t r = read(c, buf + have, sizeof buf - 1 - have);
        if (r <= 0) return;
        have += (size_t)r;
        buf[have] = 0;
        char *line = buf, *nl;
        while ((nl = memchr(line, '\n', have - (size_t)(line - buf))) != NULL) {
            *nl = 0;
            unsigned long n = strtoul(line, NULL, 10);
            if (n > MAX_ROUNDS) n = MAX_ROUNDS;
            char out[64];
            int len = snprintf(out, sizeof out, "ok %lu\n", work(n));
            if (write_all(c, out, (size_t)len) < 0) return;
            line = nl + 1;
        }
        have -= (size_t)(line - buf);
        memmove(buf, line, have);
        if (have == sizeof buf - 1) return; /* a line longer than the buffer */
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: server PORT\n");
        return 2;
    }
    int port = atoi(argv[1]);
    if (port <= 0 || port > 65535) return 2;
    signal(SIGCHLD, SIG_IGN); /* no zombies */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
        perror("server");
        return 1;
    }
    printf("server: listening on %d\n", port);
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        pid_t p = fork();
        if (p == 0) {
            close(s);
            serve(c);
            _exit(0);
        }
        close(c);
    }
}
