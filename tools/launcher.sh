#!/usr/bin/env bash
# Replace the venv's console scripts with launchers that start Python isolated and without
# site-packages scanning (-I -S): berth's start path is measured against runc's.
#
# `berth` itself is a small C program (src/berth/guests/fastclient.c) when a C compiler is there:
# it does `berth start NAME...` through guestd's fast path without starting Python (~12 ms here)
# and hands every other command to the Python launcher, written as berth-py beside it.  Without
# a compiler, `berth` is the Python launcher.  berth-wait (src/berth/runtime/waiter.c) is what a
# `berth run` becomes while its guest runs (berth.runtime.run); without it berth run waits in Python.
set -euo pipefail
venv=$(cd "$1" && pwd)
src=$(cd "$(dirname "$0")/../src" && pwd)
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for pair in "berth:berth.cli" "berth-runtime:berth.oci"; do
  name=${pair%%:*}; mod=${pair#*:}
  cat > "$venv/bin/$name.tmp" <<PYEOF
#!$venv/bin/python -IS
import sys
sys.path[:0] = ["$src"]
sys.path.append("$site")
from $mod import main
sys.exit(main())
PYEOF
  chmod 755 "$venv/bin/$name.tmp"
  mv -f "$venv/bin/$name.tmp" "$venv/bin/$name"
done
cp -f "$venv/bin/berth" "$venv/bin/berth-py.tmp"
mv -f "$venv/bin/berth-py.tmp" "$venv/bin/berth-py"
cc=$(command -v cc || command -v gcc || true)
launcher() {  # $1: extra flags.  Static where libc.a is there: no dynamic loader at each command
  "$cc" -O2 -Wall -Wextra -Wno-sign-compare $1 \
    -DBERTH_PYTHON="\"$venv/bin/python\"" -DBERTH_SCRIPT="\"$venv/bin/berth-py\"" \
    -o "$venv/bin/berth.tmp" "$src/berth/guests/fastclient.c"
}
if [ -n "$cc" ] && { launcher -static 2>/dev/null || launcher ""; }; then
  mv -f "$venv/bin/berth.tmp" "$venv/bin/berth"
else
  rm -f "$venv/bin/berth.tmp"
  echo "launcher.sh: no C compiler (or the build failed): berth is the Python launcher alone" >&2
fi
if [ -n "$cc" ] && "$cc" -O2 -Wall -Wextra -o "$venv/bin/berth-wait.tmp" "$src/berth/runtime/waiter.c"; then
  mv -f "$venv/bin/berth-wait.tmp" "$venv/bin/berth-wait"
else
  rm -f "$venv/bin/berth-wait.tmp" "$venv/bin/berth-wait"
  echo "launcher.sh: no C compiler (or the build failed): berth run waits for its guest in Python" >&2
fi
