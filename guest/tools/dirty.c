/* dirty MIB RATE: keeps MIB MiB of memory and writes every page of it in
 * turn at RATE MiB per second (0: as fast as it can), printing
 * "dirty<N>" once a second. The live migration tests and benchmark use it
 * as a guest that dirties memory at a steady rate while it runs: time it
 * does not run (a paused or throttled vCPU) is not made up afterwards. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: dirty MIB RATE_MIB_PER_S\n");
        return 2;
    }
    long mib = atol(argv[1]), rate = atol(argv[2]);
    if (mib <= 0) return 2;
    size_t len = (size_t)mib << 20, pages = len / 4096;
    unsigned char *m = malloc(len);
    if (!m) return 1;
    double start = now(), next_print = start + 1, due = start;
    unsigned long written = 0, tick = 0;
    for (size_t p = 0;; p = (p + 1) % pages) {
        m[p * 4096 + (written % 4096)] = (unsigned char)written;
        written++;
        if (rate > 0 && written % 256 == 0) {
            /* 256 pages = 1 MiB: keep to the rate, without catching up. */
            double t = now();
            due = (due > t ? due : t) + 1.0 / rate;
            if (due > t) usleep((useconds_t)((due - t) * 1e6));
        }
        if (written % 256 == 0 && now() >= next_print) {
            printf("dirty%lu\n", ++tick);
            fflush(stdout);
            next_print += 1;
        }
    }
}
