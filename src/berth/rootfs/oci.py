"""Import an OCI image into a root filesystem: an OCI image layout (a directory, or a tar of one
as ``podman save --format oci-archive`` writes) or a ``docker save`` / ``podman save`` archive.

The layers are applied in order by :func:`apply_layer`, a walker that never trusts the archive:

* every member name is relative and has no ``..`` component (else the import fails);
* every parent directory is opened component by component with ``O_NOFOLLOW`` from a file
  descriptor of the rootfs, so a symlink from an earlier layer (``etc -> /etc`` or ``a -> ..``)
  is never written through (the import fails instead);
* a hardlink's target must be a regular file inside the rootfs, found the same way;
* whiteouts (``.wh.NAME``) remove NAME from the lower layers, an opaque marker
  (``.wh..wh..opq``) empties its directory of what lower layers put there.

Device nodes (character and block) are *not* made, as rootless podman does not (docker does):
the runtime gives a guest its /dev, on a tmpfs over the image's, so a node in a layer is useful
to nobody, and one naming a host disk with mode 0666 (the image author's choice) would be a door
to it for whoever reaches the template.  What the layer put there replaces what lower layers
had (it is removed), and the skipped names are counted in the summary.  FIFOs are made; set-id
files keep their bits (su, ping): the template's dir is the host root's alone
(:mod:`berth.rootfs.template`).

Nothing an image says is trusted to be small: before a member is written the filesystem of the
store must have room for it (its data, and an inode) above a reserve
(:func:`berth.linux.statfs.no_room`), or the import fails naming the member; a sparse member is
written sparse (its holes are seeked over, never written as zeros).  Of the extended attributes
only those docker and containerd keep are applied (``user.*``, ``security.capability``,
``system.posix_acl_*``): never ``trusted.*`` (overlayfs's own, ``trusted.overlay.*``) nor a
security label.  A directory image's files are opened below a descriptor of the directory,
component by component, never through a symlink, and only if regular (a FIFO must not hang the
import).

Symlinks are *stored* as they are (absolute ones included: ``/etc/alternatives/…`` is normal in
a distribution); they are resolved only inside the guest, whose root is the rootfs.

Blob digests of an OCI layout are checked while the layers stream through.  Any fault (corrupt
tar or JSON, wrong digest, hostile member) raises :class:`ImageError` with one line.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile

from berth.errors import BerthError, UnsupportedError
from berth.linux.statfs import no_room

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO, Any

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_DIGEST = re.compile(r"^(sha256|sha512):([0-9a-f]{64}|[0-9a-f]{128})$")
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
SKIPPED_SHOWN = 10  # device nodes named in template.json (all are counted)
_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ID_MAX = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown
# The extended attributes applied from a layer (as docker and containerd): user.*, file
# capabilities and ACLs; trusted.* (overlayfs's trusted.overlay.*) and security labels are dropped.
_XATTRS_KEPT = ("user.", "security.capability", "system.posix_acl_access", "system.posix_acl_default")


class ImageError(BerthError):
    """An OCI image or archive is corrupt, incomplete, or has a layer that would escape the rootfs."""


def printable(text: str) -> str:
    """``text`` with its control and other unprintable characters escaped as ``repr`` does
    (``\\x1b``, ``\\n``): a name from an image quoted in a message cannot forge a terminal's output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# -- where the image's files come from --------------------------------------------------------
class _Source:
    """The files of an image: a directory or an (uncompressed) tar archive.  ``path`` itself is
    the caller's (followed if a symlink); a directory's files are opened below it, never
    through a symlink, and only if they are regular files."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.dirfd = -1
        self._file: IO[bytes] | None = None
        try:
            # O_NONBLOCK: a FIFO given as the image must not hang the import.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise ImageError(f"image {printable(path)}: cannot open ({e.strerror})") from None
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            self.dirfd = fd
            return
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise ImageError(f"image {printable(path)}: not an image directory or a tar archive")
        self._file = os.fdopen(fd, "rb")
        try:
            self.tar = tarfile.open(fileobj=self._file, mode="r:")  # noqa: SIM115 - closed by close()
            self.names = set(self.tar.getnames())
        except (tarfile.TarError, EOFError, OSError) as e:
            self.close()
            raise ImageError(
                f"image {printable(path)}: not an image directory or a tar archive ({e})"
            ) from None

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1

    def _where(self, rel: str) -> str:
        return f"image {printable(self.path)}: {printable(rel)}"

    def _lookup(self, rel: str) -> int | None:
        """An ``O_PATH`` descriptor of the directory image's ``rel`` (not followed if a
        symlink), every directory on the way opened with ``O_NOFOLLOW`` below the image's;
        None if something on the way does not exist."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if not parts or ".." in parts or rel.startswith("/") or "\0" in rel:
            raise ImageError(f"{self._where(rel)} points outside the image")
        fd = self.dirfd
        try:
            for i, comp in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    nfd = os.open(
                        comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC if last else _O_DIR, dir_fd=fd
                    )
                except FileNotFoundError:
                    return None
                except OSError as e:
                    so_far = "/".join(parts[: i + 1])
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise ImageError(f"{self._where(so_far)}: cannot open ({e.strerror})") from None
                    if stat.S_ISLNK(os.stat(comp, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise ImageError(f"{self._where(so_far)} is a symlink (not followed)") from None
                    raise ImageError(f"{self._where(so_far)} is not a directory") from None
                if fd != self.dirfd:
                    os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            if fd != self.dirfd:
                os.close(fd)
            raise

    def has(self, rel: str) -> bool:
        rel = rel.removeprefix("./")
        if self.tar is not None:
            return rel in self.names or f"./{rel}" in self.names
        fd = self._lookup(rel)  # anything there: open() says what is wrong with it
        if fd is None:
            return False
        os.close(fd)
        return True

    def open(self, rel: str) -> IO[bytes]:
        if ".." in rel.split("/") or rel.startswith("/"):
            raise ImageError(f"{self._where(rel)} points outside the image")
        rel = rel.removeprefix("./")
        if self.tar is not None:
            name = rel if rel in self.names else f"./{rel}"
            try:
                f = self.tar.extractfile(name)
            except (KeyError, tarfile.TarError):
                f = None
            if f is None:
                raise ImageError(f"{self._where(rel)} is missing")
            return f
        pfd = self._lookup(rel)
        if pfd is None:
            raise ImageError(f"{self._where(rel)} is missing")
        try:
            mode = os.fstat(pfd).st_mode
            if stat.S_ISLNK(mode):
                raise ImageError(f"{self._where(rel)} is a symlink (not followed)")
            if not stat.S_ISREG(mode):
                raise ImageError(f"{self._where(rel)} is not a regular file")
            # Opened again from the checked O_PATH descriptor: the very file that was checked.
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        finally:
            os.close(pfd)
        return os.fdopen(fd, "rb")

    def json(self, rel: str) -> Any:
        with self.open(rel) as f:
            data = f.read(16 << 20)
        try:
            return json.loads(data)
        except ValueError as e:
            raise ImageError(f"{self._where(rel)} is not valid JSON ({e})") from None


def open_image(path: str) -> _Source:
    """The image at ``path`` (a directory or a tar archive), to read its files; close() it."""
    return _Source(path)


def _blob_path(digest: str, where: str) -> str:
    m = _DIGEST.match(digest if isinstance(digest, str) else "")
    if not m:
        raise ImageError(f"image {where}: invalid digest {digest!r}")
    return f"blobs/{m.group(1)}/{m.group(2)}"


def _pick(manifests: list[dict[str, Any]], where: str) -> dict[str, Any]:
    if not isinstance(manifests, list) or not manifests:
        raise ImageError(f"image {where}: the index lists no manifest")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    for m in manifests:
        plat = m.get("platform") or {}
        if plat.get("os", "linux") == "linux" and plat.get("architecture", arch) == arch:
            return m
    return manifests[0]


class Layer:
    """One layer to apply: a name for messages, how to open it, and the digest to check."""

    def __init__(self, src: _Source, rel: str, digest: str | None) -> None:
        self.src, self.rel, self.digest = src, rel, digest


def layers(src: _Source) -> tuple[list[Layer], dict[str, Any]]:
    """The image's layers (bottom first) and its config (Cmd, Env, …: may be empty)."""
    where = printable(src.path)
    try:
        if src.has("index.json"):
            desc = _pick(src.json("index.json").get("manifests"), where)
            for _ in range(4):  # an index may point at an index (multi-platform)
                doc = src.json(_blob_path(desc.get("digest"), where))
                if doc.get("mediaType") in _INDEX_TYPES or "manifests" in doc:
                    desc = _pick(doc.get("manifests"), where)
                    continue
                break
            else:
                raise ImageError(f"image {where}: indexes nested too deep")
            cfg: dict[str, Any] = {}
            if isinstance(doc.get("config"), dict) and doc["config"].get("digest"):
                try:
                    cfg = src.json(_blob_path(doc["config"]["digest"], where))
                except ImageError:
                    cfg = {}
            out = []
            for ld in doc.get("layers") or []:
                out.append(Layer(src, _blob_path(ld.get("digest"), where), ld.get("digest")))
            return out, cfg if isinstance(cfg, dict) else {}
        if src.has("manifest.json"):
            man = src.json("manifest.json")
            if not isinstance(man, list) or not man or not isinstance(man[0], dict):
                raise ImageError(f"image {where}: manifest.json lists no image")
            entry = man[0]
            cfg = src.json(entry["Config"]) if entry.get("Config") else {}
            paths = entry.get("Layers")
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise ImageError(f"image {where}: manifest.json has no list of layers")
            return [Layer(src, p, None) for p in paths], cfg if isinstance(cfg, dict) else {}
    except (KeyError, AttributeError, TypeError) as e:
        raise ImageError(f"image {where}: malformed manifest ({e})") from None
    raise ImageError(
        f"image {where}: neither an OCI layout (index.json) nor a docker archive (manifest.json)"
    )


# -- reading a layer ---------------------------------------------------------------------------
class _Hashing(io.RawIOBase):
    """A reader that hashes what passes through it."""

    def __init__(self, f: IO[bytes], algo: str) -> None:
        self.f = f
        self.h = hashlib.new(algo)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.f.read(len(b))
        self.h.update(data)
        b[: len(data)] = data
        return len(data)

    def drain_hash(self) -> str:
        while True:
            data = self.f.read(1 << 20)
            if not data:
                return self.h.hexdigest()
            self.h.update(data)


def _decompressing(raw: IO[bytes], where: str) -> IO[bytes]:
    head = raw.read(6)
    stream = io.BufferedReader(_Prefixed(head, raw))  # type: ignore[arg-type]
    if head.startswith(b"\x1f\x8b"):
        import gzip

        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise UnsupportedError(f"{where}: zstd-compressed layers are not supported")
    if head.startswith(b"BZh"):
        import bz2

        return bz2.BZ2File(stream)  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ"):
        import lzma

        return lzma.LZMAFile(stream)  # type: ignore[return-value]
    return stream  # type: ignore[return-value]


class _Prefixed(io.RawIOBase):
    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(b))
        b[: len(data)] = data
        return len(data)


def members(layer: Layer) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """The layer's tar members, in order (the digest is checked after the last one)."""
    where = f"layer {printable(layer.rel)}"
    raw = layer.src.open(layer.rel)
    hashing = None
    if layer.digest:
        hashing = _Hashing(raw, layer.digest.split(":", 1)[0])
        raw = io.BufferedReader(hashing)  # type: ignore[assignment]
    try:
        with tarfile.open(fileobj=_decompressing(raw, where), mode="r|") as tf:
            for m in tf:
                yield m, tf
        if hashing is not None:
            got = hashing.drain_hash()
            if f"{layer.digest.split(':', 1)[0]}:{got}" != layer.digest:  # type: ignore[union-attr]
                raise ImageError(f"{where}: digest mismatch (blob is corrupt)")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if isinstance(e, BerthError):
            raise
        raise ImageError(f"{where}: corrupt ({e})") from None
    finally:
        raw.close()


# -- applying a layer --------------------------------------------------------------------------
def _parts(name: str, where: str) -> list[str]:
    """The path components of a member name, refusing anything that leaves the rootfs."""
    if name.startswith("/"):
        raise ImageError(f"{where}: member {name!r} is an absolute path (escapes the rootfs)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"{where}: member {name!r} has '..' (escapes the rootfs)")
    if "\0" in name:
        raise ImageError(f"{where}: member {name!r} has a NUL byte")
    return parts


def _open_dir(rootfd: int, parts: list[str], where: str, name: str, *, create: bool) -> int:
    """An O_PATH fd of the directory ``parts`` below the rootfs, never following a symlink."""
    fd = os.dup(rootfd)
    try:
        for i, comp in enumerate(parts):
            try:
                nfd = os.open(comp, _O_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(comp, 0o755, dir_fd=fd)
                nfd = os.open(comp, _O_DIR, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                so_far = "/".join(parts[: i + 1])
                if stat.S_ISLNK(st.st_mode):
                    raise ImageError(
                        f"{where}: member {name!r} would be written through the symlink {so_far!r}"
                    ) from None
                raise ImageError(f"{where}: member {name!r}: {so_far!r} is not a directory") from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _remove(dirfd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)


def _utime(target: int | str, m: tarfile.TarInfo, dirfd: int | None = None) -> None:
    try:  # a time the filesystem cannot hold (PAX mtime 1e300, nan) leaves the file's own
        os.utime(target, (m.mtime, m.mtime), dir_fd=dirfd, follow_symlinks=dirfd is None)
    except (OSError, OverflowError, ValueError):
        pass


def _owner_times(dirfd: int, name: str, m: tarfile.TarInfo, *, link: bool = False) -> None:
    os.chown(name, m.uid, m.gid, dir_fd=dirfd, follow_symlinks=False)
    if not link:
        os.chmod(name, m.mode & 0o7777, dir_fd=dirfd)
    _utime(name, m, dirfd)


def _xattrs(fd: int, m: tarfile.TarInfo) -> None:
    for key, value in (m.pax_headers or {}).items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr.") :]
        if name.startswith(_XATTRS_KEPT):  # see _XATTRS_KEPT: never trusted.*, no label
            try:
                os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
            except OSError:
                pass


def _data_blocks(m: tarfile.TarInfo, where: str) -> list[tuple[int, int]]:
    """The (offset, length) stretches of a regular member's data: one, or a sparse member's map
    (checked: in order, not overlapping, inside the file's size)."""
    if m.sparse is None:
        return [(0, m.size)] if m.size else []
    out: list[tuple[int, int]] = []
    end = 0
    for off, n in m.sparse:
        if n == 0:
            continue  # GNU tar ends its map with empty entries
        if off < end or n < 0 or off + n > m.size:
            raise ImageError(f"{where}: member {m.name!r} has a bad sparse map")
        out.append((off, n))
        end = off + n
    return out


def _check_member(rootfd: int, m: tarfile.TarInfo, data: int, where: str) -> None:
    """Refuse a member whose owner the kernel cannot take, or that the store has no room for
    (``data`` bytes, and an inode unless it is a hardlink or a device node, never made)."""
    for field, value in (("uid", m.uid), ("gid", m.gid)):
        if not 0 <= value <= _ID_MAX:
            raise ImageError(f"{where}: member {m.name!r}: {field} {value} is out of range (0-{_ID_MAX})")
    inodes = 0 if m.islnk() or m.ischr() or m.isblk() else 1
    why = no_room(rootfd, data, inodes) if data or inodes else None
    if why:
        raise ImageError(f"{where}: member {m.name!r}: {why}")


def apply_layer(rootfd: int, layer: Layer, skipped: list[str] | None = None) -> int:
    """Apply one layer onto the rootfs open at ``rootfd``; the number of members applied.
    The names of device nodes not made are appended to ``skipped``."""
    where = f"layer {printable(layer.rel)}"
    added: set[tuple[str, ...]] = set()  # what this layer made (a whiteout never removes it)
    count = 0
    for m, tf in members(layer):
        parts = _parts(m.name, where)
        if not parts:
            continue  # the root itself
        base = parts[-1]
        if base.startswith(WHITEOUT):
            pfd = _open_dir(rootfd, parts[:-1], where, m.name, create=True)
            try:
                if base == OPAQUE:
                    rfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
                    try:
                        entries = os.listdir(rfd)
                    finally:
                        os.close(rfd)
                    for entry in entries:
                        if (*parts[:-1], entry) not in added:
                            _remove(pfd, entry)
                else:
                    victim = base[len(WHITEOUT) :]
                    if victim in ("", ".", "..") or "/" in victim:
                        raise ImageError(f"{where}: bad whiteout {m.name!r}")
                    if (*parts[:-1], victim) not in added:
                        _remove(pfd, victim)
            finally:
                os.close(pfd)
            continue
        blocks = _data_blocks(m, where) if m.isreg() else []
        _check_member(rootfd, m, sum(n for _, n in blocks), where)
        pfd = _open_dir(rootfd, parts[:-1], where, m.name, create=True)
        try:
            made = _apply_member(pfd, base, m, tf, rootfd, where, blocks)
        finally:
            os.close(pfd)
        if not made and skipped is not None:
            skipped.append("/".join(parts))
        added.add(tuple(parts))
        count += 1
    return count


def _apply_member(
    pfd: int,
    base: str,
    m: tarfile.TarInfo,
    tf: tarfile.TarFile,
    rootfd: int,
    where: str,
    blocks: list[tuple[int, int]],
) -> bool:
    """Make member ``m`` as ``base`` in ``pfd`` (a regular file's data: ``blocks``, from
    :func:`_data_blocks`); False: a device node, not made (what was there removed all the same)."""
    try:
        old = os.stat(base, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if m.isdir():
        if old is not None and not stat.S_ISDIR(old.st_mode):
            _remove(pfd, base)
            old = None
        if old is None:
            os.mkdir(base, 0o700, dir_fd=pfd)
        _owner_times(pfd, base, m)
        return True
    if old is not None:
        _remove(pfd, base)
    if m.isreg():
        fd = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd
        )
        try:
            _write_data(fd, m, tf, blocks, where)
            os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & 0o7777)
            _xattrs(fd, m)
            _utime(fd, m)
        finally:
            os.close(fd)
    elif m.issym():
        os.symlink(m.linkname, base, dir_fd=pfd)
        _owner_times(pfd, base, m, link=True)
    elif m.islnk():
        tparts = _parts(m.linkname, where)
        if not tparts:
            raise ImageError(f"{where}: hardlink {m.name!r} to the rootfs itself")
        tfd = _open_dir(rootfd, tparts[:-1], where, m.name, create=False)
        try:
            st = os.stat(tparts[-1], dir_fd=tfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(f"{where}: hardlink {m.name!r} to {m.linkname!r}, not a regular file")
            os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise ImageError(
                f"{where}: hardlink {m.name!r} to {m.linkname!r}, which does not exist"
            ) from None
        finally:
            os.close(tfd)
    elif m.isfifo():
        os.mkfifo(base, 0o600, dir_fd=pfd)
        _owner_times(pfd, base, m)
    elif m.ischr() or m.isblk():
        return False  # not made: see the module's docstring
    else:
        raise ImageError(f"{where}: member {m.name!r} has an unsupported type {m.type!r}")
    return True


def _write_data(
    fd: int, m: tarfile.TarInfo, tf: tarfile.TarFile, blocks: list[tuple[int, int]], where: str
) -> None:
    """A regular member's data into ``fd``; a sparse member's holes are seeked over (the file is
    made as sparse as it was), then the file is cut to its size."""
    src = tf.extractfile(m)
    if src is None:
        return
    if m.sparse is None:
        while chunk := src.read(1 << 20):
            os.write(fd, chunk)
        return
    raw = src.raw  # the member's own reader, which seeks (the buffered one would ask the stream)
    for start, length in blocks:
        raw.seek(start)
        done = 0
        while done < length:
            chunk = raw.read(min(length - done, 1 << 20))
            if not chunk:
                raise ImageError(f"{where}: member {m.name!r} is truncated")
            os.pwrite(fd, chunk, start + done)
            done += len(chunk)
    os.ftruncate(fd, m.size)


def image_config(cfg: dict[str, Any], where: str = "image") -> dict[str, Any]:
    """The parts of an image config a guest uses as its defaults, checked: ``Entrypoint`` and
    ``Cmd`` (lists of strings), ``Env`` (``NAME=VALUE`` strings: a bare name would take the
    host's value), ``WorkingDir`` (made absolute, as docker does) and ``User`` (a string).
    Empty or null fields are left out; a field of the wrong type is an :class:`ImageError`."""
    c = cfg.get("config") or cfg.get("container_config") or {}
    if not isinstance(c, dict):
        raise ImageError(f"{where}: config.config is not an object")
    out: dict[str, Any] = {}
    for key in ("Entrypoint", "Cmd", "Env"):
        v = c.get(key)
        if v is None or v == []:
            continue
        if isinstance(v, str) and key != "Env":
            v = ["/bin/sh", "-c", v]  # the shell form (old docker configs)
        if not isinstance(v, list) or not all(isinstance(x, str) and "\0" not in x for x in v):
            raise ImageError(f"{where}: config.{key} must be a list of strings")
        if key == "Env":
            bad = next((x for x in v if not x.partition("=")[0] or "=" not in x), None)
            if bad is not None:
                raise ImageError(f"{where}: config.Env: {bad!r} is not NAME=VALUE")
        out[key] = list(v)
    for key in ("WorkingDir", "User"):
        v = c.get(key)
        if v is None or v == "":
            continue
        if not isinstance(v, str) or "\0" in v:
            raise ImageError(f"{where}: config.{key} must be a string")
        if key == "WorkingDir":
            v = os.path.normpath("/" + v.lstrip("/"))
        out[key] = v
    return out


def unpack(image: str, rootfs: str) -> dict[str, Any]:
    """Apply ``image``'s layers onto the empty directory ``rootfs``; a summary for template.json."""
    import zlib

    src = _Source(image)
    where = f"image {printable(image)}"
    try:
        todo, cfg = layers(src)
        defaults = image_config(cfg, where)  # checked before any layer is applied
        rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        skipped: list[str] = []
        try:
            n = 0
            for layer in todo:
                where = f"layer {printable(layer.rel)}"
                n += apply_layer(rootfd, layer, skipped)
        finally:
            os.close(rootfd)
        out = {"layers": len(todo), "members": n, "config": defaults}
        if skipped:
            out["devices_skipped"] = len(skipped)
            out["devices_skipped_names"] = skipped[:SKIPPED_SHOWN]
        return out
    except BerthError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, ValueError, OverflowError, OSError) as e:
        raise ImageError(f"{where}: corrupt or unreadable ({type(e).__name__}: {e})") from None
    finally:
        src.close()
