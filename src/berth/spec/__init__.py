"""The OCI runtime spec (config.json as a plain dict) as berth's model of a container.

Defaults as Docker sets them (:mod:`berth.spec.defaults`), Docker's default seccomp profile
resolved for a capability set and architecture (:mod:`berth.spec.seccomp`), and validation with
one-line errors naming the JSON path (:mod:`berth.spec.validate`).  Pure: no kernel calls, cheap
to import (it is on the container start path); only :mod:`berth.spec.host` looks at the host
(read-only: does root.path, a namespace file, a CPU the spec names exist here).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.spec.defaults import (
        ALL_CAPS,
        DEFAULT_CAPS,
        DEFAULT_DEVICES,
        MASKED_PATHS,
        READONLY_PATHS,
        default_device_rules,
        default_mounts,
        default_spec,
        runc_spec,
    )
    from berth.spec.seccomp import default_profile, load_profile
    from berth.spec.validate import load_config
    from berth.spec.validate import validate as validate_config

# Each name loads its module on first use (PEP 562): validation imports json, which the start
# path of `berth run` does not need.
_NAMES = {
    "ALL_CAPS": ("defaults", "ALL_CAPS"),
    "DEFAULT_CAPS": ("defaults", "DEFAULT_CAPS"),
    "DEFAULT_DEVICES": ("defaults", "DEFAULT_DEVICES"),
    "MASKED_PATHS": ("defaults", "MASKED_PATHS"),
    "READONLY_PATHS": ("defaults", "READONLY_PATHS"),
    "default_device_rules": ("defaults", "default_device_rules"),
    "default_mounts": ("defaults", "default_mounts"),
    "default_spec": ("defaults", "default_spec"),
    "runc_spec": ("defaults", "runc_spec"),
    "default_profile": ("seccomp", "default_profile"),
    "load_profile": ("seccomp", "load_profile"),
    "load_config": ("validate", "load_config"),
    "validate_config": ("validate", "validate"),  # not ``validate``: that name is the submodule
}

__all__ = [  # noqa: RUF022 - the same order as _NAMES
    "ALL_CAPS",
    "DEFAULT_CAPS",
    "DEFAULT_DEVICES",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "default_device_rules",
    "default_mounts",
    "default_spec",
    "runc_spec",
    "default_profile",
    "load_profile",
    "load_config",
    "validate_config",
]


def __getattr__(name: str) -> object:
    try:
        module, attr = _NAMES[name]
    except KeyError:
        raise AttributeError(f"module 'berth.spec' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(f"berth.spec.{module}"), attr)
    globals()[name] = value
    return value
