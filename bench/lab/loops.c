/* The peer columns' workloads: `loops cpu N` (an integer loop, no memory traffic) and
 * `loops sys N` (N getppid system calls, not cached by libc). Prints the time per operation
 * measured inside the guest, so start-up cost is not part of it. Built static at bench time. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: loops cpu|sys N\n");
        return 2;
    }
    long n = atol(argv[2]);
    volatile uint64_t sink = 0;
    double t = now();
    if (strcmp(argv[1], "cpu") == 0) {
        uint64_t x = 88172645463325252ULL;
        for (long i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        sink = x;
    } else if (strcmp(argv[1], "sys") == 0) {
        for (long i = 0; i < n; i++)
            sink += syscall(SYS_getppid);
    } else {
        fprintf(stderr, "loops: unknown workload %s\n", argv[1]);
        return 2;
    }
    double ns = now() - t;
    printf("loops %s n=%ld ns_per_op=%.3f sink=%llu\n", argv[1], n, ns / n, (unsigned long long)(sink & 1));
    return 0;
}
