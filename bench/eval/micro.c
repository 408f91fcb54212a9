/* berth's evaluation micro-benchmarks (lmbench style), one static binary run in every column.
 *
 *   micro getpid SECS          getpid(2) latency (raw syscall, not cached by libc)
 *   micro fork SECS            fork + _exit + waitpid
 *   micro exec SECS            fork + execv(this binary, "noop") + waitpid
 *   micro ctxsw SECS           context switch: 1-byte pipe ping-pong between two processes
 *   micro ctxsw1 SECS          the same with both processes on one CPU (the lowest this process
 *                              may use): every round trip is two real switches, no cross-CPU
 *                              wake-up (which ctxsw, on an idle 2-CPU machine, mostly measures)
 *   micro syscalls SECS        getpid, ctxsw and ctxsw1
 *   micro seccomp TEST ARG...  install a one-instruction seccomp filter (SECCOMP_RET_ALLOW for
 *                              every call) with no_new_privs, then run TEST: the kernel's own cost
 *                              of a seccomp filter on the syscall path, whatever the filter says
 *   micro pagefault SECS       touch fresh anonymous pages (mmap 16 MiB, write one byte a page)
 *   micro files DIR SECS       create + close + unlink of an empty file in DIR (batches of 64);
 *                              also prints `micro files_inode ino=N`, the first file's inode
 *   micro all DIR [TMPDIR [FILES]] SECS
 *                              every test above (but syscalls and seccomp), SECS each; with TMPDIR, files again there
 *                              (reported as files_tmpfs); with FILES, each files test does
 *                              FILES creates+deletes (rounded up to 64) instead of running SECS
 *   micro cpu SECS             integer loop (xorshift), no memory traffic: ops/s
 *   micro fileio DIR SECS      write 1 MiB (64 KiB chunks) + fdatasync + read back + unlink: MB/s
 *   micro memhog MIB SECS      keep rewriting MIB of anonymous memory (a noisy neighbour)
 *   micro cpuhog N SECS        N spinning processes (a noisy neighbour)
 *   micro forkbomb MAX SECS    processes forking until MAX exist (or fork fails), all churning
 *                              fork+exit until SECS have passed (a noisy neighbour)
 *   micro victim DIR SECS      cpu SECS then fileio DIR SECS (the isolation experiment's victim)
 *   micro run PATH ARG...      execv PATH (lets the peers' runners start another program)
 *   micro stamp                print CLOCK_MONOTONIC (to time a script from inside a column)
 *   micro noop                 exit 0
 *
 * Every workload runs for a fixed time (checked every batch), measured inside the column so
 * start-up is not part of it, and prints `micro TEST ns_per_op=X ops_per_s=Y n=N`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char self[4096];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void report(const char *name, double secs, double n) {
    printf("micro %s ns_per_op=%.3f ops_per_s=%.3f n=%.0f\n", name, secs * 1e9 / n, n / secs, n);
    fflush(stdout);
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void t_getpid(double secs) {
    double t0 = now(), t;
    long n = 0;
    do {
        for (int i = 0; i < 10000; i++) syscall(SYS_getpid);
        n += 10000;
    } while ((t = now()) - t0 < secs);
    report("getpid", t - t0, n);
}

static void t_fork(double secs, int do_exec) {
    double t0 = now(), t;
    long n = 0;
    do {
        for (int i = 0; i < 10; i++) {
            pid_t p = fork();
            if (p < 0) die("fork");
            if (p == 0) {
                if (do_exec) {
                    execl(self, "micro", "noop", (char *)NULL);
                    _exit(127);
                }
                _exit(0);
            }
            int st;
            if (waitpid(p, &st, 0) < 0) die("waitpid");
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "child failed (status %d)\n", st);
                exit(1);
            }
        }
        n += 10;
    } while ((t = now()) - t0 < secs);
    report(do_exec ? "exec" : "fork", t - t0, n);
}

/* Pin this process (and the children it forks from now on) to the lowest CPU it may run on. */
static void one_cpu(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set)) die("sched_getaffinity");
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &set)) {
            CPU_ZERO(&set);
            CPU_SET(cpu, &set);
            if (sched_setaffinity(0, sizeof set, &set)) die("sched_setaffinity");
            return;
        }
    }
    fprintf(stderr, "no CPU in the affinity mask\n");
    exit(1);
}

static void t_ctxsw(double secs, int pinned) {
    int a[2], b[2];
    cpu_set_t saved;
    if (pinned) {
        if (sched_getaffinity(0, sizeof saved, &saved)) die("sched_getaffinity");
        one_cpu();
    }
    if (pipe(a) || pipe(b)) die("pipe");
    pid_t p = fork();
    if (p < 0) die("fork");
    char c = 'x';
    if (p == 0) {
        close(a[1]);
        close(b[0]);
        while (read(a[0], &c, 1) == 1)
            if (write(b[1], &c, 1) != 1) break;
        _exit(0);
    }
    close(a[0]);
    close(b[1]);
    double t0 = now(), t;
    long n = 0;
    do {
        for (int i = 0; i < 1000; i++) {
            if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1) die("pipe ping-pong");
        }
        n += 1000;
    } while ((t = now()) - t0 < secs);
    close(a[1]);
    close(b[0]);
    waitpid(p, NULL, 0);
    if (pinned && sched_setaffinity(0, sizeof saved, &saved)) die("sched_setaffinity");
    /* one round trip = two switches */
    report(pinned ? "ctxsw1" : "ctxsw", t - t0, 2.0 * n);
}

/* A filter that allows every system call: what any filter costs on the syscall path. */
static void seccomp_allow_all(void) {
    struct sock_filter insn[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog prog = {.len = 1, .filter = insn};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("prctl(PR_SET_NO_NEW_PRIVS)");
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) die("prctl(PR_SET_SECCOMP)");
}

static void t_pagefault(double secs) {
    const size_t len = 16 << 20;
    long page = sysconf(_SC_PAGESIZE);
    double t0 = now(), t;
    long n = 0;
    do {
        char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) die("mmap");
        for (size_t o = 0; o < len; o += page) m[o] = 1;
        munmap(m, len);
        n += len / page;
    } while ((t = now()) - t0 < secs);
    report("pagefault", t - t0, n);
}

static void t_files(const char *dir, double secs, long count, const char *name) {
    char path[4096];
    double t0 = now(), t;
    long n = 0;
    unsigned long ino = 0;
    do {
        for (int i = 0; i < 64; i++) {
            snprintf(path, sizeof path, "%s/micro-%d-%d", dir, (int)getpid(), i);
            int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
            if (fd < 0) die(path);
            struct stat st;
            if (!ino && !fstat(fd, &st)) ino = st.st_ino;
            close(fd);
        }
        for (int i = 0; i < 64; i++) {
            snprintf(path, sizeof path, "%s/micro-%d-%d", dir, (int)getpid(), i);
            if (unlink(path)) die(path);
        }
        n += 64;
        t = now();
    } while (count > 0 ? n < count : t - t0 < secs);
    report(name, t - t0, n);
    /* the first file's inode number: on ext4 (and an overlay whose layers share one) it names
       the block group whose inode allocator the test ran in */
    printf("micro %s_inode ino=%lu\n", name, ino);
}

static void t_cpu(double secs) {
    volatile uint64_t sink;
    uint64_t x = 88172645463325252ULL;
    double t0 = now(), t;
    long n = 0;
    do {
        for (int i = 0; i < 1000000; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        n += 1000000;
    } while ((t = now()) - t0 < secs);
    sink = x;
    (void)sink;
    report("cpu", t - t0, n);
}

static void t_fileio(const char *dir, double secs) {
    static char buf[65536];
    char path[4096];
    memset(buf, 'b', sizeof buf);
    snprintf(path, sizeof path, "%s/micro-io-%d", dir, (int)getpid());
    double t0 = now(), t;
    double bytes = 0;
    do {
        int fd = open(path, O_CREAT | O_TRUNC | O_RDWR, 0644);
        if (fd < 0) die(path);
        for (int i = 0; i < 16; i++)
            if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) die("write");
        if (fdatasync(fd)) die("fdatasync");
        if (lseek(fd, 0, SEEK_SET)) die("lseek");
        for (int i = 0; i < 16; i++)
            if (read(fd, buf, sizeof buf) != (ssize_t)sizeof buf) die("read");
        close(fd);
        unlink(path);
        bytes += 2.0 * 16 * sizeof buf;
    } while ((t = now()) - t0 < secs);
    /* ops = MB moved (written + read) */
    report("fileio", t - t0, bytes / 1e6);
}

static void t_memhog(long mib, double secs) {
    size_t len = (size_t)mib << 20;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) die("mmap");
    double t0 = now(), t;
    long n = 0;
    int v = 0;
    do {
        memset(m, ++v, len);
        n++;
    } while ((t = now()) - t0 < secs);
    report("memhog", t - t0, n * (double)mib);
}

static void spin_until(double end) {
    volatile uint64_t x = 1;
    while (now() < end)
        for (int i = 0; i < 100000; i++) x = x * 6364136223846793005ULL + 1;
}

static void t_cpuhog(int n, double secs) {
    double end = now() + secs;
    for (int i = 1; i < n; i++) {
        pid_t p = fork();
        if (p == 0) {
            spin_until(end);
            _exit(0);
        }
    }
    spin_until(end);
    while (wait(NULL) > 0) {
    }
    printf("micro cpuhog done\n");
}

static void t_forkbomb(long max, double secs) {
    double end = now() + secs;
    long *count = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (count == MAP_FAILED) die("mmap");
    *count = 1;
    long failed = 0;
    signal(SIGCHLD, SIG_DFL);
    while (now() < end) {
        pid_t p;
        if (__atomic_load_n(count, __ATOMIC_RELAXED) < max) {
            p = fork();
            if (p == 0) {
                __atomic_add_fetch(count, 1, __ATOMIC_RELAXED);
                continue; /* the child bombs too */
            }
        } else {
            p = fork();
            if (p == 0) _exit(0); /* churn */
            if (p > 0) waitpid(p, NULL, 0);
        }
        if (p < 0) failed++;
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
    }
    while (wait(NULL) > 0) {
    }
    _exit(0);
}

int main(int argc, char **argv) {
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k > 0)
        self[k] = 0;
    else
        snprintf(self, sizeof self, "%s", argv[0]);
    if (argc < 2) goto usage;
    const char *t = argv[1];
    /* MICRO_START_AT=EPOCH (CLOCK_REALTIME seconds): concurrent copies start measuring together */
    const char *at = getenv("MICRO_START_AT");
    if (at && strcmp(t, "noop") && strcmp(t, "run")) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double wait = atof(at) - (ts.tv_sec + ts.tv_nsec / 1e9);
        if (wait > 60) wait = 60;
        if (wait > 0) {
            struct timespec d = {(time_t)wait, (long)((wait - (long)wait) * 1e9)};
            nanosleep(&d, NULL);
        } else {
            printf("micro late_s=%.3f\n", -wait);
        }
    }
    if (!strcmp(t, "seccomp") && argc >= 3) {
        seccomp_allow_all();
        argc--;
        argv++;
        t = argv[1];
    }
    if (!strcmp(t, "noop")) return 0;
    if (!strcmp(t, "stamp")) {
        printf("micro stamp t=%.6f\n", now());
        return 0;
    }
    if (!strcmp(t, "run") && argc >= 3) {
        execv(argv[2], argv + 2);
        die(argv[2]);
    }
    if (argc < 3) goto usage;
    double secs = atof(argv[argc - 1]);
    if (!strcmp(t, "getpid")) t_getpid(secs);
    else if (!strcmp(t, "fork")) t_fork(secs, 0);
    else if (!strcmp(t, "exec")) t_fork(secs, 1);
    else if (!strcmp(t, "ctxsw")) t_ctxsw(secs, 0);
    else if (!strcmp(t, "ctxsw1")) t_ctxsw(secs, 1);
    else if (!strcmp(t, "syscalls")) {
        t_getpid(secs);
        t_ctxsw(secs, 0);
        t_ctxsw(secs, 1);
    }
    else if (!strcmp(t, "pagefault")) t_pagefault(secs);
    else if (!strcmp(t, "cpu")) t_cpu(secs);
    else if (argc == 4 && !strcmp(t, "files")) t_files(argv[2], secs, 0, "files");
    else if (argc == 4 && !strcmp(t, "fileio")) t_fileio(argv[2], secs);
    else if (argc == 4 && !strcmp(t, "memhog")) t_memhog(atol(argv[2]), secs);
    else if (argc == 4 && !strcmp(t, "cpuhog")) t_cpuhog(atoi(argv[2]), secs);
    else if (argc == 4 && !strcmp(t, "forkbomb")) t_forkbomb(atol(argv[2]), secs);
    else if (argc == 4 && !strcmp(t, "victim")) {
        t_cpu(secs);
        t_fileio(argv[2], secs);
    } else if (argc >= 4 && argc <= 6 && !strcmp(t, "all")) {
        long count = argc == 6 ? atol(argv[4]) : 0;
        t_getpid(secs);
        t_fork(secs, 0);
        t_fork(secs, 1);
        t_ctxsw(secs, 0);
        t_ctxsw(secs, 1);
        t_pagefault(secs);
        t_files(argv[2], secs, count, "files");
        if (argc >= 5) t_files(argv[3], secs, count, "files_tmpfs");
    } else goto usage;
    return 0;
usage:
    fprintf(stderr, "usage: micro [seccomp] getpid|fork|exec|ctxsw|ctxsw1|syscalls|pagefault|cpu SECS | files|fileio DIR SECS"
                    " | all DIR [TMPDIR [FILES]] SECS"
                    " | memhog MIB SECS | cpuhog N SECS | forkbomb MAX SECS | run PATH ARG... | noop\n");
    return 2;
}
