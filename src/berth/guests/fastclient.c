/* The `berth` launcher: `berth start NAME...` through guestd's fast path, everything else (and
 * every case this file does not handle) by exec'ing the Python launcher with the same arguments.
 *
 * It is berth.guests.fastclient in C, with the same request and the same rules: a Python
 * interpreter costs ~12 ms to start here before berth runs a line, more than the command itself.
 * It sends the names and the command's environment to guestd, which (its worker, under each
 * guest's lock) checks each guest's spec against its inputs, marks the guest to run and starts it;
 * the replies are printed as `berth start` prints them.  It hands over to Python (the full path,
 * which also spawns guestd and gives every usage error) when: the arguments are not plain names,
 * a name is not a guest of the store, BERTH_FAULT is set, BERTH_START_WORKERS is not a positive
 * whole number, a name or the environment is not plain UTF-8, guestd does not answer on its
 * socket, or a guest's spec must be built first (`stale`: a start is idempotent, so Python's
 * path starts the stale ones and finds the others running).
 *
 * Built by tools/launcher.sh (cc -O2 -DBERTH_PYTHON=... -DBERTH_SCRIPT=...) when a C compiler is
 * there; without one the launcher is the Python script alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef BERTH_PYTHON
#error "BERTH_PYTHON (the venv's python) must be defined"
#endif
#ifndef BERTH_SCRIPT
#error "BERTH_SCRIPT (the Python launcher) must be defined"
#endif

#define NAME_MAX_LEN 48        /* berth.guests.store.NAME_MAX */
#define WORKERS_PER_CPU 4      /* berth.guests.lifecycle.WORKERS_PER_CPU */
#define REPLY_TIMEOUT_MS 120000 /* berth.guests.fastclient.TIMEOUT */
#define MAX_NAMES 4096

extern char **environ;
static char **orig_argv;

/* Hand the whole command to the Python launcher. */
static void python(void) {
    int n = 0;
    while (orig_argv[n]) n++;
    char **args = calloc(n + 3, sizeof(char *));
    if (!args) _exit(125);
    args[0] = BERTH_PYTHON;
    args[1] = "-IS";
    args[2] = BERTH_SCRIPT;
    for (int i = 1; i < n; i++) args[i + 2] = orig_argv[i];
    execv(BERTH_PYTHON, args);
    fprintf(stderr, "berth: cannot run %s: %s\n", BERTH_PYTHON, strerror(errno));
    _exit(125);
}

/* ---- a growing buffer ---------------------------------------------------------------- */
struct buf { char *p; size_t len, cap; };

static void put(struct buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) _exit(125);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}
static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* Plain UTF-8 (what Python's os.environ and JSON agree on byte for byte)? */
static int utf8_ok(const unsigned char *s) {
    while (*s) {
        int n = *s < 0x80 ? 0 : (*s & 0xe0) == 0xc0 ? 1 : (*s & 0xf0) == 0xe0 ? 2 : (*s & 0xf8) == 0xf0 ? 3 : -1;
        if (n < 0 || (n == 1 && *s < 0xc2)) return 0;
        s++;
        for (int i = 0; i < n; i++, s++)
            if ((*s & 0xc0) != 0x80) return 0;
    }
    return 1;
}

static void json_str(struct buf *b, const char *s, size_t n) {
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, (const char *)&s[i], 1);
        }
    }
    put(b, "\"", 1);
}

static int name_ok(const char *n) {
    size_t len = strlen(n);
    if (len == 0 || len > NAME_MAX_LEN) return 0;
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '_' && c != '.' && c != '-'))) return 0;
    }
    return 1;
}

static const char *env_or(const char *key, const char *dflt) {
    const char *v = getenv(key);
    return v && *v ? v : dflt;
}

/* ---- replies: flat JSON objects of strings, numbers, booleans and null ----------------- */
struct reply {
    int has_worker, worker, ok, stale, status, done, fallback, has_exit, exit;
    char name[NAME_MAX_LEN + 1];
    struct buf error;
};

static void utf8_put(struct buf *b, unsigned cp) {
    char o[4];
    if (cp < 0x80) { o[0] = (char)cp; put(b, o, 1); }
    else if (cp < 0x800) { o[0] = (char)(0xc0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3f)); put(b, o, 2); }
    else if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 0x3f)); o[2] = (char)(0x80 | (cp & 0x3f));
        put(b, o, 3);
    } else {
        o[0] = (char)(0xf0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); o[3] = (char)(0x80 | (cp & 0x3f));
        put(b, o, 4);
    }
}

static const char *ws(const char *p) { while (*p == ' ' || *p == '\t' || *p == '\r') p++; return p; }

static int hex4(const char *p, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return 0;
        *v = *v * 16 + (unsigned)d;
    }
    return 1;
}

/* A JSON string at p (after its quote): decoded into out; returns the position after it, or NULL. */
static const char *jstring(const char *p, struct buf *out) {
    while (*p && *p != '"') {
        if (*p != '\\') { put(out, p++, 1); continue; }
        p++;
        switch (*p) {
        case '"': case '\\': case '/': put(out, p, 1); break;
        case 'b': put(out, "\b", 1); break;
        case 'f': put(out, "\f", 1); break;
        case 'n': put(out, "\n", 1); break;
        case 'r': put(out, "\r", 1); break;
        case 't': put(out, "\t", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (!hex4(p + 1, &cp)) return NULL;
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && p[1] == '\\' && p[2] == 'u' && hex4(p + 3, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            } else if (cp >= 0xd800 && cp < 0xe000) {
                cp = 0xfffd;
            }
            utf8_put(out, cp);
            break;
        }
        default: return NULL;
        }
        p++;
    }
    return *p == '"' ? p + 1 : NULL;
}

/* One line of guestd's: 1 parsed (r filled), 0 not understood. */
static int parse_line(const char *p, struct reply *r) {
    memset(r, 0, sizeof *r);
    r->status = 125;
    p = ws(p);
    if (*p++ != '{') return 0;
    p = ws(p);
    if (*p == '}') return 1;
    for (;;) {
        struct buf key = {0};
        p = ws(p);
        if (*p++ != '"' || !(p = jstring(p, &key))) { free(key.p); return 0; }
        p = ws(p);
        if (*p++ != ':') { free(key.p); return 0; }
        p = ws(p);
        const char *k = key.p ? key.p : "";
        if (*p == '"') {
            struct buf val = {0};
            if (!(p = jstring(p + 1, &val))) { free(key.p); free(val.p); return 0; }
            if (!strcmp(k, "name") && val.len <= NAME_MAX_LEN) memcpy(r->name, val.p ? val.p : "", val.len + 1);
            if (!strcmp(k, "error")) { free(r->error.p); r->error = val; val.p = NULL; }
            free(val.p);
        } else if (!strncmp(p, "true", 4) || !strncmp(p, "false", 5)) {
            int v = *p == 't';
            p += v ? 4 : 5;
            if (!strcmp(k, "ok")) r->ok = v;
            if (!strcmp(k, "stale")) r->stale = v;
            if (!strcmp(k, "fallback")) r->fallback = v;
        } else if (!strncmp(p, "null", 4)) {
            p += 4;
        } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) { free(key.p); return 0; }
            while (*end && strchr("0123456789.eE+-", *end)) end++;
            p = end;
            if (!strcmp(k, "worker")) { r->worker = (int)v; r->has_worker = 1; }
            if (!strcmp(k, "status")) r->status = (int)v;
            if (!strcmp(k, "exit")) { r->exit = (int)v; r->has_exit = 1; }
        } else {
            free(key.p);
            return 0;  /* a nested value: not a reply of this protocol */
        }
        free(key.p);
        p = ws(p);
        if (*p == '}') return 1;
        if (*p++ != ',') return 0;
    }
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fail(struct reply *r, const char *msg) {
    r->ok = 0;
    r->status = 125;
    r->error.len = 0;
    puts_(&r->error, msg);
    r->done = 1;
}

/* Read one batch's replies (the worker's pid first); guests not answered get an error.
 * Returns 0 if a line was not understood (the caller hands over to Python). */
static int replies(int s, char **names, int count, struct reply *out) {
    struct buf in = {0};
    int pidfd = -1, got = 0, dead = 0;
    long deadline = now_ms() + REPLY_TIMEOUT_MS;
    const char *why = "the guest supervisor's worker died without a reply";
    for (;;) {
        char *nl;
        while (in.len && (nl = memchr(in.p, '\n', in.len))) {
            *nl = 0;
            struct reply r;
            if (!parse_line(in.p, &r)) {
                if (pidfd >= 0) close(pidfd);
                free(in.p);
                return 0;
            }
            size_t used = (size_t)(nl + 1 - in.p);
            memmove(in.p, nl + 1, in.len - used);
            in.len -= used;
            if (r.has_worker) {
                pidfd = (int)syscall(SYS_pidfd_open, r.worker, 0);
                if (pidfd < 0) pidfd = -2; /* gone already: its replies, if any, are in the socket */
                continue;
            }
            for (int i = 0; i < count; i++) {
                if (!out[i].done && !strcmp(names[i], r.name)) {
                    out[i] = r;
                    out[i].done = 1;
                    got++;
                    deadline = now_ms() + REPLY_TIMEOUT_MS;
                    r.error.p = NULL;
                    break;
                }
            }
            free(r.error.p);
        }
        if (got == count || dead) break;
        long left = deadline - now_ms();
        if (left <= 0) { why = "the guest supervisor did not answer in time"; break; }
        struct pollfd fds[2] = {{s, POLLIN, 0}, {pidfd, POLLIN, 0}};
        int ready = 0;
        if (pidfd != -2) {
            ready = poll(fds, pidfd >= 0 ? 2 : 1, (int)(left < 1000 ? left : 1000));
            if (ready < 0 && errno != EINTR) break;
        }
        if (ready > 0 && fds[0].revents) {
            char chunk[65536];
            ssize_t n = recv(s, chunk, sizeof chunk, 0);
            if (n <= 0) break;
            put(&in, chunk, (size_t)n);
        } else if (pidfd == -2 || (ready > 0 && pidfd >= 0 && fds[1].revents)) {
            /* The worker is gone: what it wrote is in the socket; read that, then stop. */
            char chunk[65536];
            ssize_t n;
            while ((n = recv(s, chunk, sizeof chunk, MSG_DONTWAIT)) > 0) put(&in, chunk, (size_t)n);
            dead = 1;
        }
    }
    if (pidfd >= 0) close(pidfd);
    free(in.p);
    for (int i = 0; i < count; i++)
        if (!out[i].done) fail(&out[i], why);
    return 1;
}

/* berth.cgroups.warm in C: a child moves itself into the cgroup it is in already (a no-op) so
 * that the kernel's wait for the first cgroup attach of a while (an RCU grace period) passes while
 * guestd's worker prepares the guest, not when the guest's init attaches itself. */
static pid_t warm(void) {
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (!f) return -1;
    char line[4096], procs[4096 + 64] = "";
    struct stat st;
    while (fgets(line, sizeof line, f)) {
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c2 = 0;
        char *ctrl = c1 + 1, *path = c2 + 1;
        path[strcspn(path, "\n")] = 0;
        char top[256];
        if (*ctrl && strncmp(ctrl, "name=", 5) != 0)
            snprintf(top, sizeof top, "/sys/fs/cgroup/%.*s", (int)strcspn(ctrl, ","), ctrl);
        else if (!*ctrl && stat("/sys/fs/cgroup/cgroup.procs", &st) == 0)
            snprintf(top, sizeof top, "/sys/fs/cgroup");
        else
            continue;
        snprintf(procs, sizeof procs, "%s%s/cgroup.procs", top, path);
        if (stat(procs, &st) == 0) break;
        procs[0] = 0;
    }
    fclose(f);
    if (!procs[0]) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(procs, O_WRONLY | O_CLOEXEC);
        if (fd >= 0 && write(fd, "0", 1) < 0) _exit(1); /* 0: this child, into the cgroup it is in */
        _exit(0);
    }
    return pid;
}

/* The environment as JSON (as Python's os.environ: the first of a repeated name). */
static void env_json(struct buf *env) {
    puts_(env, "{");
    int first = 1;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || eq == *e) continue;
        if (!utf8_ok((const unsigned char *)*e)) python();
        size_t klen = (size_t)(eq - *e);
        int dup = 0;
        for (char **f = environ; f < e && !dup; f++)
            dup = !strncmp(*f, *e, klen + 1);
        if (dup) continue;
        if (!first) puts_(env, ",");
        first = 0;
        json_str(env, *e, klen);
        puts_(env, ":");
        json_str(env, eq + 1, strlen(eq + 1));
    }
    puts_(env, "}");
}

static void guestd_addr(const char *state, struct sockaddr_un *addr) {
    char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (snprintf(sock_path, sizeof sock_path, "%s/.guests/guestd.sock", state) >= (int)sizeof sock_path) python();
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, sock_path, sizeof sock_path);
}

/* ---- berth run through guestd ---------------------------------------------------------- */
/* As berth.runtime.run.FORWARDED: what berth run forwards to its guest. */
static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define NFORWARDED (int)(sizeof forwarded / sizeof forwarded[0])
static int sig_r = -1, sig_w = -1;
static pid_t warmer = -1; /* warm()'s child, reaped once it is done (a run may last) */

static void on_signal(int sig) {
    int saved = errno;
    unsigned char c = (unsigned char)sig;
    if (write(sig_w, &c, 1) < 0) { /* full: a storm of signals; the guest has plenty */ }
    errno = saved;
}

/* The command to Python: the forwarded signals back to their default; one caught meanwhile
 * (before anything was made) is raised again, as it would have reached the Python launcher. */
static void python_run(void) {
    if (warmer > 0) waitpid(warmer, NULL, 0);
    for (int i = 0; i < NFORWARDED; i++) signal(forwarded[i], SIG_DFL);
    unsigned char c;
    while (sig_r >= 0 && read(sig_r, &c, 1) == 1) raise(c);
    python();
}

/* What a process gives the children it forks that guestd's worker must have too for it to run
 * this command's guest (berth.cli.run_guestd.context, the same text): the namespaces, the
 * /proc/self/status lines of the umask, no_new_privs, seccomp, capabilities and CPU and memory
 * affinity, the resource limits, oom_score_adj, the nice value and the scheduling policy. */
static int context(struct buf *out) {
    static const char *ns[] = {"cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"};
    static const char *keys[] = {"Umask:", "NoNewPrivs:", "Seccomp:", "Seccomp_filters:", "CapInh:", "CapPrm:",
                                 "CapEff:", "CapBnd:", "CapAmb:", "Cpus_allowed_list:", "Mems_allowed_list:"};
    char path[64], link[256];
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        snprintf(path, sizeof path, "/proc/self/ns/%s", ns[i]);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n < 0) n = 0;
        link[n] = 0;
        puts_(out, link);
        puts_(out, "\n");
    }
    const char *files[] = {"/proc/self/status", "/proc/self/limits", "/proc/self/oom_score_adj"};
    for (int f = 0; f < 3; f++) {
        FILE *fp = fopen(files[f], "re");
        if (!fp) return 0;
        char line[1024];
        while (fgets(line, sizeof line, fp)) {
            int want = f > 0;
            for (size_t k = 0; !want && k < sizeof keys / sizeof keys[0]; k++)
                want = !strncmp(line, keys[k], strlen(keys[k]));
            if (want) puts_(out, line);
        }
        fclose(fp);
    }
    char tail[64];
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0);
    if (errno) return 0;
    snprintf(tail, sizeof tail, "nice %d\npolicy %d\n", nice, sched_getscheduler(0));
    puts_(out, tail);
    return 1;
}

/* `berth run ARGS`: guestd's worker runs it (berth.cli.run_guestd) with this command's
 * stdin, stdout, stderr, working directory and environment; this process forwards its signals
 * to that worker and exits with the guest's status.  Python runs it instead (the same
 * command, from the start) when guestd is not up, an argument or the environment is not plain
 * UTF-8, a descriptor of the three is closed, or the worker answers `fallback` (a terminal to
 * relay, help, a usage error: Python's messages). */
static int run_fast(int argc, char **argv, const char *root, const char *state, const char *parent) {
    for (int i = 2; i < argc; i++) {
        if (!utf8_ok((const unsigned char *)argv[i])) python();
        if (!strcmp(argv[i], "--")) break;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) python();
    }
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0) python();
    if (!utf8_ok((const unsigned char *)root) || !utf8_ok((const unsigned char *)parent)) python();
    struct buf req = {0};
    puts_(&req, "{\"op\":\"run\",\"argv\":[");
    for (int i = 2; i < argc; i++) {
        if (i > 2) puts_(&req, ",");
        json_str(&req, argv[i], strlen(argv[i]));
    }
    puts_(&req, "],\"env\":");
    env_json(&req);
    puts_(&req, ",\"store\":");
    json_str(&req, root, strlen(root));
    puts_(&req, ",\"cgroup_parent\":");
    json_str(&req, parent, strlen(parent));
    struct buf ctx = {0};
    if (!context(&ctx) || !utf8_ok((const unsigned char *)ctx.p)) python();
    puts_(&req, ",\"context\":");
    json_str(&req, ctx.p, ctx.len);
    free(ctx.p);
    puts_(&req, "}\n");

    struct sockaddr_un addr;
    guestd_addr(state, &addr);
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0) python();
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) python(); /* guestd is not up */
    warmer = warm(); /* the guest's init attaches itself to its cgroup soon: the lock's wait starts now */

    /* Signals from here on are queued on a pipe and sent to the worker once it is known. */
    int sp[2];
    if (pipe2(sp, O_CLOEXEC | O_NONBLOCK) != 0) python_run();
    sig_r = sp[0];
    sig_w = sp[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigfillset(&sa.sa_mask);
    for (int i = 0; i < NFORWARDED; i++) sigaction(forwarded[i], &sa, NULL);

    int fds[4] = {0, 1, 2, cwd};
    char cbuf[CMSG_SPACE(sizeof fds)];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {req.p, req.len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cm), fds, sizeof fds);
    ssize_t n;
    do n = sendmsg(s, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n <= 0) python_run();
    for (size_t off = (size_t)n; off < req.len;) {
        n = send(s, req.p + off, req.len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) python_run();
        off += (size_t)n;
    }
    free(req.p);
    close(cwd);

    struct buf in = {0};
    int pidfd = -1, dead = 0;
    unsigned char pending[256];
    int npending = 0, last_sig = 0;
    for (;;) {
        char *nl;
        while (in.len && (nl = memchr(in.p, '\n', in.len))) {
            *nl = 0;
            struct reply r;
            int parsed = parse_line(in.p, &r);
            size_t used = (size_t)(nl + 1 - in.p);
            memmove(in.p, nl + 1, in.len - used);
            in.len -= used;
            if (!parsed) continue; /* not of this protocol: skipped */
            free(r.error.p);
            if (r.fallback) python_run(); /* nothing was made: Python runs the command */
            if (r.has_exit) return r.exit;
            if (r.has_worker && pidfd == -1) {
                pidfd = (int)syscall(SYS_pidfd_open, r.worker, 0);
                if (pidfd < 0) pidfd = -2; /* gone already: its reply, if any, is in the socket */
            }
        }
        if (dead) break;
        /* Signals caught meanwhile go to the worker (berth run's process there). */
        unsigned char c;
        while (read(sp[0], &c, 1) == 1)
            if (npending < (int)sizeof pending) pending[npending++] = c;
        if (pidfd >= 0) {
            for (int i = 0; i < npending; i++) {
                syscall(SYS_pidfd_send_signal, pidfd, (int)pending[i], NULL, 0);
                last_sig = pending[i];
            }
            npending = 0;
        }
        if (warmer > 0 && waitpid(warmer, NULL, WNOHANG) != 0) warmer = -1;
        struct pollfd pfd[3] = {{s, POLLIN, 0}, {sp[0], POLLIN, 0}, {pidfd, POLLIN, 0}};
        int ready = pidfd == -2 ? 0 : poll(pfd, pidfd >= 0 ? 3 : 2, warmer > 0 ? 5 : -1);
        if (ready < 0 && errno != EINTR) break;
        if (ready > 0 && pfd[0].revents) {
            char chunk[4096];
            n = recv(s, chunk, sizeof chunk, 0);
            if (n <= 0) { dead = 1; continue; }
            put(&in, chunk, (size_t)n);
        } else if (pidfd == -2 || (ready > 0 && pidfd >= 0 && pfd[2].revents)) {
            /* The worker is gone: what it wrote is in the socket; read that, then stop. */
            char chunk[4096];
            while ((n = recv(s, chunk, sizeof chunk, MSG_DONTWAIT)) > 0) put(&in, chunk, (size_t)n);
            dead = 1;
        }
    }
    if (last_sig) {
        /* The signal forwarded last ended the worker before it could forward it to a guest (as
         * it would have ended a berth run process then): end the same way. */
        for (int i = 0; i < NFORWARDED; i++) signal(forwarded[i], SIG_DFL);
        raise(last_sig);
    }
    fprintf(stderr, "berth: the guest supervisor's worker ended without the guest's exit status "
                    "(see %s/.guests/guestd.log)\n", state);
    return 125;
}

int main(int argc, char **argv) {
    orig_argv = argv;
    if (argc < 3 || (strcmp(argv[1], "start") != 0 && strcmp(argv[1], "run") != 0)) python();
    const char *fault = getenv("BERTH_FAULT");
    if (fault && *fault) python();
    if (!strcmp(argv[1], "run"))
        return run_fast(argc, argv, env_or("BERTH_ROOT", "/var/lib/berth"), env_or("BERTH_RUN", "/run/berth"),
                        env_or("BERTH_CGROUP_PARENT", "berth"));
    warm();
    const char *root = env_or("BERTH_ROOT", "/var/lib/berth");
    const char *state = env_or("BERTH_RUN", "/run/berth");
    const char *parent = env_or("BERTH_CGROUP_PARENT", "berth");

    /* The names, each once, in order; each a guest of the store. */
    static char *names[MAX_NAMES];
    int count = 0;
    for (int i = 2; i < argc; i++) {
        if (argv[i][0] == '-' || !name_ok(argv[i]) || count == MAX_NAMES) python();
        int seen = 0;
        for (int j = 0; j < count; j++) seen |= !strcmp(names[j], argv[i]);
        if (seen) continue;
        char path[4096];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/guests/%s/config.toml", root, argv[i]) >= (int)sizeof path ||
            stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            python();
        names[count++] = argv[i];
    }

    /* Batches as berth.guests.lifecycle makes them. */
    long workers;
    const char *raw = getenv("BERTH_START_WORKERS");
    char trimmed[64] = "";
    if (raw) {
        while (*raw == ' ' || *raw == '\t' || *raw == '\n') raw++;
        size_t n = strlen(raw);
        while (n && (raw[n - 1] == ' ' || raw[n - 1] == '\t' || raw[n - 1] == '\n')) n--;
        if (n >= sizeof trimmed) python();
        memcpy(trimmed, raw, n);
        trimmed[n] = 0;
    }
    if (*trimmed) {
        for (const char *c = trimmed; *c; c++)
            if (*c < '0' || *c > '9') python();
        workers = strtol(trimmed, NULL, 10);
        if (workers < 1) python();
    } else {
        cpu_set_t set;
        int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : (int)sysconf(_SC_NPROCESSORS_ONLN);
        workers = (long)(cpus > 0 ? cpus : 1) * WORKERS_PER_CPU;
    }
    long size = (count + (count < workers ? count : workers) - 1) / (count < workers ? count : workers);

    struct buf env = {0};
    env_json(&env);
    if (!utf8_ok((const unsigned char *)root) || !utf8_ok((const unsigned char *)parent)) python();
    struct sockaddr_un addr;
    guestd_addr(state, &addr);

    int nbatch = (int)((count + size - 1) / size);
    int *socks = calloc((size_t)nbatch, sizeof(int));
    struct reply *out = calloc((size_t)count, sizeof *out);
    if (!socks || !out) return 125;
    int sent = 0;
    for (int b = 0; b < nbatch; b++) {
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0) {
            if (s >= 0) close(s);
            if (sent == 0) python(); /* guestd is not up: Python's path spawns it */
            break;
        }
        struct buf req = {0};
        puts_(&req, "{\"op\":\"start\",\"names\":[");
        for (long i = b * size; i < (b + 1) * size && i < count; i++) {
            if (i > b * size) puts_(&req, ",");
            json_str(&req, names[i], strlen(names[i]));
        }
        puts_(&req, "],\"fast\":true,\"env\":");
        put(&req, env.p, env.len);
        puts_(&req, ",\"store\":");
        json_str(&req, root, strlen(root));
        puts_(&req, ",\"cgroup_parent\":");
        json_str(&req, parent, strlen(parent));
        puts_(&req, "}\n");
        for (size_t off = 0; off < req.len;) {
            ssize_t n = send(s, req.p + off, req.len - off, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            off += (size_t)n;
        }
        free(req.p);
        socks[sent++] = s;
    }
    int stale = 0;
    for (int b = 0; b < nbatch; b++) {
        long lo = b * size, n = (b + 1) * size < count ? size : count - lo;
        if (b >= sent) {
            for (long i = lo; i < lo + n; i++) fail(&out[i], "the guest supervisor went away");
            continue;
        }
        if (!replies(socks[b], names + lo, (int)n, out + lo)) stale = 1;
        close(socks[b]);
    }
    for (int i = 0; i < count; i++) stale |= out[i].stale;
    if (stale) python(); /* build the stale specs: the running guests are a no-op there */

    struct buf errs = {0};
    int status = 0;
    for (int i = 0; i < count; i++) {
        if (out[i].ok) continue;
        const char *msg = out[i].error.p ? out[i].error.p : "None";
        if (count == 1) {
            fprintf(stderr, "berth: %s\n", msg);
            return out[i].status ? out[i].status : 125;
        }
        if (errs.len) puts_(&errs, "; ");
        puts_(&errs, "start ");
        puts_(&errs, names[i]);
        puts_(&errs, ": ");
        puts_(&errs, msg);
        status = 125;
    }
    if (status) fprintf(stderr, "berth: %s\n", errs.p);
    return status;
}
