/* berth-wait: what `berth run` keeps in memory while its guest runs.
 *
 *   berth-wait [--hangup FD] PID SIGNALS CMD [ARG...]
 *
 * berth.runtime.run execs this once the guest's init (PID, our child: we are its subreaper, and it
 * dies with us by PR_SET_PDEATHSIG) runs its command.  The process stays the same, so the init stays
 * our child and its parent-death signal stays armed.  It forwards SIGNALS (comma-separated numbers:
 * berth.runtime.run.FORWARDED) to the init, waits for it, and then execs CMD ARG... STATUS: the
 * Python cleanup (`berth _run-exit`), with the init's exit status (128+N if killed by signal N)
 * appended.  A Python interpreter idles at several MiB; this at a few hundred KiB.
 *
 * Signals: Python blocks SIGNALS before the exec (the mask and pending signals survive execve), so
 * a signal sent between the guest's start and here is delivered once the handlers are installed.
 * They are blocked again before the cleanup is exec'd, which installs its own handlers.
 *
 * --hangup FD (a berth run of guestd's worker, berth.cli.run_guestd): the socket to the command
 * that asked; if it is closed before the guest ends (the command was killed), the guest is killed,
 * as a berth run's guest dies with it.
 *
 * Built by tools/launcher.sh beside the Python launcher; without it berth run waits in Python.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t target;

static void forward(int sig) {
    int saved = errno;
    kill(target, sig);
    errno = saved;
}

static int number(const char *s, const char *end, long *out) {
    char *stop;
    errno = 0;
    long v = strtol(s, &stop, 10);
    if (errno || stop == s || stop != end || v <= 0) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv) {
    long hangup = -1;
    if (argc >= 3 && !strcmp(argv[1], "--hangup")) {
        if (number(argv[2], argv[2] + strlen(argv[2]), &hangup) < 0) {
            fprintf(stderr, "berth-wait: --hangup: %s is not a descriptor\n", argv[2]);
            return 125;
        }
        argv += 2;
        argc -= 2;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: berth-wait [--hangup FD] PID SIGNALS CMD [ARG...] (started by berth run)\n");
        return 125;
    }
    long pid;
    if (number(argv[1], argv[1] + strlen(argv[1]), &pid) < 0) {
        fprintf(stderr, "berth-wait: PID: %s is not a process id\n", argv[1]);
        return 125;
    }
    target = (pid_t)pid;
    sigset_t set;
    sigemptyset(&set);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sa.sa_flags = SA_RESTART;
    sigfillset(&sa.sa_mask);
    for (const char *p = argv[2]; *p;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        long sig;
        if (number(p, end, &sig) < 0 || sig >= NSIG || sigaction((int)sig, &sa, NULL) < 0) {
            fprintf(stderr, "berth-wait: SIGNALS: %s is not a list of signal numbers\n", argv[2]);
            return 125;
        }
        sigaddset(&set, (int)sig);
        p = *end ? end + 1 : end;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); /* kept across execve: said again for clarity */
    sigprocmask(SIG_UNBLOCK, &set, NULL);

    /* Wait for the init's end without reaping it (WNOWAIT): until the signals are blocked
     * again, a forwarded one still finds the init's pid, not a reused one. */
    int code = 255; /* as container.wait_exit: 255 when the init is not our child */
    int ended = 0;
    if (hangup >= 0) {
        /* Until the init ends: a hangup of the asker's socket kills it (then it ends). */
        int pidfd = (int)syscall(SYS_pidfd_open, target, 0);
        while (pidfd >= 0) {
            struct pollfd pfd[2] = {{pidfd, POLLIN, 0}, {(int)hangup, POLLRDHUP, 0}};
            int n = poll(pfd, hangup >= 0 ? 2 : 1, -1);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 || pfd[0].revents) break;
            if (pfd[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
                kill(target, SIGKILL);
                hangup = -1;
            }
        }
        if (pidfd >= 0) close(pidfd);
    }
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)target, &si, WEXITED | WNOWAIT) == 0) {
            ended = 1;
            break;
        }
        if (errno != EINTR) break;
    }
    sigprocmask(SIG_BLOCK, &set, NULL);
    int status = 0;
    pid_t got = -1;
    if (ended) {
        do got = waitpid(target, &status, 0);
        while (got < 0 && errno == EINTR);
    }
    if (got == target && WIFEXITED(status)) code = WEXITSTATUS(status);
    else if (got == target && WIFSIGNALED(status)) code = 128 + WTERMSIG(status);

    char status_arg[16];
    snprintf(status_arg, sizeof status_arg, "%d", code);
    char **args = calloc(argc - 1, sizeof(char *)); /* argv[3..] + status + NULL */
    if (!args) return 125;
    for (int i = 3; i < argc; i++) args[i - 3] = argv[i];
    args[argc - 3] = status_arg;
    execv(args[0], args);
    fprintf(stderr, "berth: cannot run %s to clean up after the guest (berth gc removes what is left): %s\n",
            args[0], strerror(errno));
    return 125;
}
