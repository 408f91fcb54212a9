"""The OCI runtime spec (config.json as a plain dict) as berth's model of a container.

Defaults as Docker sets them (:mod:`berth.spec.defaults`), Docker's default seccomp profile
resolved for a capability set and architecture (:mod:`berth.spec.seccomp`), and validation with
one-line errors naming the JSON path (:mod:`berth.spec.validate`).  Pure: no kernel calls, cheap
to import (it is on the container start path).
"""

from __future__ import annotations

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
from berth.spec.validate import validate as validate_config  # not ``validate``: that name is the submodule

__all__ = [
    "ALL_CAPS",
    "DEFAULT_CAPS",
    "DEFAULT_DEVICES",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "default_device_rules",
    "default_mounts",
    "default_profile",
    "default_spec",
    "load_config",
    "load_profile",
    "runc_spec",
    "validate_config",
]
