"""An imported OCI image's config as a guest's defaults: what import keeps (image_config) and
how a guest's own settings override it (with_image), as docker applies an image to `docker run`."""

from __future__ import annotations

import pytest

from berth.guests.config import is_system, with_image
from berth.rootfs.oci import ImageError, image_config

IMAGE = {
    "Entrypoint": ["/entry.sh"],
    "Cmd": ["serve", "--port", "80"],
    "Env": ["PATH=/usr/bin:/bin", "MODE=prod"],
    "WorkingDir": "/srv",
    "User": "app",
}


# -- image_config: the parts kept at import, checked ---------------------------------------------
def test_image_config_keeps_the_guest_fields() -> None:
    cfg = {"architecture": "amd64", "config": {**IMAGE, "ExposedPorts": {"80/tcp": {}}, "Labels": {"a": "b"}}}
    assert image_config(cfg) == IMAGE


def test_image_config_drops_empty_and_null_fields() -> None:
    cfg = {"config": {"Entrypoint": None, "Cmd": [], "Env": None, "WorkingDir": "", "User": ""}}
    assert image_config(cfg) == {}
    assert image_config({}) == {}


def test_image_config_from_docker_container_config() -> None:
    assert image_config({"container_config": {"Cmd": ["sh"]}}) == {"Cmd": ["sh"]}


def test_image_config_shell_form_and_relative_workdir() -> None:
    cfg = {"config": {"Cmd": "echo hi", "WorkingDir": "srv/../app"}}
    assert image_config(cfg) == {"Cmd": ["/bin/sh", "-c", "echo hi"], "WorkingDir": "/app"}
    assert image_config({"config": {"WorkingDir": "//a//b/"}}) == {"WorkingDir": "/a/b"}


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"Cmd": [1]}, "config.Cmd must be a list of strings"),
        ({"Entrypoint": {"a": 1}}, "config.Entrypoint must be a list of strings"),
        ({"Env": "A=1"}, "config.Env must be a list of strings"),
        ({"Env": ["A"]}, "config.Env: 'A' is not NAME=VALUE"),
        ({"Env": ["=1"]}, "config.Env: '=1' is not NAME=VALUE"),
        ({"User": 0}, "config.User must be a string"),
        ({"WorkingDir": ["/"]}, "config.WorkingDir must be a string"),
        ({"Cmd": ["a\0b"]}, "config.Cmd must be a list of strings"),
    ],
)
def test_image_config_refuses_wrong_types(config: dict, needle: str) -> None:
    with pytest.raises(ImageError, match=needle.replace(".", r"\.")):
        image_config({"config": config}, "image x")


def test_image_config_refuses_a_config_that_is_not_an_object() -> None:
    with pytest.raises(ImageError, match="not an object"):
        image_config({"config": ["Cmd"]})


# -- with_image: the guest's settings over the image's ---------------------------------------------
def test_no_image_changes_nothing() -> None:
    cfg = {"template": "busybox"}
    assert with_image(cfg, {}) is cfg
    assert is_system(with_image(cfg, {}))


def test_image_defaults_fill_an_empty_config() -> None:
    out = with_image({"template": "t"}, IMAGE)
    assert out == {
        "template": "t",
        "cmd": ["/entry.sh", "serve", "--port", "80"],
        "env": ["PATH=/usr/bin:/bin", "MODE=prod"],
        "workdir": "/srv",
        "user": "app",
    }
    assert not is_system(out)


def test_cmd_replaces_cmd_and_keeps_the_entrypoint() -> None:
    out = with_image({"template": "t", "cmd": ["debug"]}, IMAGE)
    assert out["cmd"] == ["/entry.sh", "debug"]


def test_entrypoint_replaces_the_images() -> None:
    assert with_image({"template": "t", "entrypoint": ["/bin/sh", "-c"]}, IMAGE)["cmd"] == [
        "/bin/sh",
        "-c",
        "serve",
        "--port",
        "80",
    ]
    out = with_image({"template": "t", "entrypoint": [], "cmd": ["sleep", "1"]}, IMAGE)
    assert out["cmd"] == ["sleep", "1"] and "entrypoint" not in out


def test_entrypoint_without_an_image() -> None:
    assert with_image({"template": "busybox", "entrypoint": ["/bin/sh"]}, {})["cmd"] == ["/bin/sh"]
    out = with_image({"template": "busybox", "entrypoint": []}, {})
    assert "cmd" not in out and is_system(out)


def test_env_of_the_guest_comes_after_the_images() -> None:
    out = with_image({"template": "t", "env": ["MODE=dev", "EXTRA=1"]}, IMAGE)
    assert out["env"] == ["PATH=/usr/bin:/bin", "MODE=prod", "MODE=dev", "EXTRA=1"]  # later wins


def test_user_and_workdir_of_the_guest_win() -> None:
    out = with_image({"template": "t", "user": "0:0", "workdir": "/tmp"}, IMAGE)
    assert (out["user"], out["workdir"]) == ("0:0", "/tmp")


@pytest.mark.parametrize("image", [{}, {"Env": ["A=1"], "WorkingDir": "/w", "User": "1000"}])
def test_image_without_a_command_gives_a_system_guest(image: dict) -> None:
    out = with_image({"template": "t"}, image)
    assert "cmd" not in out and is_system(out)


def test_entrypoint_only_image_runs_it() -> None:
    assert with_image({"template": "t"}, {"Entrypoint": ["/init.sh"]})["cmd"] == ["/init.sh"]


def test_with_image_does_not_change_its_arguments() -> None:
    cfg = {"template": "t", "env": ["A=1"], "entrypoint": ["/x"]}
    image = {**IMAGE, "Env": list(IMAGE["Env"])}
    with_image(cfg, image)
    assert cfg == {"template": "t", "env": ["A=1"], "entrypoint": ["/x"]}
    assert image["Env"] == IMAGE["Env"]
