/* Preloaded into Debian's User-Mode Linux (6.1 and 6.12) on hosts whose XSAVE area is larger than
 * the one UML was built for (AVX-512, AMX, CET: ~2.7 KiB and more, against UML's 832-byte
 * struct _xstate).
 *
 * UML saves and restores each of its processes' FP registers with
 * ptrace(PTRACE_{GET,SET}REGSET, NT_X86_XSTATE) and a buffer of sizeof(struct _xstate).  The host
 * hands out a shorter copy for a GET, but refuses a SET whose size is not the whole XSAVE area
 * (EFAULT: xstateregs_set), so UML panics at its first process ("userspace - ptrace set fp regs
 * failed, errno = 14").  Linux 6.13 fixed UML itself (it asks the host for the size); Debian has
 * no such UML.
 *
 * This wrapper of ptrace() keeps, per traced pid, the whole area of UML's last GET and builds a
 * SET from it: UML's bytes (x87, SSE, the XSAVE header and the AVX halves) over the whole area.
 * The state UML does not know of (AVX-512, AMX, CET) is thus what the host process held when UML
 * last read it, as before on hosts without those features, where UML never saved them either.
 * A SET with no GET before it reads the area first (one more ptrace call).  Every other call
 * passes through unchanged, as do calls whose size already is the host's. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#define AREA_MAX 16384 /* above any XSAVE area with AMX's tiles (~11 KiB) */
#define SLOTS 64

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

static struct {
	pid_t pid;
	size_t len;
	unsigned char area[AREA_MAX];
} slot[SLOTS];

static ptrace_fn real_ptrace(void)
{
	static ptrace_fn fn;
	if (!fn)
		fn = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
	return fn;
}

static int slot_of(pid_t pid)
{
	for (int i = 0; i < SLOTS; i++)
		if (slot[i].pid == pid)
			return i;
	for (int i = 0; i < SLOTS; i++)
		if (slot[i].pid == 0)
			return i;
	return (int)((unsigned)pid % SLOTS); /* full: reuse one (a SET then reads the area first) */
}

/* The whole area of ``pid`` into its slot; its length, or -1. */
static long read_area(pid_t pid, int i)
{
	struct iovec iov = { slot[i].area, AREA_MAX };
	long r = real_ptrace()(PTRACE_GETREGSET, pid, (void *)(long)NT_X86_XSTATE, &iov);
	if (r < 0) {
		slot[i].pid = 0;
		return -1;
	}
	slot[i].pid = pid;
	slot[i].len = iov.iov_len;
	return (long)iov.iov_len;
}

long ptrace(enum __ptrace_request req, ...)
{
	va_list ap;
	va_start(ap, req);
	pid_t pid = va_arg(ap, pid_t);
	void *addr = va_arg(ap, void *);
	void *data = va_arg(ap, void *);
	va_end(ap);

	if ((req == PTRACE_GETREGSET || req == PTRACE_SETREGSET) && (long)addr == NT_X86_XSTATE && data) {
		struct iovec *io = data;
		int i = slot_of(pid);
		if (req == PTRACE_GETREGSET) {
			int saved = errno;
			if (read_area(pid, i) < 0)
				return real_ptrace()(req, pid, addr, data);
			size_t n = io->iov_len < slot[i].len ? io->iov_len : slot[i].len;
			memcpy(io->iov_base, slot[i].area, n);
			io->iov_len = n;
			errno = saved;
			return 0;
		}
		if ((slot[i].pid != pid && read_area(pid, i) < 0) || io->iov_len >= slot[i].len)
			return real_ptrace()(req, pid, addr, data);
		memcpy(slot[i].area, io->iov_base, io->iov_len);
		struct iovec whole = { slot[i].area, slot[i].len };
		return real_ptrace()(req, pid, addr, &whole);
	}
	return real_ptrace()(req, pid, addr, data);
}
