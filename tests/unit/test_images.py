"""Which base image `ulos-py executors build` uses: the operator's, a local one, or a new one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from ulos_py.errors import ConfigError
from ulos_py.execution import images
from ulos_py.execution.images import (
    LOCAL_BASE,
    REGISTRY_BASE,
    build_images,
    choose_base,
    debian_mirror,
)
from ulos_py.execution.pip_access import build_args, pip_settings
from ulos_py.execution.registry import read_registry


class FakeStore:
    """An engine's image list; `pullable` is what a registry would give."""

    where = "unix:///fake.sock"

    def __init__(self, present: set[str] = frozenset(), pullable: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.present = set(present)
        self.pullable = set(pullable)
        self.pulls: list[str] = []
        self.imported: list[str] = []
        self.builds: list[tuple[str, dict[str, str]]] = []

    def exists(self, image: str) -> bool:
        return image in self.present

    def pull(self, image: str) -> str | None:
        self.pulls.append(image)
        if image in self.pullable:
            self.present.add(image)
            return None
        return "no such host"

    def build(
        self, folder: Path, tag: str, build_args: Mapping[str, str], progress: object
    ) -> None:
        self.builds.append((tag, dict(build_args)))
        self.present.add(tag)

    def import_root_fs(self, tar_file: Path, image: str) -> None:
        self.imported.append(image)
        self.present.add(image)


def test_the_operators_base_wins() -> None:
    store = FakeStore(present={"lab/base:1", LOCAL_BASE})

    assert choose_base(store, "lab/base:1", print) == "lab/base:1"


def test_an_operators_base_that_cannot_be_had_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="lab/base:1"):
        choose_base(FakeStore(), "lab/base:1", print)


def test_a_local_base_is_reused_without_asking_a_registry() -> None:
    store = FakeStore(present={LOCAL_BASE})

    assert choose_base(store, None, print) == LOCAL_BASE
    assert store.pulls == []


def test_the_registry_base_is_pulled_when_a_registry_answers() -> None:
    store = FakeStore(pullable={REGISTRY_BASE})

    assert choose_base(store, None, print) == REGISTRY_BASE


def test_no_registry_builds_a_local_base_and_says_so() -> None:
    built: list[tuple[str, str]] = []

    def fake_build(store: images.ImageStore, image: str, mirror: str, say: object) -> None:
        built.append((image, mirror))

    said: list[str] = []

    assert choose_base(FakeStore(), None, said.append, fake_build) == LOCAL_BASE
    assert built and built[0][0] == LOCAL_BASE
    assert any("no registry answers" in line for line in said)


def test_debian_mirror_comes_from_apt_sources(tmp_path: Path) -> None:
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    (sources / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.example/debian\n"
        "URIs: http://mirror.example.org/debian\nSuites: bookworm\n"
    )
    (tmp_path / "sources.list").write_text("")

    assert debian_mirror([tmp_path / "sources.list", sources]) == "http://mirror.example.org/debian"


def test_debian_mirror_defaults_when_apt_names_none(tmp_path: Path) -> None:
    assert debian_mirror([tmp_path / "absent"]) == "http://deb.debian.org/debian"


# --- images built on other executors' images ----------------------------------------


def registry_of(tmp_path: Path, executors: dict[str, str]) -> Path:
    """A registry whose docker executors have these executor.toml texts."""
    lines = []
    for name, settings in executors.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
        (folder / "executor.toml").write_text(settings)
        lines += [f"[executor.{name}]", 'kind = "docker"', ""]
    lines += ["[[route]]", 'stage = "x"', f"executor = {next(iter(executors))!r}"]
    registry = tmp_path / "registry.toml"
    registry.write_text("\n".join(lines) + "\n")
    return registry


def test_an_image_is_built_after_the_one_it_builds_on_and_from_it(tmp_path: Path) -> None:
    plan = read_registry(
        registry_of(
            tmp_path,
            {
                "browser": 'image = "lab/browser"\nbase = "parsers"\n',
                "parsers": 'image = "lab/parsers"\n',
                "plain": 'image = "lab/plain"\n',
            },
        )
    )
    store = FakeStore()

    specs = plan.with_bases([s for s in plan.docker_specs if s.name != "parsers"])
    built = build_images(store, specs, "debian:x", print, {"PIP_INDEX_URL": "https://i/simple"})

    assert built == ["lab/parsers", "lab/browser", "lab/plain"]
    assert [(tag, args["BASE_IMAGE"]) for tag, args in store.builds] == [
        ("lab/parsers", "debian:x"),
        ("lab/browser", "lab/parsers"),
        ("lab/plain", "debian:x"),
    ]
    assert all(args["PIP_INDEX_URL"] == "https://i/simple" for _, args in store.builds)


@pytest.mark.parametrize(
    ("executors", "says"),
    [
        ({"a": 'image = "lab/a"\nbase = "nothing"\n'}, "base 'nothing' is not a docker executor"),
        (
            {"a": 'image = "lab/a"\nbase = "b"\n', "b": 'image = "lab/b"\nbase = "a"\n'},
            "in a circle: a -> b -> a",
        ),
    ],
    ids=["unknown-base", "circle"],
)
def test_a_base_that_cannot_be_built_first_is_a_config_error(
    tmp_path: Path, executors: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        read_registry(registry_of(tmp_path, executors))


# --- how a build's pip reaches the index --------------------------------------------

CA = "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----"


def test_pip_settings_later_sources_win() -> None:
    listing = (
        "global.index-url='https://mirror.example/simple'\n"
        "global.cert='/etc/ssl/certs/bundle.crt'\n"
        ":env:.index-url='https://proxy.example/pypi/simple'\n"
        "not a setting\n"
    )

    assert pip_settings(listing) == {
        "index-url": "https://proxy.example/pypi/simple",
        "cert": "/etc/ssl/certs/bundle.crt",
    }


def test_build_args_carry_the_index_and_only_the_local_certificates() -> None:
    settings = {
        "index-url": "https://proxy.example/pypi/simple",
        "extra-index-url": "file:///opt/pypi/simple https://extra.example/simple",
        "trusted-host": "proxy.example",
        "cert": "/bundle.crt",
    }
    public = CA.format("PUBLIC")
    local = CA.format("LOCAL")

    args = build_args(settings, lambda path: f"{public}\n{local}\n", public)

    assert args == {
        "PIP_INDEX_URL": "https://proxy.example/pypi/simple",
        "PIP_EXTRA_INDEX_URL": "https://extra.example/simple",
        "PIP_TRUSTED_HOST": "proxy.example",
        "PIP_EXTRA_CA_CERTS": local,
    }


def test_no_pip_settings_no_build_args() -> None:
    assert build_args({}, lambda path: "", "") == {}
