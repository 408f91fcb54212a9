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


class ImageError(BerthError):
    """An OCI image or archive is corrupt, incomplete, or has a layer that would escape the rootfs."""


# -- where the image's files come from --------------------------------------------------------
class _Source:
    """The files of an image: a directory or an (uncompressed) tar archive."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        if os.path.isdir(path):
            return
        try:
            self.tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by close()
            self.names = set(self.tar.getnames())
        except (tarfile.TarError, EOFError, OSError) as e:
            if self.tar is not None:
                self.tar.close()
            raise ImageError(f"image {path}: not an image directory or a tar archive ({e})") from None

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()

    def has(self, rel: str) -> bool:
        rel = rel.removeprefix("./")
        if self.tar is not None:
            return rel in self.names or f"./{rel}" in self.names
        return os.path.isfile(os.path.join(self.path, rel))

    def open(self, rel: str) -> IO[bytes]:
        if ".." in rel.split("/") or rel.startswith("/"):
            raise ImageError(f"image {self.path}: path {rel!r} points outside the image")
        rel = rel.removeprefix("./")
        if self.tar is not None:
            name = rel if rel in self.names else f"./{rel}"
            try:
                f = self.tar.extractfile(name)
            except (KeyError, tarfile.TarError):
                f = None
            if f is None:
                raise ImageError(f"image {self.path}: {rel} is missing")
            return f
        try:
            return open(os.path.join(self.path, rel), "rb")
        except FileNotFoundError:
            raise ImageError(f"image {self.path}: {rel} is missing") from None

    def json(self, rel: str) -> Any:
        with self.open(rel) as f:
            data = f.read(16 << 20)
        try:
            return json.loads(data)
        except ValueError as e:
            raise ImageError(f"image {self.path}: {rel} is not valid JSON ({e})") from None


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
    where = src.path
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
    where = f"layer {layer.rel}"
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


def _owner_times(dirfd: int, name: str, m: tarfile.TarInfo, *, link: bool = False) -> None:
    os.chown(name, m.uid, m.gid, dir_fd=dirfd, follow_symlinks=False)
    if not link:
        os.chmod(name, m.mode & 0o7777, dir_fd=dirfd)
    try:
        os.utime(name, (m.mtime, m.mtime), dir_fd=dirfd, follow_symlinks=False)
    except (OSError, OverflowError, ValueError):
        pass


def _xattrs(fd: int, m: tarfile.TarInfo) -> None:
    for key, value in (m.pax_headers or {}).items():
        if key.startswith("SCHILY.xattr."):
            try:
                os.setxattr(fd, key[len("SCHILY.xattr.") :], value.encode("utf-8", "surrogateescape"))
            except OSError:
                pass


def apply_layer(rootfd: int, layer: Layer, skipped: list[str] | None = None) -> int:
    """Apply one layer onto the rootfs open at ``rootfd``; the number of members applied.
    The names of device nodes not made are appended to ``skipped``."""
    where = f"layer {layer.rel}"
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
        pfd = _open_dir(rootfd, parts[:-1], where, m.name, create=True)
        try:
            made = _apply_member(pfd, base, m, tf, rootfd, where)
        finally:
            os.close(pfd)
        if not made and skipped is not None:
            skipped.append("/".join(parts))
        added.add(tuple(parts))
        count += 1
    return count


def _apply_member(
    pfd: int, base: str, m: tarfile.TarInfo, tf: tarfile.TarFile, rootfd: int, where: str
) -> bool:
    """Make member ``m`` as ``base`` in ``pfd``; False: a device node, not made (what was
    there removed all the same)."""
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
            src = tf.extractfile(m)
            if src is not None:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    os.write(fd, chunk)
            os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & 0o7777)
            _xattrs(fd, m)
            os.utime(fd, (m.mtime, m.mtime))
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
    where = f"image {image}"
    try:
        todo, cfg = layers(src)
        defaults = image_config(cfg, where)  # checked before any layer is applied
        rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        skipped: list[str] = []
        try:
            n = 0
            for layer in todo:
                where = f"layer {layer.rel}"
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
    except (tarfile.TarError, EOFError, zlib.error, ValueError, OSError) as e:
        raise ImageError(f"{where}: corrupt or unreadable ({type(e).__name__}: {e})") from None
    finally:
        src.close()
