#!/usr/bin/env bash
# Install CRIU 4.1.1 from Debian 13 (trixie) into berth's tools directory, never over the host:
# apt-get download (with a private apt configuration: the host's sources are not touched) +
# dpkg -x of criu and its libraries, run through the bundle's own dynamic loader (tools dir/criu).
# Debian 12's criu 3.17 fails `criu check` on recent kernels (vdso); 4.1.1 passes.
# Usage: tools/criu-install.sh [DEST]   (default /var/lib/berth/tools/criu); safe to run twice.
set -euo pipefail
DEST=${1:-/var/lib/berth/tools/criu}
SUITE=${CRIU_SUITE:-trixie}
PKGS="criu libcompel1 libbsd0 libc6 libffi8 libgcc-s1 gcc-14-base libgmp10 libgnutls30t64 libhogweed6t64
  libidn2-0 libjansson4 libmd0 libmnl0 libnet1 libnettle8t64 libnftables1 libnftnl11 libnl-3-200
  libp11-kit0 libprotobuf-c1 libtasn1-6 libunistring5 libuuid1 libxtables12"

HERE=$(cd "$(dirname "$0")" && pwd)
if [ -x "$DEST/criu" ] && [ -f "$DEST/.installed-2" ] && "$DEST/criu" --version >/dev/null 2>&1; then
  exit 0
fi
# The archive host the machine already uses (deb.debian.org or a mirror), suite $SUITE.
mirror=$(grep -hoE '(URIs:|deb) +https?://[^ ]+/debian( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
  /etc/apt/sources.list.d/*.list 2>/dev/null | grep -oE 'https?://[^ ]+' | head -1 || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
tmp=$(mktemp -d /tmp/berth-criu.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $SUITE main" >"$tmp/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$tmp/lists"
  -o "Dir::Cache=$tmp/cache" -o APT::Sandbox::User=root -qq)
echo "criu: downloading CRIU and its libraries from Debian $SUITE into $DEST"
apt-get "${apt_opts[@]}" update
# shellcheck disable=SC2086
(cd "$tmp/debs" && apt-get "${apt_opts[@]}" download $PKGS)
new="$DEST.new.$$"
rm -rf "$new"
mkdir -p "$new/root"
for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$new/root"; done
# Linux >= 6.16 refuses SO_PASSCRED/SO_PASSSEC on TCP sockets, which CRIU 4.1.1 reads: a shim.
gcc -shared -fPIC -O2 -o "$new/sockopt-shim.so" "$HERE/criu-sockopt-shim.c" -ldl
cat >"$new/criu" <<'WRAP'
#!/bin/sh
# CRIU from the bundle next to this script, through the bundle's own loader and libraries
# (--library-path, not LD_LIBRARY_PATH: programs CRIU runs keep the host's libraries).
t=$(dirname "$(readlink -f "$0")")
d=$t/root
exec "$d/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --preload "$t/sockopt-shim.so" \
  --library-path "$d/usr/lib/x86_64-linux-gnu:$d/lib/x86_64-linux-gnu" "$d/usr/sbin/criu" "$@"
WRAP
chmod 755 "$new/criu"
# usrmerge: the loader may be under lib/ instead of usr/lib/
[ -e "$new/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] || \
  sed -i 's#\$d/usr/lib/x86_64-linux-gnu/ld-linux#$d/lib/x86_64-linux-gnu/ld-linux#' "$new/criu"
"$new/criu" --version >/dev/null
touch "$new/.installed-2"
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$new" "$DEST"
echo "criu: $("$DEST/criu" --version | head -1) in $DEST"
