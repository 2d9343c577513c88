"""The peer: the node's work written as a Celery user would, for peer_celery.py.

One task per SPEC §2 message: download the zip with ftplib into a temp dir, unpack it with
zipfile, run a no-op executor (write the stage's output file, as the node's `skip` stage
does), pack, upload to the same path, and publish through kombu's producer the log notices
shaped like the node's and one mandatory forward to the success branch. Celery's own
idioms carry the delivery guarantees: late acks, prefetch multiplier 1, prefork pool,
confirmed publishing for every publish (the broker transport's `confirm_publish`), and
`autoretry_for` on FTP errors where the node retries its transfers.

Configured by the environment, with the node's own names where the meaning is the same:

    CELERY_BROKER_URL                 amqp URL (default amqp://guest:guest@127.0.0.1:5672//)
    REMOTE_STORAGE_HOST/PORT/USERNAME/PASSWORD        the FTP server
    MESSAGE_BROKER_LOGS_EXCHANGE/LOGS_ROUTING_KEY     where the notices go
    BENCH_WORK_DIR                    parent of each task's temp dir (default: system temp)

Run: celery -A benchmarks.celery_app worker --pool prefork -c 1 -Q QUEUE (from the repo).
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_shutdown
from kombu.messaging import Producer

TASK_NAME = "ulos_bench.process_task"
# received, downloaded, execution_started, execution_finished, uploaded, forwarded: the
# node's events up to the forward. Its 7th, `acked`, comes after the ack, which Celery sends
# from the pool's parent process once the task has returned: no task code runs there.
NOTICES_PER_TASK = 6
PERSISTENT = 2

app = Celery("ulos_bench")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_pool="prefork",
    task_ignore_result=True,  # no result backend: the forward is the result
    task_serializer="json",
    accept_content=["json"],
)


class _Settings:
    """Read once per process at first use, so importing the module needs no environment."""

    def __init__(self) -> None:
        env = os.environ
        self.ftp_host = env.get("REMOTE_STORAGE_HOST", "127.0.0.1")
        self.ftp_port = int(env.get("REMOTE_STORAGE_PORT", "21"))
        self.ftp_user = env.get("REMOTE_STORAGE_USERNAME", "anonymous")
        self.ftp_password = env.get("REMOTE_STORAGE_PASSWORD", "")
        self.logs_exchange = env.get("MESSAGE_BROKER_LOGS_EXCHANGE", "")
        self.logs_key = env.get("MESSAGE_BROKER_LOGS_ROUTING_KEY", "logs")
        self.work_dir = env.get("BENCH_WORK_DIR") or None


_settings: _Settings | None = None
_ftp: ftplib.FTP | None = None


def settings() -> _Settings:
    global _settings
    if _settings is None:
        _settings = _Settings()
    return _settings


def ftp() -> ftplib.FTP:
    """One logged-in connection per pool process, reused like a database connection."""
    global _ftp
    if _ftp is None:
        s = settings()
        client = ftplib.FTP(timeout=30)
        client.connect(s.ftp_host, s.ftp_port)
        client.login(s.ftp_user, s.ftp_password)
        _ftp = client
    return _ftp


def drop_ftp() -> None:
    """After an error the connection's state is unknown: the retry gets a fresh one."""
    global _ftp
    if _ftp is not None:
        client, _ftp = _ftp, None
        client.close()


@worker_process_shutdown.connect
def _close_ftp(**_: Any) -> None:
    drop_ftp()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def notice(task: dict[str, Any], event: str, node_id: str, **fields: Any) -> dict[str, Any]:
    """SPEC §4 log notice: the task as received plus what happened, as the node shapes it."""
    stage = task["routingTree"]
    return {
        **task,
        "logMessage": f"task {task['taskId']}: {event.replace('_', ' ')}",
        "event": event,
        "nodeId": node_id,
        "timestamp": now(),
        "stage": {"exchange": stage["exchange"], "routingKey": stage["routingKey"]},
        **fields,
    }


def publish(producer: Producer, body: dict[str, Any], exchange: str, key: str, **kw: Any) -> None:
    """Persistent JSON; the app's `confirm_publish` makes it return only once confirmed."""
    producer.publish(
        body,
        exchange=exchange,
        routing_key=key,
        serializer="json",
        delivery_mode=PERSISTENT,
        correlation_id=body["taskId"],
        **kw,
    )


def no_op_executor(files: Path) -> tuple[str, str]:
    """The `skip` stage: PASS at once, with an output line like the node's built-in."""
    return "pass", "built-in executor skip: pass\n"


def unpack(archive: Path, files: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(files)


def pack(files: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(files.rglob("*")):
            zf.write(path, path.relative_to(files).as_posix())


@app.task(
    bind=True,
    name=TASK_NAME,
    autoretry_for=(OSError, EOFError, ftplib.Error),
    retry_backoff=0.5,
    max_retries=3,
)
def process_task(self: Task, task: dict[str, Any]) -> None:
    """Download, unpack, run, pack, upload, report, forward; Celery acks after return.

    The notices come at the node's points (`downloaded` after unpacking, `uploaded` after
    packing and uploading), so the two sides' step times compare."""
    s = settings()
    stage, path = task["routingTree"], task["filePath"]
    node_id = f"celery@{self.request.hostname}"
    with app.producer_or_acquire() as producer:

        def log(event: str, **fields: Any) -> None:
            body = notice(task, event, node_id, **fields)
            publish(producer, body, s.logs_exchange, s.logs_key)

        log("received")
        try:
            with tempfile.TemporaryDirectory(prefix="celery-", dir=s.work_dir) as tmp:
                archive, files = Path(tmp) / "task.zip", Path(tmp) / "files"
                with archive.open("wb") as out:
                    ftp().retrbinary(f"RETR {path}", out.write)
                unpack(archive, files)
                log("downloaded")
                log("execution_started")
                outcome, output = no_op_executor(files)
                (files / f"output_{stage['exchange']}_{stage['routingKey']}.txt").write_text(output)
                log("execution_finished", outcome=outcome)
                pack(files, archive)
                with archive.open("rb") as data:
                    ftp().storbinary(f"STOR {path}", data)
        except (OSError, EOFError, ftplib.Error):
            drop_ftp()
            raise
        log("uploaded")
        hop = stage.get("successRoutingDecision")
        if hop is None:
            log("completed")
            return
        digest = hashlib.sha256(f"{task['taskId']}\x00{hop['routingKey']}".encode()).hexdigest()
        forward = {**task, "routingTree": hop}
        publish(
            producer,
            forward,
            hop["exchange"],
            hop["routingKey"],
            mandatory=True,
            message_id=digest[:32],
        )
        log("forwarded", target=hop)
