"""Submitting over HTTP and reading a task's stage output (SPEC §10), thin like `api.py`.

`POST /api/tasks` is off unless ULOS_TRACKER_TOKEN is set, and then needs it as a bearer
token. The message is validated as `ulos-py validate` does (422 lists every problem with
its JSON path); with a zip (multipart) the zip is uploaded to the message's filePath first;
then the task is published confirmed and mandatory to its first stage. `GET
/api/tasks/{id}/output` downloads the task's zip and streams its `output_*.txt` files.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from ulos_py.errors import MalformedTask, PublishError, StorageError
from ulos_py.models import parse_task
from ulos_py.ports import Envelope, Publisher, Storage
from ulos_py.tracker import queries
from ulos_py.tracker.api import tracker_of

router = APIRouter()

OUTPUT_GLOB = "output_*.txt"


class SubmissionStorage(Storage, Protocol):
    """The storage as submitting needs it: a new submission may go to a new folder."""

    async def make_parents(self, remote_path: str) -> None: ...


@dataclass(frozen=True)
class Submission:
    """What submitting and reading outputs need (built by the service)."""

    publisher: Publisher
    storage: SubmissionStorage
    token: str | None
    upload_max_bytes: int = 100 << 20
    output_max_bytes: int = 1 << 20


def submission_of(request: Request) -> Submission:
    found: Submission = tracker_of(request).extras["submission"]
    return found


def _authorize(request: Request, submission: Submission) -> None:
    if submission.token is None:
        raise HTTPException(403, "submitting is off: set ULOS_TRACKER_TOKEN to allow it")
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        token.encode(), submission.token.encode()
    ):
        raise HTTPException(
            401, "a valid bearer token is needed", headers={"WWW-Authenticate": "Bearer"}
        )


async def _message_and_zip(request: Request, limit: int) -> tuple[bytes, UploadFile | None]:
    """The message's bytes and, for multipart, the uploaded zip (fields `message`, `file`)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await request.body(), None
    form = await request.form(max_files=1, max_fields=4)
    message, upload = form.get("message"), form.get("file")
    if isinstance(message, UploadFile):
        message = (await message.read()).decode("utf-8", "replace")
    if not isinstance(message, str):
        raise HTTPException(422, "multipart needs a `message` field with the task's JSON")
    if upload is not None and not isinstance(upload, UploadFile):
        raise HTTPException(422, "the `file` field must be a file (the submission zip)")
    if upload is not None and (upload.size or 0) > limit:
        raise HTTPException(413, f"the zip is larger than {limit} bytes")
    return message.encode(), upload


@router.post(
    "/api/tasks",
    status_code=202,
    responses={401: {}, 403: {}, 413: {}, 422: {}, 502: {}},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "message": {"type": "string"},
                            "file": {"type": "string", "format": "binary"},
                        },
                        "required": ["message"],
                    }
                },
            }
        }
    },
)
async def submit(request: Request) -> JSONResponse:
    """Submit a task (JSON, or multipart `message` + `file` zip uploaded to its filePath);
    202 with `taskId` and `url` once the broker confirmed it on its first stage."""
    submission = submission_of(request)
    _authorize(request, submission)
    raw, upload = await _message_and_zip(request, submission.upload_max_bytes)
    try:
        received, task = parse_task(raw)
    except MalformedTask as exc:
        problems = exc.errors or [{"path": "$", "message": exc.detail}]
        return JSONResponse({"detail": "invalid task message", "errors": problems}, 422)
    root = task.routing_tree
    if root is None:
        problem = {"path": "$.routingTree", "message": "a submitted task needs a routing tree"}
        return JSONResponse({"detail": "invalid task message", "errors": [problem]}, 422)
    try:
        if upload is not None:
            await _upload(submission.storage, upload, task.file_path)
        envelope = Envelope(root.exchange, root.routing_key, received, correlation_id=task.task_id)
        await submission.publisher.publish(envelope)
    except (StorageError, PublishError) as exc:
        raise HTTPException(502, str(exc)) from exc
    quoted = urllib.parse.quote(task.task_id, safe="")
    url = str(request.base_url).rstrip("/") + f"/api/tasks/{quoted}"
    return JSONResponse({"taskId": task.task_id, "url": url}, 202)


async def _upload(storage: SubmissionStorage, upload: UploadFile, remote_path: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ulos-tracker-"))
    try:
        local = workdir / "submission.zip"
        with local.open("wb") as out:
            while block := await upload.read(1 << 20):
                out.write(block)
        if not zipfile.is_zipfile(local):
            raise HTTPException(422, "the uploaded file is not a zip archive")
        await storage.make_parents(remote_path)
        await storage.upload(local, remote_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@router.get("/api/tasks/{task_id:path}/output", response_class=StreamingResponse)
async def output(request: Request, task_id: str) -> StreamingResponse:
    """The task's stage outputs (`output_*.txt` in its zip on the storage), as text, each
    headed by its name; cut at ULOS_TRACKER_OUTPUT_MAX_BYTES in all."""
    submission = submission_of(request)
    found = await queries.task_journey(tracker_of(request).store, task_id)
    if found is None or not found.get("filePath"):
        raise HTTPException(404, f"no task {task_id!r} is known to this tracker")
    workdir = Path(tempfile.mkdtemp(prefix="ulos-tracker-"))
    local = workdir / "task.zip"
    try:
        await submission.storage.download(found["filePath"], local)
        archive = zipfile.ZipFile(local)
    except (StorageError, zipfile.BadZipFile, OSError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise HTTPException(502, f"cannot read the task's zip: {exc}") from exc
    cleanup = BackgroundTask(_close, archive, workdir)
    body = _outputs(archive, submission.output_max_bytes)
    return StreamingResponse(body, media_type="text/plain; charset=utf-8", background=cleanup)


def _outputs(archive: zipfile.ZipFile, cap: int) -> Iterator[bytes]:
    left = cap
    names = sorted(
        info.filename
        for info in archive.infolist()
        if Path(info.filename).match(OUTPUT_GLOB) and "/" not in info.filename
    )
    if not names:
        yield b"(no stage output in the task's zip yet)\n"
    for name in names:
        yield f"==> {name} <==\n".encode()
        with archive.open(name) as entry:
            while left > 0 and (block := entry.read(min(64 << 10, left))):
                left -= len(block)
                yield block
            if left <= 0 and entry.read(1):
                yield f"\n[cut at {cap} bytes: ULOS_TRACKER_OUTPUT_MAX_BYTES]\n".encode()
                return
        yield b"\n"


def _close(archive: zipfile.ZipFile, workdir: Path) -> None:
    archive.close()
    shutil.rmtree(workdir, ignore_errors=True)
