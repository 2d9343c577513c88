"""The real `ulos-py tracker` process beside a real node, on both databases: journeys stored
as they happen, a stopped tracker catching up from its queue, stuck and delivered states,
what is not a notice kept and counted, and `ulos-py status`."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from tests.support.cli import StartCli
from tests.support.harness import make_zip, node_settings, pipeline, running_node, stage, task
from tests.support.ports import steady_port
from tests.support.processes import children, running
from tests.support.services import Broker, FtpServer, Names
from tests.support.tracker import (
    journey_in,
    status_cli,
    tracker_env,
    until,
)

pytestmark = pytest.mark.timeout(180)


async def test_a_stopped_tracker_catches_up_and_tells_every_journey(
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    amqp: aio_pika.abc.AbstractRobustConnection,
    tracker_queue: str,
    database_url: str,
    start_cli: StartCli,
    tmp_path: Path,
) -> None:
    ex = names.exchange
    port = steady_port()  # the tracker comes back on it
    env = tracker_env(names, broker, database_url, port)
    for key in ("a.zip", "b.zip", "c.zip"):
        (ftp_server.root / key).write_bytes(make_zip({"main.py": "print(1)\n"}))
    async with pipeline(names, amqp) as line:
        channel = await amqp.channel()
        queue = await channel.get_queue(tracker_queue)
        await queue.bind(names.logs_exchange, "logs")
        await queue.bind(names.crash_exchange, "crash")
        tracker = start_cli("tracker", env=env)
        settings = node_settings(names, broker, ftp_server, tmp_path / "work")
        base = f"http://127.0.0.1:{port}"
        async with running_node(settings), httpx.AsyncClient(base_url=base) as client:

            async def healthy() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    assert tracker.poll() is None, tracker.stderr.read() if tracker.stderr else ""
                    return False

            await until(healthy, "the tracker answers /healthz")
            off = await client.post("/api/tasks", json=task("x", "/a.zip", None))
            assert off.status_code == 403  # no ULOS_TRACKER_TOKEN: submitting is off
            no_cancel = await client.post("/api/tasks/x/cancel", json={"reason": "r"})
            assert no_cancel.status_code == 403  # ... and so is cancelling
            assert "cancelling is off" in no_cancel.json()["detail"]
            assert (await client.get("/docs")).status_code == 200
            described = (await client.get("/openapi.json")).json()["paths"]
            assert {"/api/tasks", "/api/events", "/healthz"} <= set(described)
            # Delivered: forwarded to the end of its tree, where no node serves.
            await line.publish(
                task("t-delivered", "/a.zip", stage(ex, "skip", stage(ex, "next-key")))
            )

            async def settled() -> Any:
                found = await journey_in(client, "t-delivered", "delivered")
                return found if found and "acked" in found["visits"][-1]["steps"] else None

            done = await until(settled, "delivered and acked")
            [visit] = done["visits"]
            assert visit["stage"] == {"exchange": ex, "routingKey": "skip"}
            assert visit["nodeId"] == f"{names.prefix}-node"
            assert (visit["attempt"], visit["outcome"]) == (1, "pass")
            assert visit["forwardedTo"] == {"exchange": ex, "routingKey": "next-key"}
            assert {"received", "downloaded", "uploaded", "forwarded", "acked"} <= set(
                visit["steps"]
            )
            assert done["stage"] == {"exchange": ex, "routingKey": "next-key"}

            # The tracker stops, its writing process with it; the node goes on; the notices
            # wait in the tracker's queue.
            helpers = children(tracker.pid)  # its writing process with SQLite (auto)
            assert bool(helpers) == database_url.startswith("sqlite")
            tracker.send_signal(subprocess.signal.SIGTERM)
            said = tracker.communicate(timeout=30)[1]
            assert tracker.returncode == 0, said
            assert "Traceback" not in said

            async def helpers_gone() -> bool:
                return not any(map(running, helpers))

            await until(helpers_gone, "the tracker's own processes stopped with it", timeout=10)
            waiting = stage(ex, "skip", stage(ex, "next-key", stage(ex, "failed-key")))
            await line.publish(task("t-while-down", "/b.zip", waiting))
            await line.logs_until("t-while-down", "acked")
            await channel.default_exchange.publish(
                aio_pika.Message(b"\x00 not a notice"), routing_key=tracker_queue
            )
            tracker = start_cli("tracker", env=env)
            await until(healthy, "the restarted tracker answers /healthz")
            caught = await until(
                lambda: journey_in(client, "t-while-down", "waiting", "stuck", at="next-key"),
                "caught up",
            )
            assert caught["stage"] == {"exchange": ex, "routingKey": "next-key"}, caught
            # Waiting at a stage with further decisions for longer than STUCK_AFTER: stuck.
            await until(lambda: journey_in(client, "t-while-down", "stuck"), "stuck", timeout=10)
            stuck = (await client.get("/api/stuck")).json()["items"]
            assert [t["taskId"] for t in stuck] == ["t-while-down"]
            capped = await client.get("/api/stuck", params={"limit": 1})
            assert [t["taskId"] for t in capped.json()["items"]] == ["t-while-down"]
            assert (await client.get("/api/stuck", params={"limit": 0})).status_code == 422
            counts = (await client.get("/api/counts")).json()
            assert counts["unreadable"] == 1
            assert counts["tasks"] == 2
            bad_cursor = await client.get("/api/tasks", params={"cursor": "nope"})
            assert bad_cursor.status_code == 422
            assert (await client.get("/api/tasks", params={"state": "odd"})).status_code == 422
            listed = (await client.get("/api/tasks", params={"q": "t-"})).json()
            assert [i["taskId"] for i in listed["items"]] == ["t-while-down", "t-delivered"]
            nodes = (await client.get("/api/nodes")).json()["items"]
            assert [(n["nodeId"], n["visits"]) for n in nodes] == [(f"{names.prefix}-node", 2)]
            status = await status_cli("t-delivered", "--tracker", base)
            assert status.returncode == 0, status.stderr
            assert "delivered at next-key" in status.stdout
            assert "skip  attempt 1" in status.stdout
            as_json = await status_cli("t-delivered", "--json", "--tracker", base)
            assert json.loads(as_json.stdout) == (await client.get("/api/tasks/t-delivered")).json()
            unknown = await status_cli("nope", "--tracker", base)
            assert unknown.returncode == 3
            assert "no task nope" in unknown.stderr
        await channel.close()


def test_a_missing_queue_stops_the_tracker_with_one_line(
    names: Names, broker: Broker, start_cli: StartCli, tmp_path: Path
) -> None:
    env = tracker_env(names, broker, f"sqlite:///{tmp_path / 'x.sqlite3'}", steady_port())
    process = start_cli("tracker", env=env)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"ULOS_TRACKER_QUEUE: queue {names.queue('tracker')!r} does not exist" in err
    assert "Traceback" not in err


async def test_a_task_submitted_over_http_runs_and_its_output_can_be_read(
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    amqp: aio_pika.abc.AbstractRobustConnection,
    tracker_queue: str,
    start_cli: StartCli,
    tmp_path: Path,
) -> None:
    ex = names.exchange
    port = steady_port()
    env = tracker_env(names, broker, f"sqlite:///{tmp_path / 't.sqlite3'}", port)
    env.update(
        ULOS_TRACKER_TOKEN="s3cret",
        REMOTE_STORAGE_HOST=ftp_server.host,
        REMOTE_STORAGE_PORT=str(ftp_server.port),
        REMOTE_STORAGE_USERNAME=ftp_server.username,
        REMOTE_STORAGE_PASSWORD=ftp_server.password,
        ULOS_TRACKER_OUTPUT_MAX_BYTES="100000",
    )
    async with pipeline(names, amqp) as line:
        channel = await amqp.channel()
        queue = await channel.get_queue(tracker_queue)
        await queue.bind(names.logs_exchange, "logs")
        await queue.bind(names.crash_exchange, "crash")
        input_queue = await channel.get_queue(line.input_queue)
        await input_queue.bind(ex, "skip")  # the first stage is reached through the exchange
        tracker = start_cli("tracker", env=env)
        settings = node_settings(names, broker, ftp_server, tmp_path / "work")
        auth = {"Authorization": "Bearer s3cret"}
        base = f"http://127.0.0.1:{port}"
        async with running_node(settings), httpx.AsyncClient(base_url=base) as client:

            async def healthy() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    assert tracker.poll() is None, tracker.stderr.read() if tracker.stderr else ""
                    return False

            await until(healthy, "the tracker answers /healthz")
            subscribed = asyncio.Event()
            changes = asyncio.create_task(_first_change(base, "t-sub/1", "delivered", subscribed))
            await asyncio.wait_for(subscribed.wait(), 10)
            message = task(
                "t-sub/1", "/sub/lab3/t-sub.zip", stage(ex, "skip", stage(ex, "next-key"))
            )
            assert (await client.post("/api/tasks", json=message)).status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await client.post("/api/tasks", json=message, headers=wrong)).status_code == 401
            bad = await client.post(
                "/api/tasks", json={**message, "timeout": "soon", "taskOwnerId": None}, headers=auth
            )
            assert bad.status_code == 422
            assert {e["path"] for e in bad.json()["errors"]} == {"$.timeout", "$.taskOwnerId"}
            nowhere = {**message, "routingTree": stage(ex, "no-queue-has-this-key")}
            unroutable = await client.post("/api/tasks", json=nowhere, headers=auth)
            assert unroutable.status_code == 502
            zipped = make_zip({"main.py": "print('hello')\n"})
            accepted = await client.post(
                "/api/tasks",
                data={"message": json.dumps(message)},
                files={"file": ("t-sub.zip", zipped, "application/zip")},
                headers=auth,
            )
            assert accepted.status_code == 202, accepted.text
            assert accepted.json() == {
                "taskId": "t-sub/1",
                "url": f"{base}/api/tasks/t-sub%2F1",
            }
            done = await until(
                lambda: journey_in(client, "t-sub%2F1", "delivered"), "the submitted task ran"
            )
            assert done["taskId"] == "t-sub/1"
            change = await asyncio.wait_for(changes, 30)
            assert change["state"] == "delivered"
            assert change["stage"] == {"exchange": ex, "routingKey": "next-key"}
            output = await client.get("/api/tasks/t-sub%2F1/output")
            assert output.status_code == 200
            assert f"==> output_{ex}_skip.txt <==" in output.text
            assert (await client.get("/api/tasks/unknown/output")).status_code == 404
            csv_sheet = await client.get("/api/owners/student-1/tasks.csv")
            assert csv_sheet.text.splitlines()[1].startswith("t-sub/1,delivered,next-key,pass,")
        await channel.close()


async def _first_change(
    base: str, task_id: str, state: str, subscribed: asyncio.Event
) -> dict[str, Any]:
    """The first SSE `task` event of GET /api/events saying `task_id` reached `state`."""
    async with (
        httpx.AsyncClient(base_url=base, timeout=None) as client,
        client.stream("GET", "/api/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
                if event == "ready":
                    subscribed.set()
            elif line.startswith("data:") and event == "task":
                change: dict[str, Any] = json.loads(line.split(":", 1)[1])
                if change["taskId"] == task_id and change["state"] == state:
                    return change
    raise AssertionError("the event stream ended")
