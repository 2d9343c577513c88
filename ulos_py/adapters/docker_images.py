"""Building and finding executor images through docker-py, with our errors at this edge.

Operator tooling, not the task path: these calls block, and `ulos-py executors` runs them
one after another while printing the engine's progress.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from ulos_py.adapters.docker_engine import LABEL, client_from_env, engine_url, translated
from ulos_py.errors import EngineError, EngineUnavailable, ImageBuildFailed

Progress = Callable[[str], None]


class DockerImages:
    def __init__(self) -> None:
        with translated("connecting to the Docker engine"):
            self._api = client_from_env(threads=1)

    @property
    def where(self) -> str:
        return engine_url()

    def exists(self, image: str) -> bool:
        with translated(f"looking for image {image!r}"):
            try:
                self._api.inspect_image(image)
            except docker.errors.ImageNotFound:
                return False
            return True

    def pull(self, image: str) -> str | None:
        """Pull `image`; the engine's reason when it cannot (no registry answers, say)."""
        try:
            self._api.pull(image)
        except docker.errors.APIError as exc:
            return str(exc.explanation)
        return None

    def build(self, folder: Path, tag: str, base_image: str, progress: Progress) -> None:
        """Build `tag` from `folder`; ImageBuildFailed when the build itself fails (a step
        of the Dockerfile, a missing file or base), EngineUnavailable when nobody answers."""
        doing = f"building {tag} from {folder}"
        try:
            with translated(doing):
                stream = self._api.build(
                    path=str(folder),
                    tag=tag,
                    buildargs={"BASE_IMAGE": base_image},
                    rm=True,
                    forcerm=True,
                    decode=True,
                    labels={LABEL: "executor-image"},
                )
                failure: str | None = None
                for event in stream:  # to its end, which releases the engine's connection
                    if "error" in event:
                        failure = failure or str(event["error"]).strip()
                    elif text := str(event.get("stream", "")).strip():
                        progress(text)
                if failure is not None:
                    raise ImageBuildFailed(f"{doing} failed: {failure}")
        except (ImageBuildFailed, EngineUnavailable):
            raise
        except EngineError as exc:  # the engine refused the build request itself
            raise ImageBuildFailed(str(exc)) from exc

    def import_root_fs(self, tar_file: Path, image: str) -> None:
        repository, _, tag = image.partition(":")
        with translated(f"importing {tar_file} as {image}"):
            self._api.import_image_from_file(str(tar_file), repository=repository, tag=tag or None)

    def close(self) -> None:
        self._api.close()
