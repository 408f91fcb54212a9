"""What in a guest's config gives the guest power over its host, and the receiving host's
policy on it: `berth receive` refuses a migrated guest whose config asks for any of these unless
its operator allowed that one with a flag.  Pure: the config (validated by
:func:`berth.guests.config.validate`) in, the first refusal out.

**What this guards against, and what not.**  The policy keeps a sender's *config* from asking
for more than the receiver's operator allows (a guest made privileged, or on the host's network,
by someone allowed to migrate guests but not to decide what runs as root here).  It does not
make the token holder untrusted: the token is root-equivalent on the receiver.  The sender also
hands over CRIU images, which CRIU (running as this host's root) acts on as they come: it makes
again the namespaces, id maps, credentials, seccomp filters, mounts and files they describe, and
CRIU does not treat images as untrusted input.  berth checks what it can of them
(:func:`berth.runtime.checkpoint.check_meta`, the pages against their pagemaps) and, after the
restore and before the restored processes run, each of them against the spec built here
(:mod:`berth.runtime.ckverify`: namespaces, id maps, bounding set, seccomp, no_new_privs):
defence in depth, not a proof that a hostile image can do nothing.  Give the token only to
hosts you would give root on this one.

=====================  ===========================================================  ========================
config key             what it gives the guest                                      the flag that allows it
=====================  ===========================================================  ========================
``privileged``         every capability, no seccomp, no masked or read-only paths   ``--allow-privileged``
``userns``             ``host`` (or absent): the guest's root is the host's root    ``--allow-host-userns``
``net``                ``host``: the host's network stack; ``ip:``: the host's      ``--allow-host-net``
                       stack, and addresses added to the host's interfaces
``cap_add``            a capability beyond berth's default set (or ``ALL``)         ``--allow-cap-add``
``security_opt``       ``seccomp=unconfined``, ``seccomp=PROFILE`` (a file of the   ``--allow-security-opt``
                       receiver's read as the guest's filter),
                       ``no-new-privileges=false``
``publish``            host ports forwarded to the guest (``22:22`` takes the       ``--allow-publish``
                       host's ssh port over)
``bridge``, ``subnet`` a bridge that is neither this host's default bridge nor one   ``--allow-bridge``
                       berth made here (a LAN bridge of the host's: the guest on
                       that LAN, a gateway address added there), or a subnet other
                       than the one berth uses on it (a route on this host)
=====================  ===========================================================  ========================

:func:`check_spec` is the backstop on the OCI spec then built here from the config (what the
guest would get, whatever key led to it): its own pid, mount, ipc and uts namespaces always; a
user and a network namespace, masked paths and no allow-all device rule, only the default
capabilities, a seccomp filter and no_new_privileges unless the matching flag was given.
:func:`check_bridge` needs what the receiver has (its default bridge and subnet, the bridges
berth made there): the caller reads those.

Not counted as power over the host: no host path is bound in (the template is a name in the
store, ``disk`` is refused for migration, lxcfs's views are read-only files berth binds), device
throttles only limit, an explicit id range must be free in the receiver's pool and clear of the
host's own ids (berth.runtime.userns).  Not gated here: ``resources`` rlimits such as
``ulimit = "rtprio=…"``.
"""

from __future__ import annotations

from berth.errors import PolicyError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# config key -> the `berth receive` flag allowing what it asks for
FLAGS: dict[str, str] = {
    "privileged": "--allow-privileged",
    "userns": "--allow-host-userns",
    "net": "--allow-host-net",
    "cap_add": "--allow-cap-add",
    "security_opt": "--allow-security-opt",
    "publish": "--allow-publish",
    "bridge": "--allow-bridge",
}
# config key -> what its flag allows (`berth receive --help`)
HELP: dict[str, str] = {
    "privileged": "privileged = true: every capability, no seccomp",
    "userns": "userns = \"host\" (or none): the guest's root is this host's root",
    "net": 'net = "host" or "ip:…": the host\'s network stack',
    "cap_add": "cap_add beyond the default capabilities",
    "security_opt": "security_opt seccomp=unconfined|PROFILE or no-new-privileges=false",
    "publish": "publish: this host's ports forwarded to the guest",
    "bridge": "bridge/subnet other than this host's default bridge or one berth made here, "
    "or another subnet on it",
}


def powers(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """What ``cfg`` asks for that gives the guest power over the host: (config key, what), in
    the order of :data:`FLAGS`."""
    out: list[tuple[str, str]] = []
    if cfg.get("privileged") is True:
        out.append(("privileged", "privileged = true (every capability, no seccomp, no masked paths)"))
    userns = cfg.get("userns", "host")
    if userns == "host":
        said = 'userns = "host"' if "userns" in cfg else 'no userns (a guest made before them: "host")'
        out.append(("userns", f"{said}, the host's user namespace (its root is this host's root)"))
    net = str(cfg.get("net", "none"))
    if net == "host":
        out.append(("net", 'net = "host" (the host\'s network stack)'))
    elif net.startswith("ip:"):
        out.append(("net", f"net = {net!r} (the host's network stack, its addresses added to this host)"))
    extra = _extra_caps(cfg.get("cap_add") or [])
    if extra:
        out.append(("cap_add", f"cap_add = {extra!r} (beyond berth's default capabilities)"))
    loose = [o for o in cfg.get("security_opt") or [] if _loosens(o)]
    if loose:
        out.append(("security_opt", f"security_opt = {loose!r} (a weaker confinement than berth's default)"))
    if cfg.get("publish"):
        out.append(("publish", f"publish = {list(cfg['publish'])!r} (ports of this host forwarded to it)"))
    return out


def check(cfg: dict[str, Any], allow: frozenset[str] | set[str] = frozenset()) -> None:
    """Refuse (PolicyError, a UsageError, naming the config key and the flag) the first thing
    ``cfg`` asks for that gives the guest power over the host and whose key is not in ``allow``."""
    for key, what in powers(cfg):
        if key not in allow:
            raise PolicyError(
                key, f"the guest asks for {what}: refused here without berth receive {FLAGS[key]}"
            )


def check_bridge(
    cfg: dict[str, Any],
    default: tuple[str, str],
    made: dict[str, set[str]],
    allow: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Refuse (PolicyError naming ``bridge`` or ``subnet`` and ``--allow-bridge``) a bridged
    guest's bridge unless it is this host's default one (``default``: its name and subnet) or
    one berth made here (``made``: bridge name -> the subnets berth uses on it), and a subnet
    other than those berth uses on that bridge.  A config without ``bridge``/``subnet`` gets
    the default ones."""
    if "bridge" in allow or str(cfg.get("net", "none")) != "bridge":
        return
    name = str(cfg.get("bridge") or default[0])
    ok = {default[1]} if name == default[0] else set()
    ok |= made.get(name, set())
    if name != default[0] and name not in made:
        raise PolicyError(
            "bridge",
            f"the guest asks for bridge {name!r}, not this host's default bridge {default[0]!r} "
            f"nor one berth made here: refused here without berth receive {FLAGS['bridge']}",
        )
    subnet = cfg.get("subnet")
    if subnet is not None and _net(str(subnet)) not in {_net(n) for n in ok}:
        raise PolicyError(
            "subnet",
            f"the guest asks for subnet {subnet!r} on bridge {name!r}, where berth uses "
            f"{', '.join(sorted(ok)) or 'none'}: refused here without berth receive {FLAGS['bridge']}",
        )


def check_spec(spec: dict[str, Any], allow: frozenset[str] | set[str] = frozenset()) -> None:
    """The backstop of :func:`check`, on the OCI spec built here from the (checked) config: what
    the guest would get, whatever config key led to it.  PolicyError naming the config key whose
    flag would allow it (``spec`` for what berth never gives a migrated guest)."""
    linux = spec.get("linux") or {}
    process = spec.get("process") or {}
    own = {n.get("type") for n in linux.get("namespaces") or [] if isinstance(n, dict) and not n.get("path")}
    for kind in ("pid", "mount", "ipc", "uts"):
        if kind not in own:
            raise PolicyError("spec", f"the guest's spec built here shares a {kind} namespace: refused")
    priv = "privileged" in allow

    def refuse(key: str, what: str) -> PolicyError:
        return PolicyError(
            key, f"the guest's spec built here {what}: refused without berth receive {FLAGS[key]}"
        )

    if not priv and ("maskedPaths" not in linux or _all_devices(linux)):
        raise refuse("privileged", "is privileged (every device, no masked paths)")
    if "userns" not in allow and "user" not in own:
        raise refuse("userns", "has the host's user namespace")
    if "net" not in allow and "network" not in own:
        raise refuse("net", "has the host's network namespace")
    from berth.spec.defaults import DEFAULT_CAPS

    caps = set((process.get("capabilities") or {}).get("bounding") or ()) - set(DEFAULT_CAPS)
    if caps and not priv and "cap_add" not in allow:
        raise refuse("cap_add", f"has capabilities beyond the default ones ({', '.join(sorted(caps))})")
    if not priv and "security_opt" not in allow:
        if "seccomp" not in linux:
            raise refuse("security_opt", "has no seccomp filter")
        if not process.get("noNewPrivileges"):
            raise refuse("security_opt", "has no_new_privileges off")


def _net(text: str) -> str:
    """A subnet as one text (``10.87.0.1/16`` and ``10.87.0.0/16`` alike); the text if it is none."""
    import ipaddress

    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return text


def _all_devices(linux: dict[str, Any]) -> bool:
    """Does the device cgroup allow every device (a rule with no type or number, or ``a``)?"""
    for rule in (linux.get("resources") or {}).get("devices") or []:
        if (
            isinstance(rule, dict)
            and rule.get("allow")
            and rule.get("type") in (None, "a")
            and rule.get("major") in (None, -1)
            and rule.get("minor") in (None, -1)
        ):
            return True
    return False


def _extra_caps(names: list[str]) -> list[str]:
    """The capabilities in ``cap_add`` (entries may hold several, comma-separated) not in
    berth's default set; ``ALL`` and unknown names count (unknown ones berth refuses later)."""
    from berth.linux.caps import normalize
    from berth.spec.defaults import DEFAULT_CAPS

    out = []
    for raw in names:
        for name in raw.split(","):
            if name.strip() and normalize(name) not in DEFAULT_CAPS:
                out.append(normalize(name))
    return out


def _loosens(opt: str) -> bool:
    """Does the ``security_opt`` entry weaken berth's default confinement?  (Its seccomp profile
    replaced or dropped, or no_new_privileges off; ``no-new-privileges`` alone is the default.)"""
    key, _, val = opt.partition("=")  # as berth.cli.run reads it
    if key == "no-new-privileges":
        return val not in ("", "true", "1")
    return True  # seccomp=…, or an option berth does not know (refused when the spec is built)
