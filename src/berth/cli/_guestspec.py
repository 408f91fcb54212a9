"""A guest's config -> its OCI spec, with the option logic of `berth run` (one path for both).

The spec is built here, in the CLI layer that owns `berth run`'s options, and saved with the
guest as ``spec.json``; guestd's workers (lower layer) start and restart from that file.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.guests.store import Store


def check_resources(cfg: dict[str, Any], path: str) -> None:
    """Every [resources] key must be a resource flag of `berth run`."""
    from berth.cli import resources as rflags
    from berth.guests.config import ConfigError

    for key in cfg.get("resources", {}):
        if f"--{key}" not in rflags.FLAGS:
            raise ConfigError(path, f"resources.{key}", "unknown resource")


def load(store: Store, name: str) -> dict[str, Any]:
    return load_raw(store, name)[1]


def load_raw(store: Store, name: str) -> tuple[bytes, dict[str, Any]]:
    """The config's bytes and the config parsed from them (checked)."""
    from berth.guests import config

    store.require(name)
    raw = config.read(store.config(name))
    cfg = config.from_bytes(raw, store.config(name))
    check_resources(cfg, store.config(name))
    return raw, cfg


def built_from(store: Store, name: str, inputs: str, *, lxcfs: bool) -> bool:
    """Was ``name``'s spec.json built from ``inputs`` (berth.cli.start.inputs), and complete?
    (A guest wanting ``lxcfs`` whose spec was built while lxcfs could not run is built again.)"""
    from berth.spec.jsontext import loads

    try:
        with open(os.path.join(store.dir(name), "spec.json"), encoding="utf-8") as f:
            saved = loads(f.read())
    except (OSError, ValueError):
        return False
    if not isinstance(saved, dict) or saved.get("inputs") != inputs:
        return False
    return bool(saved.get("lxcfs")) or not lxcfs


def build(store: Store, name: str, *, inputs: str | None = None) -> None:
    """Build ``name``'s spec from its config and save it as ``spec.json`` in the guest's dir
    (with ``inputs``, the digest of what it was built from, for :func:`built_from`)."""
    from berth.guests.specinputs import config_summary
    from berth.guests.store import atomic_write

    raw, cfg = load_raw(store, name)
    saved = make(store, name, cfg)
    if inputs:
        saved["inputs"] = inputs
        # what the digest reads of the config, for the next start's check without a parse
        saved["config"] = config_summary(raw, cfg)
    # Not fsynced: derived from config.toml and rebuilt by every `berth start` (a spec.json lost
    # to a power cut reads as "no spec built", which the next start repairs).
    atomic_write(os.path.join(store.dir(name), "spec.json"), json.dumps(saved), durable=False)


def make(store: Store, name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """``name``'s spec (spec.json's object) built from its config ``cfg`` (validated); its id
    range, if it has a user namespace, is the one allocated to it (berth.runtime.userns)."""
    from berth.cli import run as runcli
    from berth.guests import config
    from berth.guests.lifecycle import effective_config
    from berth.runtime.process import wants_init

    o = config.run_options(effective_config(store, cfg))  # with an imported image's defaults
    spec, _rootfs, overlay = runcli.build(o, name, store.root)
    _userns(store, name, cfg, spec, overlay)
    # lxcfs started (if need be) now; guestd's workers check it again at every (re)start.
    point = runcli.apply_lxcfs(spec) if o["lxcfs"] else None
    use_init = o["init"] if o["init"] is not None else not wants_init(o["args"])
    # The network as resolved now (bridge, subnet, nft table, name prefix from the config and the
    # environment): guestd's workers plug the guest in with exactly this at every (re)start.
    net = config.net_to_dict(config.net_options(cfg))
    saved = {"spec": spec, "use_init": use_init, "lower": (overlay or {}).get("lower", []), "net": net}
    if point:
        saved["lxcfs"] = point
    return saved


def _userns(store: Store, name: str, cfg: dict[str, Any], spec: dict[str, Any], overlay: Any) -> None:
    """Map the spec to the id range the guest got at create (its writable layer is owned by it)."""
    from berth.cli import run as runcli
    from berth.guests import config, lifecycle

    mode = config.userns_mode(cfg, store.config(name))
    if mode == "host":
        return
    rng = lifecycle.id_range(store, name)
    if rng is None or (isinstance(mode, tuple) and mode != rng):
        held = f"it holds {rng[0]}:{rng[1]}" if rng else "it holds none"
        raise config.ConfigError(
            store.config(name), "userns", f"{cfg['userns']!r} is not the range allocated at create ({held})"
        )
    runcli.apply_userns(spec, rng, overlay)
