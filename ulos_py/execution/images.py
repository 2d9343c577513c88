"""Which base image executor images are built on, and building them.

No registry may answer (air-gapped labs, this CI), so the base is, in order: the one the
operator names; a local base built earlier; `debian:bookworm-slim` if the engine has it
or can pull it; otherwise a Debian root file system made with `debootstrap` and loaded
with `docker import`, which needs only the Debian mirror apt already uses.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

from ulos_py.errors import ConfigError, UlosError
from ulos_py.execution.docker_spec import DockerExecutorSpec

LOCAL_BASE = "ulos-py-base:bookworm"
REGISTRY_BASE = "debian:bookworm-slim"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))

Say = Callable[[str], None]


class ImageStore(Protocol):
    @property
    def where(self) -> str: ...

    def exists(self, image: str) -> bool: ...

    def pull(self, image: str) -> str | None: ...

    def build(
        self, folder: Path, tag: str, build_args: Mapping[str, str], progress: Say
    ) -> None: ...

    def import_root_fs(self, tar_file: Path, image: str) -> None: ...


class BaseImageError(UlosError):
    """No base image could be found, pulled or built; the message says what to do."""


BaseBuilder = Callable[["ImageStore", str, str, Say], None]


def choose_base(
    store: ImageStore, requested: str | None, say: Say, make_base: BaseBuilder | None = None
) -> str:
    if requested:
        if store.exists(requested) or store.pull(requested) is None:
            return requested
        raise ConfigError(f"base image {requested!r} is not on the engine and cannot be pulled")
    if store.exists(LOCAL_BASE):
        say(f"base image: {LOCAL_BASE} (built locally earlier)")
        return LOCAL_BASE
    if store.exists(REGISTRY_BASE):
        say(f"base image: {REGISTRY_BASE}")
        return REGISTRY_BASE
    reason = store.pull(REGISTRY_BASE)
    if reason is None:
        say(f"base image: {REGISTRY_BASE} (pulled)")
        return REGISTRY_BASE
    say(f"cannot pull {REGISTRY_BASE} ({reason})")
    say(f"no registry answers: building a local Debian base {LOCAL_BASE} with debootstrap")
    (make_base or build_local_base)(store, LOCAL_BASE, debian_mirror(), say)
    return LOCAL_BASE


def debian_mirror(sources: Iterable[Path] = APT_SOURCES) -> str:
    """The Debian mirror apt already uses here (the only one an offline machine reaches)."""
    files: list[Path] = []
    for source in sources:
        files.extend(sorted(source.glob("*")) if source.is_dir() else [source])
    pattern = re.compile(r"(https?://\S+?/debian)/?(?:\s|$)")
    for file in files:
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if not line.lstrip().startswith("#") and (match := pattern.search(line)):
                return match[1]
    return DEFAULT_MIRROR


def build_local_base(store: ImageStore, image: str, mirror: str, say: Say) -> None:
    if shutil.which("debootstrap") is None:
        raise BaseImageError(
            "no base image and no registry: install debootstrap (apt-get install debootstrap) "
            "or name a local image with --base"
        )
    with tempfile.TemporaryDirectory(prefix="ulos-base-", dir="/var/tmp") as scratch:
        root_fs = Path(scratch) / "rootfs"
        say(f"debootstrap --variant=minbase {SUITE} from {mirror} (about a minute)")
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(root_fs), mirror],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:]) or done.stdout[-300:]
            raise BaseImageError(f"debootstrap failed (it needs root and the mirror): {tail}")
        say(f"importing the root file system as {image}")
        tar_file = Path(scratch) / "rootfs.tar"
        with tarfile.open(tar_file, "w") as tar:
            tar.add(root_fs, arcname=".")
        store.import_root_fs(tar_file, image)


def build_images(
    store: ImageStore,
    specs: Iterable[DockerExecutorSpec],
    base: str,
    say: Say,
    extra_args: Mapping[str, str] | None = None,
) -> list[str]:
    """Build every executor's image from its folder; the engine's cache makes repeats quick.

    An executor whose settings name a `base` executor is built on that one's image, so
    `specs` must hold the base first (RegistryPlan.with_bases orders them). `extra_args`
    (the host's pip settings, say) go to every Dockerfile; one that does not declare an
    argument ignores it.
    """
    built: dict[str, str] = {}
    for spec in specs:
        tag = spec.settings.image
        on = base
        if spec.settings.base is not None:
            if spec.settings.base not in built:
                raise ConfigError(
                    f"executor {spec.name!r} builds on {spec.settings.base!r}, "
                    "which must be built before it"
                )
            on = built[spec.settings.base]
        say(f"building {tag} for executor {spec.name!r} from {spec.folder} on {on}")
        args = {**(extra_args or {}), "BASE_IMAGE": on}
        store.build(spec.folder, tag, args, lambda line: say(f"  {line}"))
        built[spec.name] = tag
    return list(built.values())
