"""`ulos-py executors`: see which executor serves which stage, and build the docker ones."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ulos_py.adapters.docker_images import DockerImages
from ulos_py.cli.common import one_line_errors
from ulos_py.errors import UlosError
from ulos_py.execution.docker_spec import DockerExecutorSpec
from ulos_py.execution.images import build_images, choose_base
from ulos_py.execution.pip_access import host_pip_build_args
from ulos_py.execution.registry import RegistryPlan, read_registry

registry_option = click.option(
    "--registry",
    "registry_file",
    type=click.Path(path_type=Path),
    default=lambda: os.environ.get("ULOS_EXECUTORS_FILE", "executors/registry.toml"),
    show_default="$ULOS_EXECUTORS_FILE or executors/registry.toml",
    help="The executor registry file.",
)


@click.group()
def executors() -> None:
    """List the executor registry, or build the images of its docker executors."""


@executors.command("list")
@registry_option
@one_line_errors
def list_(registry_file: Path) -> None:
    """Show each executor: kind, the stages routed to it, and for docker ones the image,
    success rule and sandbox, and whether the engine has the image."""
    plan = read_registry(registry_file)
    images = _engine_or_none()
    for name, spec in plan.executors.items():
        stages = ", ".join(plan.patterns_of(name)) or "(no route)"
        if isinstance(spec, DockerExecutorSpec):
            click.echo(f"{name}  docker  stages: {stages}")
            click.echo(f"    {_docker_line(spec, images)}")
        else:
            delay = f"after {spec.delay_seconds:g} s" if spec.delay_seconds else "at once"
            click.echo(f"{name}  builtin  stages: {stages}")
            click.echo(f"    decides {spec.behaviour.value} {delay}, on timeout {spec.on_timeout}")


@executors.command()
@registry_option
@click.option(
    "--base",
    default=lambda: os.environ.get("ULOS_BASE_IMAGE") or None,
    help="Base image for every Dockerfile (BASE_IMAGE build argument). Default: a local "
    "base built earlier, else debian:bookworm-slim, else one built here with debootstrap.",
)
@click.argument("names", nargs=-1)
@one_line_errors
def build(registry_file: Path, base: str | None, names: tuple[str, ...]) -> None:
    """Build the images of the docker executors NAMES (all by default), and the images
    they build on (`base` in executor.toml) first.

    Safe to run again: the engine's build cache makes an unchanged image take seconds.
    """
    plan = read_registry(registry_file)
    specs = _chosen(plan, names)
    images = DockerImages()
    try:
        chosen_base = choose_base(images, base, click.echo)
        pip_args = host_pip_build_args()
        if pip_args:
            click.echo(
                f"pip settings for the builds: {', '.join(sorted(pip_args))} (from this host's pip)"
            )
        built = build_images(images, specs, chosen_base, click.echo, pip_args)
    finally:
        images.close()
    click.echo(f"built {len(built)} image(s) on {images.where}: {', '.join(built)}")


def _chosen(plan: RegistryPlan, names: tuple[str, ...]) -> list[DockerExecutorSpec]:
    dockers = {spec.name: spec for spec in plan.docker_specs}
    unknown = [name for name in names if name not in dockers]
    if unknown:
        raise click.UsageError(
            f"not docker executors in {plan.path}: {', '.join(unknown)} "
            f"(known: {', '.join(dockers) or 'none'})"
        )
    return plan.with_bases([dockers[name] for name in names] if names else list(dockers.values()))


def _engine_or_none() -> DockerImages | None:
    try:
        return DockerImages()
    except UlosError:
        return None


def _docker_line(spec: DockerExecutorSpec, images: DockerImages | None) -> str:
    settings = spec.settings
    limits = settings.limits
    if images is None:
        state = "engine not answering"
    else:
        state = "built" if images.exists(settings.image) else "not built"
    network = "network" if limits.network else "no network"
    return (
        f"image {settings.image} ({state}), rule {spec.rule.describe()}, on timeout "
        f"{settings.on_timeout}, {network}, memory {limits.memory}, cpus {limits.cpus:g}, "
        f"pids {limits.pids}, user {limits.user}"
    )
