"""Which base image `ulos-py executors build` uses: the operator's, a local one, or a new one."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulos_py.errors import ConfigError
from ulos_py.execution import images
from ulos_py.execution.images import LOCAL_BASE, REGISTRY_BASE, choose_base, debian_mirror


class FakeStore:
    """An engine's image list; `pullable` is what a registry would give."""

    where = "unix:///fake.sock"

    def __init__(self, present: set[str] = frozenset(), pullable: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.present = set(present)
        self.pullable = set(pullable)
        self.pulls: list[str] = []
        self.imported: list[str] = []

    def exists(self, image: str) -> bool:
        return image in self.present

    def pull(self, image: str) -> str | None:
        self.pulls.append(image)
        if image in self.pullable:
            self.present.add(image)
            return None
        return "no such host"

    def build(self, folder: Path, tag: str, base_image: str, progress: object) -> None:
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
