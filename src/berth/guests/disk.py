"""Per-guest disk quota: an ext4 image (named after the guest) on a loop device holds the
overlay's upper and work directories, so writing past its size gives ENOSPC in that guest only.

The image is mounted on the host at ``guests/<name>/disk`` while the guest runs (the guest's
mount namespace is copied from the host's, so the overlay inside can use it) and unmounted,
its loop device detached, when the guest stops, is destroyed, or by ``berth gc``.
"""

from __future__ import annotations

import os

from berth.errors import BerthError, UnsupportedError, UsageError

#: The smallest disk berth makes.  mkfs.ext4 refuses an image under 128K with a three-line
#: message; under 1M its metadata leaves a guest next to no room: 1M is a round floor.
MIN_SIZE = 1 << 20


def check_size(size: int, text: str = "", field: str = "disk") -> int:
    """``size`` (bytes; ``text`` as given) if berth can make a disk of it, else a UsageError."""
    if size < MIN_SIZE:
        raise UsageError(field, f"{text or size!r} is below the smallest disk, 1M (an ext4 image)")
    return size


def _run(args: list[str]) -> str:
    import subprocess  # not on every start: only guests with --disk

    try:
        p = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        raise UnsupportedError(f"{args[0]} is not installed (apt-get install e2fsprogs mount)") from None
    if p.returncode != 0:
        raise BerthError(f"{' '.join(args)}: {p.stderr.strip() or f'exit status {p.returncode}'}")
    return p.stdout


def make_image(path: str, size: int) -> None:
    """A sparse ext4 image of ``size`` bytes (at least :data:`MIN_SIZE`)."""
    check_size(size)
    with open(path, "wb") as f:
        f.truncate(size)
    _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", path])


def loops_of(image: str) -> list[str]:
    """Loop devices backed by ``image``."""
    import subprocess  # not on every start: only guests with --disk

    out = subprocess.run(["losetup", "-j", image], capture_output=True, text=True, check=False).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


def is_mounted(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def attach(image: str, mnt: str) -> str:
    """Mount ``image`` on ``mnt`` through a loop device (reused if already there); the device."""
    import subprocess  # not on every start: only guests with --disk

    os.makedirs(mnt, 0o755, exist_ok=True)
    if is_mounted(mnt):
        loops = loops_of(image)
        return loops[0] if loops else ""
    dev = _run(["losetup", "--find", "--show", image]).strip()
    try:
        _run(["mount", "-t", "ext4", "-o", "nodev,nosuid", dev, mnt])
    except BaseException:
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
        raise
    for d in ("upper", "work"):
        os.makedirs(os.path.join(mnt, d), 0o755, exist_ok=True)
    return dev


def detach(image: str, mnt: str) -> None:
    """Unmount and free every loop device of ``image`` (idempotent)."""
    import subprocess  # not on every start: only guests with --disk

    while is_mounted(mnt):
        p = subprocess.run(["umount", mnt], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
            break
    for dev in loops_of(image):
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
