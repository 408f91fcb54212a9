/* probe: one small static program that checks a guest's isolation from the inside.
 *
 * Built by the test session with `gcc -static -O2` and copied into a test root filesystem, so
 * it runs in any rootfs (no libc, no shell, no /etc needed).  `probe SUBCOMMAND [ARGS]`.
 *
 * Output is machine-checkable: one `key: value` line per fact.  For the checks of something a
 * guest must not be able to do, the exit status says how it went:
 *   0  refused (the safe outcome; the line says how: `denied EPERM`, `denied EROFS` ...)
 *   1  allowed (the line says `ALLOWED`)
 *   2  usage error or the check itself could not run
 * Checks that could do harm when allowed (reboot, kexec, sysrq, core_pattern, module loading)
 * use arguments the kernel rejects *after* the permission check, or only open and never write.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/reboot.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int violations;

static const char *errname(int e)
{
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EROFS: return "EROFS";
    case EINVAL: return "EINVAL";
    case ENOSYS: return "ENOSYS";
    case EBADF: return "EBADF";
    case EFAULT: return "EFAULT";
    case ETXTBSY: return "ETXTBSY";
    case ENOEXEC: return "ENOEXEC";
    case EEXIST: return "EEXIST";
    case ENOTDIR: return "ENOTDIR";
    case ESRCH: return "ESRCH";
    case EBUSY: return "EBUSY";
    case ELOOP: return "ELOOP";
    case ENODEV: return "ENODEV";
    case ENXIO: return "ENXIO";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EDQUOT: return "EDQUOT";
    default: return "E?";
    }
}

/* Report the result of an attempt: ret < 0 (errno says why) = refused, else allowed. */
static void verdict(const char *what, long ret)
{
    int err = errno; /* arguments are evaluated before the body: this is the call's errno */
    if (ret < 0) {
        printf("%s: denied %s (%d)\n", what, errname(err), err);
    } else {
        printf("%s: ALLOWED\n", what);
        violations++;
    }
}

/* Like verdict, but an errno that only comes after the permission check also counts as allowed. */
static void verdict_perm(const char *what, long ret)
{
    int err = errno;
    if (ret < 0 && (err == EPERM || err == EACCES || err == EROFS || err == ENOSYS)) {
        printf("%s: denied %s (%d)\n", what, errname(err), err);
    } else {
        printf("%s: ALLOWED (%s)\n", what, ret < 0 ? errname(err) : "ok");
        violations++;
    }
}

static int done(void)
{
    fflush(stdout);
    return violations ? 1 : 0;
}

static void print_status(const char *const *keys)
{
    char line[512];
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) {
        printf("status: cannot open /proc/self/status: %s\n", strerror(errno));
        exit(2);
    }
    while (fgets(line, sizeof line, f)) {
        for (const char *const *k = keys; *k; k++) {
            size_t n = strlen(*k);
            if (strncmp(line, *k, n) == 0 && line[n] == ':') {
                char *v = line + n + 1;
                while (*v == ' ' || *v == '\t')
                    v++;
                printf("%s: %s", *k, v);
            }
        }
    }
    fclose(f);
}

static int cmd_caps(void)
{
    static const char *const keys[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", NULL};
    print_status(keys);
    return 0;
}

static int cmd_seccomp(void)
{
    static const char *const keys[] = {"Seccomp", "Seccomp_filters", NULL};
    print_status(keys);
    return 0;
}

static int cmd_nnp(void)
{
    static const char *const keys[] = {"NoNewPrivs", NULL};
    print_status(keys);
    return 0;
}

static int cmd_id(void)
{
    gid_t groups[64];
    int n = getgroups(64, groups);
    printf("uid: %d\ngid: %d\ngroups:", (int)getuid(), (int)getgid());
    for (int i = 0; i < n; i++)
        printf(" %d", (int)groups[i]);
    printf("\n");
    return 0;
}

static int cmd_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        printf("fds: cannot open /proc/self/fd: %s\n", strerror(errno));
        return 2;
    }
    int self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name);
        if (fd == self)
            continue;
        char link[64], target[PATH_MAX] = "";
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n >= 0)
            target[n] = 0;
        printf("fd %d: %s\n", fd, target);
    }
    closedir(d);
    return 0;
}

static int report_marker(const char *how, const char *path)
{
    char buf[256] = "";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        printf("escape %s: not reached (%s)\n", how, errname(errno));
        return 0;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    buf[strcspn(buf, "\n")] = 0;
    printf("escape %s: REACHED %s\n", how, buf);
    violations++;
    return 1;
}

static const char *scratch_dir(void)
{
    static const char *const candidates[] = {"/tmp", "/dev/shm", "/run", "/", NULL};
    for (const char *const *c = candidates; *c; c++) {
        if (access(*c, W_OK) == 0)
            return *c;
    }
    return NULL;
}

/* The classic chroot escapes, and the /proc ways back to a root. */
static int cmd_chroot_escape(const char *marker)
{
    char path[PATH_MAX];
    report_marker("direct", marker);
    snprintf(path, sizeof path, "/proc/1/root%s", marker);
    report_marker("proc1root", path);
    snprintf(path, sizeof path, "/proc/self/root/../../..%s", marker);
    report_marker("procselfroot", path);
    snprintf(path, sizeof path, "/proc/1/cwd/../../../..%s", marker);
    report_marker("proc1cwd", path);

    int before = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    const char *base = scratch_dir();
    if (!base) {
        printf("escape chroot: no writable directory to chroot into\n");
        return done();
    }
    char jail[PATH_MAX];
    snprintf(jail, sizeof jail, "%s/.probe-jail-%d", strcmp(base, "/") ? base : "", (int)getpid());
    if (mkdir(jail, 0700) < 0) {
        printf("escape chroot: mkdir %s: %s\n", jail, strerror(errno));
        return done();
    }
    pid_t pid = fork();
    if (pid == 0) {
        /* mkdir x; chroot x; chdir .. many times; chroot . */
        if (chroot(jail) < 0) {
            printf("escape chroot: chroot(%s) %s\n", jail, errname(errno));
        } else {
            for (int i = 0; i < 256; i++)
                if (chdir("..") < 0)
                    break;
            if (chroot(".") < 0)
                printf("escape chroot: chroot(.) %s\n", errname(errno));
            report_marker("chroot", marker);
            /* fchdir to a directory opened before the chroot, then up and out. */
            if (before >= 0 && fchdir(before) == 0) {
                for (int i = 0; i < 256; i++)
                    if (chdir("..") < 0)
                        break;
                if (chroot(".") == 0)
                    report_marker("fchdir", marker);
                else
                    printf("escape fchdir: chroot(.) %s\n", errname(errno));
            }
        }
        fflush(stdout);
        _exit(violations ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    rmdir(jail);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        violations++;
    return done();
}

static int cmd_mount(void)
{
    verdict("mount tmpfs", mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=1m"));
    verdict("mount bind", mount("/", "/dev/shm", NULL, MS_BIND, NULL));
    verdict("remount root rw", mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL));
    verdict("umount /proc", umount2("/proc", MNT_DETACH));
    return done();
}

static int cmd_raw_mount_proc(void)
{
    verdict("mount proc", mount("proc", "/dev/shm", "proc", 0, NULL));
    verdict("mount sysfs", mount("sysfs", "/dev/shm", "sysfs", 0, NULL));
    return done();
}

static int cmd_mknod(int argc, char **argv)
{
    char type = argc > 0 ? argv[0][0] : 'b';
    unsigned maj = argc > 1 ? (unsigned)atoi(argv[1]) : 8, min = argc > 2 ? (unsigned)atoi(argv[2]) : 0;
    const char *base = access("/dev", W_OK) == 0 ? "/dev" : scratch_dir();
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/.probe-node-%d", base && strcmp(base, "/") ? base : "", (int)getpid());
    errno = 0;
    int r = mknod(path, (type == 'c' ? S_IFCHR : S_IFBLK) | 0600, makedev(maj, min));
    int err = errno;
    if (r < 0) {
        printf("mknod %c %u:%u: denied %s (%d)\n", type, maj, min, errname(err), err);
        return done();
    }
    printf("mknod %c %u:%u: created\n", type, maj, min);
    errno = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    verdict("open node", fd);
    if (fd >= 0)
        close(fd);
    unlink(path);
    return done();
}

static int cmd_init_module(void)
{
    static char image[64];
    errno = 0;
    /* Garbage: refused with EPERM without CAP_SYS_MODULE, ENOEXEC/EINVAL when the check passed. */
    verdict_perm("init_module", syscall(SYS_init_module, image, sizeof image, ""));
    return done();
}

static int cmd_finit_module(void)
{
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    verdict_perm("finit_module", syscall(SYS_finit_module, fd, "", 0));
    return done();
}

static int cmd_reboot(void)
{
    errno = 0;
    /* A wrong magic2: EPERM without CAP_SYS_BOOT, EINVAL (nothing happens) with it. */
    verdict_perm("reboot", syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, 0x1234, LINUX_REBOOT_CMD_CAD_OFF, NULL));
    return done();
}

static int cmd_kexec(void)
{
    errno = 0;
    /* Too many segments and a foreign arch: refused as EINVAL if the permission check passed. */
    verdict_perm("kexec_load", syscall(SYS_kexec_load, 0UL, 1000UL, NULL, 0xffff0000UL));
    verdict_perm("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0UL, "", 0xffffUL));
    return done();
}

/* Opening for writing is the test: the probe never writes to these. */
static int open_for_write(const char *what, const char *path)
{
    errno = 0;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    verdict(what, fd);
    if (fd >= 0)
        close(fd);
    return fd;
}

static int cmd_sysrq(void)
{
    open_for_write("open /proc/sysrq-trigger", "/proc/sysrq-trigger");
    return done();
}

static int cmd_core_pattern(void)
{
    open_for_write("open /proc/sys/kernel/core_pattern", "/proc/sys/kernel/core_pattern");
    return done();
}

/* Read (up to 4 KiB of) each file: masked ones read nothing or do not exist. */
static int cmd_kcore(int argc, char **argv)
{
    static const char *const dflt[] = {"/proc/kcore", NULL};
    const char *const *files = argc > 0 ? (const char *const *)argv : dflt;
    for (int i = 0; argc > 0 ? i < argc : files[i] != NULL; i++) {
        char buf[4096];
        int fd = open(files[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            printf("%s: open denied %s\n", files[i], errname(errno));
            continue;
        }
        ssize_t n = read(fd, buf, sizeof buf);
        close(fd);
        printf("%s: read %zd bytes\n", files[i], n);
        if (n > 0)
            violations++;
    }
    return done();
}

static int cmd_keyctl(void)
{
    verdict("add_key", syscall(SYS_add_key, "user", "probe", "x", 1, KEY_SPEC_PROCESS_KEYRING));
    verdict("keyctl", syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, "probe"));
    return done();
}

/* The session keyring this process has: its id, and the description of every key it holds
 * (`key: ID DESCRIPTION`).  A guest must never hold its starter's.  Needs keyctl (seccomp). */
static int cmd_keyring(void)
{
    long id = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    if (id < 0) {
        printf("keyring: denied %s (%d)\n", errname(errno), errno);
        return 0;
    }
    printf("keyring: %ld\n", id);
    int ids[256];
    long n = syscall(SYS_keyctl, KEYCTL_READ, id, ids, sizeof ids);
    if (n < 0) {
        printf("keyring-read: denied %s (%d)\n", errname(errno), errno);
        return 0;
    }
    printf("keyring-keys: %ld\n", n / (long)sizeof ids[0]);
    for (long i = 0; i < n / (long)sizeof ids[0] && i < 256; i++) {
        char desc[512];
        long d = syscall(SYS_keyctl, KEYCTL_DESCRIBE, ids[i], desc, sizeof desc);
        if (d > 0 && (size_t)d <= sizeof desc)
            printf("key: %d %s\n", ids[i], desc);
        else
            printf("key: %d (describe %s)\n", ids[i], d < 0 ? errname(errno) : "too long");
    }
    return 0;
}

/* Add user keys to the session keyring until the kernel refuses one (EDQUOT: this uid's key
 * quota is full; at most 100000 tries): `keyfill: N ERRNAME`. */
static int cmd_keyfill(void)
{
    char desc[32], payload[1] = {'k'}; /* the key count fills up first (a byte left would fit a keyring) */
    for (int i = 0; i < 100000; i++) {
        snprintf(desc, sizeof desc, "fill-%d", i);
        if (syscall(SYS_add_key, "user", desc, payload, sizeof payload, KEY_SPEC_SESSION_KEYRING) < 0) {
            printf("keyfill: %d %s\n", i, errname(errno));
            return 0;
        }
    }
    printf("keyfill: 100000 none\n");
    return 0;
}

/* fallocate(FD, FALLOC_FL_KEEP_SIZE, 0, LEN): allocate past the end of an open file (the
 * guest's stdout, the console log of a created guest) without changing its size. */
static int cmd_fallocate(const char *fd, const char *len)
{
    long r = fallocate(atoi(fd), 0x01 /* FALLOC_FL_KEEP_SIZE */, 0, atoll(len));
    printf("fallocate: %s\n", r == 0 ? "done" : errname(errno));
    return r == 0 ? 0 : 2;
}

static int cmd_bpf(void)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    errno = 0;
    long fd = syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
    verdict("bpf map create", fd);
    if (fd >= 0)
        close((int)fd);
    return done();
}

static int cmd_perf(void)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.size = sizeof attr;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    attr.disabled = 1;
    errno = 0;
    long fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    verdict("perf_event_open", fd);
    if (fd >= 0)
        close((int)fd);
    return done();
}

/* CVE-2019-5736 class: the runtime's binary must not be reachable from the guest. */
static int cmd_ptrace_init(void)
{
    char target[PATH_MAX] = "";
    ssize_t n = readlink("/proc/1/exe", target, sizeof target - 1);
    if (n >= 0)
        target[n] = 0;
    printf("pid1 exe: %s\n", n >= 0 ? target : errname(errno));
    n = readlink("/proc/self/exe", target, sizeof target - 1);
    if (n >= 0)
        target[n] = 0;
    printf("self exe: %s\n", n >= 0 ? target : errname(errno));
    open_for_write("open /proc/1/exe for writing", "/proc/1/exe");
    /* Through an O_PATH fd re-opened for writing (the runc exploit's way). */
    int pfd = open("/proc/1/exe", O_PATH | O_CLOEXEC);
    if (pfd >= 0) {
        char via[64];
        snprintf(via, sizeof via, "/proc/self/fd/%d", pfd);
        open_for_write("reopen /proc/1/exe for writing", via);
        close(pfd);
    } else {
        printf("open /proc/1/exe O_PATH: %s\n", errname(errno));
    }
    /* Reading it: the bytes are tini's (or the probe's), never an interpreter's. */
    int rfd = open("/proc/1/exe", O_RDONLY | O_CLOEXEC);
    if (rfd >= 0) {
        static char buf[1 << 16];
        /* Reversed, so the probe's own bytes do not hold what it looks for. */
        char sym[] = "emitnuRyP_";
        for (size_t i = 0, j = sizeof sym - 2; i < j; i++, j--) {
            char t = sym[i];
            sym[i] = sym[j];
            sym[j] = t;
        }
        ssize_t got, total = 0;
        int python = 0;
        while ((got = read(rfd, buf, sizeof buf)) > 0) {
            total += got;
            if (memmem(buf, (size_t)got, sym, sizeof sym - 1))
                python = 1;
        }
        close(rfd);
        printf("pid1 exe bytes: %zd%s\n", total, python ? " PYTHON" : "");
        if (python)
            violations++;
    } else {
        printf("pid1 exe read: %s\n", errname(errno));
    }
    if (getpid() != 1) {
        errno = 0;
        long r = ptrace(PTRACE_ATTACH, 1, NULL, NULL);
        printf("ptrace attach 1: %s\n", r < 0 ? errname(errno) : "attached");
        if (r == 0) {
            waitpid(1, NULL, __WALL);
            ptrace(PTRACE_DETACH, 1, NULL, NULL);
        }
    }
    return done();
}

static int cmd_unshare_user(void)
{
    verdict("unshare user", unshare(CLONE_NEWUSER));
    verdict("unshare mount", unshare(CLONE_NEWNS));
    return done();
}

static int cmd_sys_write(void)
{
    /* The first of these this kernel has: opened for writing, never written. */
    static const char *const files[] = {"/sys/kernel/uevent_helper", "/sys/kernel/mm/transparent_hugepage/enabled",
                                        "/sys/power/state", "/sys/class/net/lo/mtu", NULL};
    for (const char *const *f = files; *f; f++) {
        if (access(*f, F_OK) == 0) {
            char what[PATH_MAX + 16];
            snprintf(what, sizeof what, "open %s", *f);
            open_for_write(what, *f);
            break;
        }
    }
    struct statfs s;
    if (statfs("/sys", &s) == 0)
        printf("/sys: %s\n", s.f_flags & ST_RDONLY ? "read-only" : "WRITABLE");
    errno = 0;
    int r = mkdir("/sys/fs/cgroup/probe-escape", 0755);
    verdict("mkdir /sys/fs/cgroup/probe-escape", r);
    if (r == 0)
        rmdir("/sys/fs/cgroup/probe-escape");
    DIR *d = opendir("/sys/fs/cgroup");
    if (d) {
        struct dirent *e;
        char path[PATH_MAX];
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "/sys/fs/cgroup/%s/release_agent", e->d_name);
            if (access(path, F_OK) == 0) {
                char what[PATH_MAX + 32];
                snprintf(what, sizeof what, "open %s", path);
                open_for_write(what, path);
            }
        }
        closedir(d);
    }
    return done();
}

static int cmd_hostname(void)
{
    struct utsname u;
    uname(&u);
    printf("hostname: %s\n", u.nodename);
    return 0;
}

static int cmd_hostname_set(void)
{
    cmd_hostname();
    verdict("sethostname", sethostname("probe-owned", 11));
    return done();
}

static void cat_lines(const char *path, const char *label)
{
    char line[1024];
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("%s: cannot open: %s\n", label, errname(errno));
        return;
    }
    while (fgets(line, sizeof line, f))
        printf("%s: %s", label, line);
    fclose(f);
}

static int cmd_ipc_list(int argc, char **argv)
{
    cat_lines("/proc/sysvipc/shm", "shm");
    cat_lines("/proc/sysvipc/msg", "msg");
    cat_lines("/proc/sysvipc/sem", "sem");
    if (argc > 0) {
        key_t key = (key_t)strtol(argv[0], NULL, 0);
        errno = 0;
        int id = shmget(key, 0, 0);
        printf("shmget %s: %s\n", argv[0], id < 0 ? errname(errno) : "FOUND");
        if (id >= 0)
            violations++;
    }
    return done();
}

static int cmd_net_links(void)
{
    DIR *d = opendir("/sys/class/net");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                printf("sysfs link: %s\n", e->d_name);
        closedir(d);
    }
    char line[512];
    FILE *f = fopen("/proc/net/dev", "r");
    if (f) {
        int n = 0;
        while (fgets(line, sizeof line, f)) {
            if (n++ < 2)
                continue;
            char *colon = strchr(line, ':');
            if (!colon)
                continue;
            *colon = 0;
            char *name = line;
            while (*name == ' ')
                name++;
            printf("link: %s\n", name);
        }
        fclose(f);
    }
    return 0;
}

static int zombie_count(void)
{
    int count = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return -1;
    struct dirent *e;
    char path[300], buf[512];
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = 0;
        char *paren = strrchr(buf, ')');
        if (paren && paren[1] == ' ' && paren[2] == 'Z')
            count++;
    }
    closedir(d);
    return count;
}

/* Children whose parent exits without waiting for them: pid 1 must reap them. */
static int cmd_zombies(int argc, char **argv)
{
    int n = argc > 0 ? atoi(argv[0]) : 5;
    pid_t mid = fork();
    if (mid == 0) {
        for (int i = 0; i < n; i++)
            if (fork() == 0)
                _exit(0);
        _exit(0); /* never waits: its children become orphans */
    }
    waitpid(mid, NULL, 0);
    struct timespec start, now, pause = {0, 20 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &start);
    int z;
    do {
        z = zombie_count();
        if (z == 0)
            break;
        nanosleep(&pause, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - start.tv_sec < 5);
    printf("zombies: %d\n", z);
    return z == 0 ? 0 : 1;
}

static int cmd_pids(void)
{
    DIR *d = opendir("/proc");
    if (!d) {
        printf("pids: cannot open /proc: %s\n", errname(errno));
        return 2;
    }
    struct dirent *e;
    char path[300], comm[64];
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, comm, sizeof comm - 1) : -1;
        if (fd >= 0)
            close(fd);
        comm[n > 0 ? n : 0] = 0;
        comm[strcspn(comm, "\n")] = 0;
        printf("pid %s: %s\n", e->d_name, comm);
    }
    closedir(d);
    return 0;
}

static volatile sig_atomic_t got_term;

static void on_term(int sig)
{
    (void)sig;
    got_term = 1;
}

/* Print "ready" and sleep (up to 60 s); with `trap`, a SIGTERM handler exits 0 after saying so. */
static int cmd_sleep(int trap)
{
    if (trap) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_term;
        sigaction(SIGTERM, &sa, NULL);
    }
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < 600 && !got_term; i++) {
        struct timespec t = {0, 100 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    if (got_term) {
        printf("got SIGTERM\n");
        fflush(stdout);
        return 0;
    }
    printf("slept\n");
    return 0;
}

static int cmd_tty(void)
{
    char *name = ttyname(0);
    printf("tty: %s\n", name ? name : "not a tty");
    fflush(stdout);
    char line[256];
    if (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        printf("input: %s\n", line);
    } else {
        printf("input: EOF\n");
    }
    fflush(stdout);
    return 0;
}

static int cmd_statfs(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        struct statfs s;
        struct stat st;
        if (statfs(argv[i], &s) < 0) {
            printf("%s: %s\n", argv[i], errname(errno));
            continue;
        }
        lstat(argv[i], &st);
        printf("%s: type=0x%lx flags=0x%lx dev=%u:%u ino=%lu mode=%o\n", argv[i], (unsigned long)s.f_type,
               (unsigned long)s.f_flags, major(st.st_dev), minor(st.st_dev), (unsigned long)st.st_ino, st.st_mode);
    }
    return 0;
}

static int cmd_cat(int argc, char **argv)
{
    char buf[4096];
    int rc = 0;
    for (int i = 0; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            printf("cat %s: %s\n", argv[i], errname(errno));
            rc = 1;
            continue;
        }
        ssize_t n;
        fflush(stdout);
        while ((n = read(fd, buf, sizeof buf)) > 0)
            if (write(1, buf, (size_t)n) != n)
                break;
        close(fd);
    }
    return rc;
}

static int cmd_ls(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        if (!d) {
            printf("ls %s: %s\n", argv[i], errname(errno));
            continue;
        }
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                printf("%s/%s\n", strcmp(argv[i], "/") ? argv[i] : "", e->d_name);
        closedir(d);
    }
    return 0;
}

static int cmd_write(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        errno = 0;
        int fd = open(argv[i], O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        char what[PATH_MAX + 16];
        snprintf(what, sizeof what, "create %s", argv[i]);
        verdict(what, fd);
        if (fd >= 0) {
            close(fd);
            unlink(argv[i]);
        }
    }
    return done();
}

static int cmd_env(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *v = getenv(argv[i]);
        printf("%s=%s\n", argv[i], v ? v : "(unset)");
    }
    return 0;
}

static int cmd_cwd(void)
{
    char buf[PATH_MAX];
    printf("cwd: %s\n", getcwd(buf, sizeof buf) ? buf : errname(errno));
    return 0;
}

/* An abstract unix socket address "\0NAME"; its length. */
static socklen_t abstract_addr(struct sockaddr_un *a, const char *name)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (n > sizeof a->sun_path - 1)
        n = sizeof a->sun_path - 1;
    memcpy(a->sun_path + 1, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/* Connect to the abstract socket NAME (ECONNREFUSED: not listening yet, tried again for 5 s);
 * "abstract-connect: ALLOWED" (exit 1) or "abstract-connect: denied EPERM (1)" (exit 0). */
static int cmd_abstract_connect(const char *name)
{
    struct sockaddr_un a;
    socklen_t len = abstract_addr(&a, name);
    long ret = -1;
    for (int i = 0; i < 500; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            perror("socket");
            return 2;
        }
        ret = connect(fd, (struct sockaddr *)&a, len);
        int err = errno;
        close(fd);
        errno = err;
        if (ret == 0 || err != ECONNREFUSED)
            break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        errno = err;
    }
    verdict("abstract-connect", ret);
    return done();
}

/* Listen on the abstract socket NAME and accept connections for SECONDS (default 10: then
 * SIGALRM ends it). */
static int cmd_abstract_serve(int argc, char **argv)
{
    struct sockaddr_un a;
    socklen_t len = abstract_addr(&a, argv[0]);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, len) < 0 || listen(fd, 16) < 0) {
        printf("abstract-serve: %s\n", errname(errno));
        return 2;
    }
    printf("abstract-serve: listening\n");
    fflush(stdout);
    alarm(argc > 1 ? (unsigned)atoi(argv[1]) : 10);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) {
            printf("abstract-serve: %s\n", errname(errno));
            return 2;
        }
        printf("abstract-serve: accepted\n");
        fflush(stdout);
        close(c);
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: probe caps|seccomp|nnp|id|fds|chroot-escape MARKER|mount|raw-mount-proc|"
                    "mknod-block [b|c MAJ MIN]|init-module|finit-module|reboot|kexec|sysrq|core-pattern|"
                    "kcore [FILE..]|keyctl|keyring|keyfill|fallocate FD LEN|bpf|perf|ptrace-init|unshare-user|sys-write|hostname|hostname-set|"
                    "ipc-list [KEY]|net-links|zombies [N]|pids|sleep-term|trap-term|tty|statfs PATH..|"
                    "cat FILE..|ls DIR..|write FILE..|env NAME..|cwd|exit N|kill-self SIG|"
                    "abstract-connect NAME|abstract-serve NAME [SECONDS]\n");
    return 2;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        return usage();
    const char *c = argv[1];
    int n = argc - 2;
    char **rest = argv + 2;
    if (!strcmp(c, "caps")) return cmd_caps();
    if (!strcmp(c, "seccomp")) return cmd_seccomp();
    if (!strcmp(c, "nnp")) return cmd_nnp();
    if (!strcmp(c, "id")) return cmd_id();
    if (!strcmp(c, "fds")) return cmd_fds();
    if (!strcmp(c, "chroot-escape") && n == 1) return cmd_chroot_escape(rest[0]);
    if (!strcmp(c, "mount")) return cmd_mount();
    if (!strcmp(c, "raw-mount-proc")) return cmd_raw_mount_proc();
    if (!strcmp(c, "mknod-block")) return cmd_mknod(n, rest);
    if (!strcmp(c, "init-module")) return cmd_init_module();
    if (!strcmp(c, "finit-module")) return cmd_finit_module();
    if (!strcmp(c, "reboot")) return cmd_reboot();
    if (!strcmp(c, "kexec")) return cmd_kexec();
    if (!strcmp(c, "sysrq")) return cmd_sysrq();
    if (!strcmp(c, "core-pattern")) return cmd_core_pattern();
    if (!strcmp(c, "kcore")) return cmd_kcore(n, rest);
    if (!strcmp(c, "keyctl")) return cmd_keyctl();
    if (!strcmp(c, "keyring")) return cmd_keyring();
    if (!strcmp(c, "keyfill")) return cmd_keyfill();
    if (!strcmp(c, "fallocate") && n == 2) return cmd_fallocate(rest[0], rest[1]);
    if (!strcmp(c, "bpf")) return cmd_bpf();
    if (!strcmp(c, "perf")) return cmd_perf();
    if (!strcmp(c, "ptrace-init")) return cmd_ptrace_init();
    if (!strcmp(c, "unshare-user")) return cmd_unshare_user();
    if (!strcmp(c, "sys-write")) return cmd_sys_write();
    if (!strcmp(c, "hostname")) return cmd_hostname();
    if (!strcmp(c, "hostname-set")) return cmd_hostname_set();
    if (!strcmp(c, "ipc-list")) return cmd_ipc_list(n, rest);
    if (!strcmp(c, "net-links")) return cmd_net_links();
    if (!strcmp(c, "zombies")) return cmd_zombies(n, rest);
    if (!strcmp(c, "pids")) return cmd_pids();
    if (!strcmp(c, "sleep-term")) return cmd_sleep(0);
    if (!strcmp(c, "trap-term")) return cmd_sleep(1);
    if (!strcmp(c, "tty")) return cmd_tty();
    if (!strcmp(c, "statfs")) return cmd_statfs(n, rest);
    if (!strcmp(c, "cat")) return cmd_cat(n, rest);
    if (!strcmp(c, "ls")) return cmd_ls(n, rest);
    if (!strcmp(c, "write")) return cmd_write(n, rest);
    if (!strcmp(c, "env")) return cmd_env(n, rest);
    if (!strcmp(c, "cwd")) return cmd_cwd();
    if (!strcmp(c, "abstract-connect") && n == 1) return cmd_abstract_connect(rest[0]);
    if (!strcmp(c, "abstract-serve") && (n == 1 || n == 2)) return cmd_abstract_serve(n, rest);
    if (!strcmp(c, "exit") && n == 1) return atoi(rest[0]);
    if (!strcmp(c, "kill-self") && n == 1) {
        fflush(stdout);
        kill(getpid(), atoi(rest[0]));
        pause();
        return 2;
    }
    return usage();
}
