#!/usr/bin/env bash
# Replace the venv's console scripts with launchers that start Python isolated and without
# site-packages scanning (-I -S): berth's start path is measured against runc's.
set -euo pipefail
venv=$(cd "$1" && pwd)
src=$(cd "$(dirname "$0")/../src" && pwd)
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for pair in "berth:berth.cli" "berth-runtime:berth.oci"; do
  name=${pair%%:*}; mod=${pair#*:}
  cat > "$venv/bin/$name" <<PYEOF
#!$venv/bin/python -IS
import sys
sys.path[:0] = ["$src"]
sys.path.append("$site")
from $mod import main
sys.exit(main())
PYEOF
  chmod 755 "$venv/bin/$name"
done
