"""A guest's config: one TOML file, validated on load (errors name the file, key and reason).

Top-level keys (all optional but ``template``)::

    template = "busybox"           # a template in the store
    cmd = ["/bin/sh", "-c", "..."] # an application guest; absent: a system guest booting /sbin/init
                                   # (or, for an imported OCI image, the image's Entrypoint + Cmd)
    entrypoint = []                # replaces an OCI image's Entrypoint ([]: none); cmd replaces its Cmd
    init = true                    # tini in front of cmd (default: yes unless cmd is an init)
    restart = "no"                 # no | on-failure | always
    hostname = "web1"  env = ["K=V"]  workdir = "/"  user = "1000:1000"   # over an image's Env, WorkingDir, User
    net = "bridge"                 # bridge (default of berth create) | none | host | ip:ADDR[,ADDR]
    ip = "10.87.0.5"  publish = ["8080:80/tcp"]  net_isolate = false   # bridge only
    net_rate = "100mbit"  net_ceil = "200mbit"  net_share = 100           # bridge only (HTB)
    bridge = "berth0"  subnet = "10.87.0.0/16"  # pinned at create (the address lives in it)
    cap_add = []  cap_drop = []  security_opt = []  read_only = false  privileged = false
    disk = "256M"                  # the writable layer is an ext4 image of this size
    stop_signal = "SIGRTMIN+3"     # what `berth stop` sends the init (default SIGTERM; systemd: SIGRTMIN+3)
    userns = "auto"                # auto (own 65536 host ids, allocated at create) | host | START:SIZE;
                                   # absent (a guest made before user namespaces): host
    lxcfs = true                   # lxcfs's /proc views (the guest's own limits); absent: false
    created = 1700000000.0

    resources."memory" = "512M"    # the resource flags of `berth run`, without the leading --
                                   # (or a [resources] table at the end); berth create writes
                                   # resources."pids-limit" = "4096" unless given one
"""

from __future__ import annotations

from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RESTART = ("no", "on-failure", "always")
SYSTEM_INIT = ["/sbin/init"]

_NET_STR = ("net", "ip", "net_rate", "net_ceil", "bridge", "subnet")
_STR = ("template", "restart", "hostname", "workdir", "user", "disk", "userns", *_NET_STR)
_LIST = ("cmd", "entrypoint", "env", "cap_add", "cap_drop", "security_opt", "publish")
_BOOL = ("init", "read_only", "privileged", "net_isolate", "lxcfs")
_NUM = ("created",)
_INT = ("net_share",)
KEYS = frozenset((*_STR, *_LIST, *_BOOL, *_NUM, *_INT, "resources"))
# berth.net.options.parse's field names -> config keys
_NET_FIELDS = {"net": "net", "ip": "ip", "publish": "publish", "net-isolate": "net_isolate",
               "net-rate": "net_rate", "net-ceil": "net_ceil", "net-share": "net_share",
               "bridge": "bridge", "subnet": "subnet"}  # fmt: skip


class ConfigError(UsageError):
    """A guest's config.toml is malformed or has a key or value berth cannot use."""

    def __init__(self, path: str, key: str | None, reason: str) -> None:
        super().__init__(path if key is None else f"{path}: {key}", reason)


def parse_size(text: str, field: str = "disk") -> int:
    """Bytes from ``512M``, ``1G``, ``1048576``."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units and t[-1] != "" else (t, "")
    try:
        value = int(float(num) * units[unit])
    except (ValueError, KeyError):
        raise UsageError(field, f"{text!r} is not a size (like 256M or 1G)") from None
    except OverflowError:
        raise UsageError(field, f"{text!r} is too large") from None
    if value <= 0:
        raise UsageError(field, f"{text!r} must be positive")
    return value


def validate(data: dict[str, Any], path: str) -> dict[str, Any]:
    """Check every key of a loaded config; the config with defaults filled in."""
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(path, key, "unknown key")
        if key in _STR and not isinstance(value, str):
            raise ConfigError(path, key, f"must be a string, not {type(value).__name__}")
        if key in _LIST and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(path, key, "must be a list of strings")
        if any("\0" in v for v in ([value] if isinstance(value, str) else value if key in _LIST else [])):
            raise ConfigError(path, key, "must not hold a NUL byte")  # (no argv, env or path can)
        if key in _BOOL and not isinstance(value, bool):
            raise ConfigError(path, key, f"must be true or false, not {value!r}")
        if key in _NUM and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(path, key, "must be a number")
        if key in _INT and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(path, key, "must be a whole number")
    if "template" not in data:
        raise ConfigError(path, "template", "missing")
    if "cmd" in data and not data["cmd"]:
        raise ConfigError(path, "cmd", "must not be empty")
    if data.get("restart", "no") not in RESTART:
        raise ConfigError(path, "restart", f"{data['restart']!r} is not one of {', '.join(RESTART)}")
    _validate_net(data, path)
    if "disk" in data:
        try:
            from berth.guests.disk import check_size

            check_size(parse_size(data["disk"]), data["disk"])
        except UsageError as e:
            raise ConfigError(path, "disk", e.reason) from None
    if "userns" in data:
        userns_mode(data, path)
    if "stop_signal" in data:
        try:
            parse_signal(data["stop_signal"])
        except UsageError as e:
            raise ConfigError(path, "stop_signal", e.reason) from None
    if data.get("workdir") and not data["workdir"].startswith("/"):
        raise ConfigError(path, "workdir", "must be an absolute path")
    if data.get("hostname"):
        from berth.spec.validate import guest_hostname

        try:
            guest_hostname(data["hostname"], "hostname")
        except UsageError as e:
            raise ConfigError(path, "hostname", e.reason) from None
    res = data.get("resources", {})
    if not isinstance(res, dict):
        raise ConfigError(path, "resources", "must be a table")
    # Which keys are resource flags is the CLI's to say (berth.cli._guestspec.check_resources).
    for key, value in res.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(path, f"resources.{key}", "must be a string or a number")
    return data


def userns_mode(cfg: dict[str, Any], path: str) -> Any:
    """The guest's ``userns``: ``"auto"``, ``"host"`` or a (start, size) range; a config
    without the key (made before guests had user namespaces) is ``"host"``."""
    from berth.runtime import userns

    try:
        return userns.parse_mode(cfg.get("userns", "host"))
    except UsageError as e:
        raise ConfigError(path, "userns", e.reason) from None


def _validate_net(data: dict[str, Any], path: str) -> None:
    """The network keys, checked by the parser of `berth run --net …` (the address against the
    subnet only when the options are resolved: :func:`net_options`)."""
    if not any(k in data for k in _NET_FIELDS.values()):
        return
    import ipaddress

    if "ip" in data:
        try:
            [ipaddress.ip_address(a.strip()) for a in str(data["ip"]).split(",")]  # ADDR, ADDR6 or both
        except ValueError:
            raise ConfigError(path, "ip", f"{data['ip']!r} is not an IPv4 or IPv6 address") from None
    try:
        net_options({k: v for k, v in data.items() if k != "ip"}, env={})
    except UsageError as e:
        raise ConfigError(path, _NET_FIELDS.get(e.field, e.field), e.reason) from None


def net_options(cfg: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    """The guest's :class:`berth.net.NetOptions` (None for ``none``), defaults from ``env``
    (BERTH_BRIDGE, BERTH_SUBNET, BERTH_NFT_TABLE, BERTH_NET_PREFIX; os.environ if None).
    A config without ``net`` (made before guests had networking) is ``none``."""
    mode = cfg.get("net", "none")
    if mode == "none" and not any(
        k in cfg for k in _NET_FIELDS.values() if k not in ("net", "bridge", "subnet")
    ):
        return None
    from dataclasses import replace

    from berth.net import options

    share = cfg.get("net_share")
    opts = options.parse(
        mode,
        ip=cfg.get("ip"),
        publish=list(cfg.get("publish", [])),
        isolate=bool(cfg.get("net_isolate", False)),
        rate=cfg.get("net_rate"),
        ceil=cfg.get("net_ceil"),
        share=str(share) if share is not None else None,
        bridge=cfg.get("bridge"),
        subnet=cfg.get("subnet"),
        env=env,
    )
    return replace(opts, persist=True) if opts.mode != "none" else None


def net_to_dict(opts: Any) -> dict[str, Any] | None:
    """NetOptions as JSON-able data (spec.json, the run record); None stays None."""
    if opts is None:
        return None
    from dataclasses import asdict

    return asdict(opts)


def net_from_dict(data: dict[str, Any] | None) -> Any:
    if not data:
        return None
    from berth.net.options import NetOptions, Publish

    return NetOptions(
        **{
            **data,
            "addrs": tuple(data.get("addrs", ())),
            "publish": tuple(Publish(**p) for p in data.get("publish", ())),
            "extra": dict(data.get("extra", {})),
        }
    )


def parse_signal(text: str) -> int:
    """A signal number from ``TERM``, ``SIGTERM``, ``15``, ``SIGRTMIN+3``."""
    import signal

    t = text.strip().upper()
    if t.isdigit():
        return int(t)
    t = t if t.startswith("SIG") else f"SIG{t}"
    for base, num in (("SIGRTMIN", signal.SIGRTMIN), ("SIGRTMAX", signal.SIGRTMAX)):
        if t.startswith(base) and (t == base or t[len(base)] in "+-"):
            try:
                n = int(num) + int(t[len(base) :] or 0)
            except ValueError:
                break
            if signal.SIGRTMIN <= n <= signal.SIGRTMAX:
                return n
            break
    try:
        return int(signal.Signals[t])
    except KeyError:
        raise UsageError("signal", f"unknown signal {text!r}") from None


def stop_signal(cfg: dict[str, Any], rootfs: str | None) -> int:
    """What `berth stop` sends the guest's init: ``stop_signal``, else SIGRTMIN+3 for a system
    guest whose /sbin/init is systemd (SIGTERM makes systemd re-execute itself), else SIGTERM."""
    import os
    import signal

    if cfg.get("stop_signal"):
        return parse_signal(cfg["stop_signal"])
    if is_system(cfg) and rootfs:
        try:
            if "systemd" in os.readlink(os.path.join(rootfs, "sbin", "init")):
                return int(signal.SIGRTMIN) + 3
        except OSError:
            pass
    return int(signal.SIGTERM)


MAX_BYTES = 256 << 10  # a guest's config is a few hundred bytes; a bound on what a parse costs
MAX_DOTS = 64  # dots outside strings on one line: a dotted key's depth (tomllib: memory ~ depth²)


def _where(text: str, pos: int) -> str:
    """``line L, column C`` of character offset ``pos`` of ``text`` (both from 1)."""
    start = text.rfind("\n", 0, pos) + 1
    return f"line {text.count(chr(10), 0, pos) + 1}, column {pos - start + 1}"


def _deep_key_line(text: str) -> int:
    """The first line (from 1) with more than :data:`MAX_DOTS` dots outside strings and comments,
    or 0.  A TOML key is on one line and nests one table per dot: this bounds what tomllib
    allocates for it (a 200 KB key ``a.a.a…`` takes it 24 GB).  Strings are skipped as TOML
    reads them (a one-line string ends at the end of its line at the latest)."""
    i, n, line, dots = 0, len(text), 1, 0
    while i < n:
        c = text[i]
        if c == "\n":
            line, dots = line + 1, 0
        elif c == ".":
            dots += 1
            if dots > MAX_DOTS:
                return line
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "\"'":
            multi = text.startswith(c * 3, i)
            q = c * 3 if multi else c
            i += len(q)
            while i < n and not text.startswith(q, i):
                if text[i] == "\n":
                    if not multi:
                        break
                    line, dots = line + 1, 0
                i += 2 if c == '"' and text[i] == "\\" and text[i + 1 : i + 2] != "\n" else 1
            if i < n and text[i] != "\n":
                i += len(q)
                extra = 0
                while multi and extra < 2 and text.startswith(c, i):  # '''a''''': a string a''
                    i, extra = i + 1, extra + 1
            continue
        i += 1
    return 0


def parse(text: str, path: str) -> dict[str, Any]:
    """The TOML document ``text`` (the file ``path``'s), unchecked; a malformed one is a
    :class:`ConfigError` naming ``path`` and tomllib's line and column."""
    import re
    import tomllib

    if len(text) > MAX_BYTES:
        raise ConfigError(path, None, f"larger than {MAX_BYTES >> 10} KiB: not a guest config")
    deep = _deep_key_line(text)
    if deep:
        raise ConfigError(
            path, None, f"not valid TOML at line {deep}: a key nested more than {MAX_DOTS} deep"
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.fullmatch(r"(.*) \(at (line \d+, column \d+|end of document)\)", str(e), re.S)
        why, at = (m.group(1), m.group(2)) if m else (str(e), "")
        if at == "end of document":
            at = f"{_where(text, len(text))} (the end of the file)"
        where = f" at {at}" if at else ""
        raise ConfigError(path, None, f"not valid TOML{where}: {why[:1].lower()}{why[1:]}") from None
    except RecursionError:
        raise ConfigError(path, None, "not valid TOML: nested too deeply") from None


def load(path: str) -> dict[str, Any]:
    """The guest config at ``path``, checked (:func:`validate`); whatever is wrong with the file
    (missing, unreadable, not UTF-8, not TOML, a bad key) is one :class:`ConfigError` naming it."""
    return from_bytes(read(path), path)


def read(path: str) -> bytes:
    """The bytes of the guest config at ``path`` (up to one past the largest allowed)."""
    try:
        with open(path, "rb") as f:
            return f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, None, "missing") from None
    except OSError as e:
        raise ConfigError(path, None, f"cannot be read: {e.strerror or e}") from None


def from_bytes(raw: bytes, path: str) -> dict[str, Any]:
    """:func:`load` of the bytes ``raw`` read from ``path``."""
    if len(raw) > MAX_BYTES:
        raise ConfigError(path, None, f"larger than {MAX_BYTES >> 10} KiB: not a guest config")
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        good = raw[: e.start].decode()
        raise ConfigError(
            path, None, f"not valid TOML at {_where(good, len(good))}: not UTF-8 (byte 0x{raw[e.start]:02x})"
        ) from None
    if not text.strip():
        raise ConfigError(path, None, "empty (a guest's config needs at least 'template')")
    return validate(parse(text, path), path)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        import json

        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps(data: dict[str, Any]) -> str:
    lines = ["# berth guest config (see berth.guests.config)"]
    lines += [f"{k} = {_value(v)}" for k, v in data.items() if k != "resources"]
    # Dotted keys, not a [resources] table last: a key appended to the file by hand stays top-level.
    lines += [f"resources.{_value(k)} = {_value(v)}" for k, v in (data.get("resources") or {}).items()]
    return "\n".join(lines) + "\n"


def save(path: str, data: dict[str, Any]) -> None:
    from berth.guests.store import atomic_write

    validate(data, path)
    atomic_write(path, dumps(data))


def run_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The option dict of `berth run` (berth.cli.run.parse) for this config."""
    return {
        "rootfs": None,
        "template": cfg["template"],
        "name": None,
        "hostname": cfg.get("hostname") or None,
        "env": list(cfg.get("env", [])),
        "workdir": cfg.get("workdir") or None,
        "user": cfg.get("user") or None,
        "interactive": False,
        "tty": False,
        "init": cfg.get("init"),
        "cap_add": list(cfg.get("cap_add", [])),
        "cap_drop": list(cfg.get("cap_drop", [])),
        "security_opt": list(cfg.get("security_opt", [])),
        "read_only": bool(cfg.get("read_only", False)),
        "net": cfg.get("net", "none"),
        "privileged": bool(cfg.get("privileged", False)),
        "resources": [(f"--{k}", str(v)) for k, v in cfg.get("resources", {}).items()],
        "args": list(cfg.get("cmd") or SYSTEM_INIT),
        "userns": cfg.get("userns", "host"),
        "lxcfs": bool(cfg.get("lxcfs", False)),
        "tmpfs": [],  # `berth run --tmpfs` (no config key yet)
    }


def with_image(cfg: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    """The config ``cfg`` with the defaults of its template's image filled in (``image``: from
    :func:`berth.rootfs.oci.image_config`; empty for a built template), as docker applies an
    image to ``docker run``: the command is Entrypoint + Cmd, where the guest's ``cmd`` replaces
    Cmd and its ``entrypoint`` (``[]``: none) the Entrypoint; the image's Env comes first and
    the guest's ``env`` overrides it by name; ``workdir`` and ``user`` are the guest's if set,
    else the image's.  With no command left (no Entrypoint, Cmd nor ``cmd``) ``cmd`` stays
    unset: a system guest booting /sbin/init.  The result has no ``entrypoint`` key."""
    if not image and "entrypoint" not in cfg:
        return cfg
    out = dict(cfg)
    entry = out.pop("entrypoint", None)
    if entry is None:
        entry = image.get("Entrypoint") or []
    args = list(entry) + list(cfg.get("cmd") or image.get("Cmd") or [])
    if args:
        out["cmd"] = args
    else:
        out.pop("cmd", None)
    if image.get("Env"):
        out["env"] = list(image["Env"]) + list(cfg.get("env") or [])
    for key, ikey in (("workdir", "WorkingDir"), ("user", "User")):
        if not cfg.get(key) and image.get(ikey):
            out[key] = image[ikey]
    return out


def flag_key(flag: str) -> str:
    """The [resources] key of a resource flag (``--memory`` and ``-m`` -> ``memory``)."""
    return {"-m": "memory", "--cpu-shares": "cpu-share"}.get(flag, flag.lstrip("-"))


def is_system(cfg: dict[str, Any]) -> bool:
    """Does the guest boot /sbin/init?  (Of a config with its image's defaults: :func:`with_image`.)"""
    return not cfg.get("cmd")
