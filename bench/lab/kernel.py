"""Debian's kernel for lab guests: ``apt-get download`` + ``dpkg -x`` into a cache, never installed.

The generic ``linux-image-amd64`` flavour is the default: Debian 12's ``cloud-amd64`` flavour has
no 9p (``CONFIG_9P_FS`` unset), and the lab shares the host's root with the guest over 9p.
``depmod -b`` runs on the unpacked tree so the guest's ``modprobe`` works too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.lab.errors import NoKernel, ToolMissing

CACHE = Path(os.environ.get("BERTH_LAB_CACHE", "/var/cache/berth-lab"))
DEFAULT_FLAVOUR = os.environ.get("BERTH_LAB_KERNEL_FLAVOUR", "amd64")


@dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel: ``vmlinuz`` to boot and its module tree."""

    version: str  # e.g. 6.1.0-56-amd64
    root: Path  # dpkg -x destination
    vmlinuz: Path

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    def module_paths(self, names: list[str]) -> list[Path]:
        """The .ko files for ``names`` and their dependencies, in load order (deps first)."""
        deps: dict[str, list[str]] = {}
        for line in (self.modules / "modules.dep").read_text().splitlines():
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
        by_name = {_modname(p): p for p in deps}
        order: list[str] = []

        def visit(path: str) -> None:
            if path in order:
                return
            for dep in deps[path]:
                visit(dep)
            order.append(path)

        builtin = (self.modules / "modules.builtin").read_text().split()
        builtin_names = {_modname(p) for p in builtin}
        for name in names:
            key = name.replace("-", "_")
            if key in by_name:
                visit(by_name[key])
            elif key not in builtin_names:
                raise NoKernel(f"kernel {self.version} has no module {name!r}")
        return [self.modules / p for p in order]


def _modname(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base).replace("-", "_")


def _package_for(flavour: str) -> str:
    """The versioned image package the ``linux-image-<flavour>`` meta-package depends on."""
    if shutil.which("apt-cache") is None:
        raise ToolMissing("apt-cache is not installed: cannot find Debian's kernel package")
    out = subprocess.run(
        ["apt-cache", "depends", f"linux-image-{flavour}"], capture_output=True, text=True, timeout=60
    )
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*)", out.stdout)
    if out.returncode != 0 or m is None:
        raise NoKernel(f"no kernel package: apt-cache knows no linux-image-{flavour} ({out.stderr.strip()})")
    return m.group(1)


def _cached(flavour: str) -> Kernel | None:
    found = sorted((CACHE / "kernels").glob(f"*-{flavour}/.complete"))
    if not found:
        return None
    root = found[-1].parent
    return Kernel(root.name, root, root / "boot" / f"vmlinuz-{root.name}")


def ensure_kernel(flavour: str = DEFAULT_FLAVOUR, *, refresh: bool = False) -> Kernel:
    """The unpacked kernel of ``flavour`` from the cache, fetched and unpacked on first use."""
    if not refresh and (k := _cached(flavour)) is not None:
        return k
    for tool in ("apt-get", "dpkg", "depmod"):
        if shutil.which(tool) is None:
            raise ToolMissing(f"{tool} is not installed: cannot fetch Debian's kernel")
    package = _package_for(flavour)
    version = package.removeprefix("linux-image-")
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = next(debs.glob(f"{package}_*.deb"), None)
    if deb is None:
        r = subprocess.run(
            ["apt-get", "download", "-q", package], cwd=debs, capture_output=True, text=True, timeout=600
        )
        deb = next(debs.glob(f"{package}_*.deb"), None)
        if deb is None:
            raise NoKernel(f"no kernel package: apt-get download {package} failed: {r.stderr.strip()[-300:]}")
    root = CACHE / "kernels" / version
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    r = subprocess.run(["dpkg", "-x", str(deb), str(tmp)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise NoKernel(f"dpkg -x {deb.name} failed: {r.stderr.strip()}")
    r = subprocess.run(["depmod", "-b", str(tmp), version], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise NoKernel(f"depmod on {version} failed: {r.stderr.strip()}")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    (root / ".complete").write_text(deb.name + "\n")
    k = Kernel(version, root, root / "boot" / f"vmlinuz-{version}")
    if not k.vmlinuz.exists():
        raise NoKernel(f"{deb.name} holds no boot/vmlinuz-{version}")
    return k
