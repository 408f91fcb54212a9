/* Preloaded into CRIU 4.1.1 (tools/criu-install.sh): since Linux 6.16 SO_PASSCRED, SO_PASSPIDFD
 * and SO_PASSSEC exist only on Unix and netlink sockets; on a TCP socket getsockopt returns
 * EOPNOTSUPP and CRIU's dump fails ("Can't get 1:16 opt").  For those options, report "off"
 * (what they are on such a socket) and accept setting "off" again on restore. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#ifndef SO_PASSSEC
#define SO_PASSSEC 34
#endif
#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif

static int passopt(int level, int name)
{
	return level == SOL_SOCKET && (name == SO_PASSCRED || name == SO_PASSSEC || name == SO_PASSPIDFD);
}

int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	static int (*real)(int, int, int, void *, socklen_t *);
	if (!real)
		real = dlsym(RTLD_NEXT, "getsockopt");
	int r = real(fd, level, name, val, len);
	if (r < 0 && errno == EOPNOTSUPP && passopt(level, name) && val && len && *len >= sizeof(int)) {
		memset(val, 0, sizeof(int));
		*len = sizeof(int);
		return 0;
	}
	return r;
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	static int (*real)(int, int, int, const void *, socklen_t);
	if (!real)
		real = dlsym(RTLD_NEXT, "setsockopt");
	int r = real(fd, level, name, val, len);
	if (r < 0 && errno == EOPNOTSUPP && passopt(level, name) && val && len >= sizeof(int) &&
	    *(const int *)val == 0)
		return 0;
	return r;
}
