"""Cancelling through the real tracker's `POST /api/tasks/{taskId}/cancel`: a task running on
a real node stops, and the tracker, `ulos-py status` and the task list say it was cancelled,
by whom and why (SPEC §8, §10)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from tests.support.cli import StartCli
from tests.support.harness import make_zip, node_settings, pipeline, running_node, stage, task
from tests.support.ports import steady_port
from tests.support.services import Broker, FtpServer, Names
from tests.support.tracker import journey_in, status_cli, tracker_env, until
from ulos_py.cancellation import parse_cancellations

pytestmark = pytest.mark.timeout(180)

TOKEN = "s3cret"
STOP_WITHIN = 2.0
"""Seconds from the tracker's 202 to the node's crash notice (SPEC §8's promise)."""


def slow_registry(tmp_path: Path) -> Path:
    """A stage that waits for a minute: it runs when the cancel comes."""
    path = tmp_path / "registry.toml"
    path.write_text(
        '[[route]]\nstage = "slow"\nexecutor = "slow"\n\n'
        '[executor.slow]\nkind = "builtin"\nbehaviour = "pass"\ndelay_seconds = 60\n'
    )
    return path


async def test_a_running_task_cancelled_over_http_ends_cancelled_with_who_and_why(
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
    port = steady_port()
    env = tracker_env(names, broker, database_url, port)
    env["ULOS_TRACKER_TOKEN"] = TOKEN
    ftp_server.put(f"/{names.prefix}/c.zip", make_zip({"main.py": "print(1)\n"}))
    task_id = f"{names.prefix}/lab 3/cancel"  # a slash, a space, and `cancel` at its end
    async with pipeline(names, amqp) as line:
        channel = await amqp.channel()
        queue = await channel.get_queue(tracker_queue)
        await queue.bind(names.logs_exchange, "logs")
        await queue.bind(names.crash_exchange, "crash")
        tracker = start_cli("tracker", env=env)
        registry = slow_registry(tmp_path)
        work = tmp_path / "work"
        settings = node_settings(names, broker, ftp_server, work, ULOS_EXECUTORS_FILE=registry)
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with running_node(settings), httpx.AsyncClient(base_url=base) as client:

            async def healthy() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    assert tracker.poll() is None, tracker.stderr.read() if tracker.stderr else ""
                    return False

            await until(healthy, "the tracker answers /healthz")
            described = (await client.get("/openapi.json")).json()["paths"]
            assert "/api/tasks/{task_id}/cancel" in described
            await line.publish(task(task_id, f"/{names.prefix}/c.zip", stage(ex, "slow"), 120))

            async def executing() -> Any:
                found = await journey_in(client, task_id, "running")
                steps = found["visits"][-1]["steps"] if found else {}
                return found if "execution_started" in steps else None

            await until(executing, "the task runs its slow stage")
            cancel = f"/api/tasks/{task_id}/cancel"
            why = {"reason": "assignment <b>withdrawn</b>", "by": "ta@lab"}
            assert (await client.post(cancel, json=why)).status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await client.post(cancel, json=why, headers=wrong)).status_code == 401
            odd = await client.post(cancel, json={"reason": 3, "who": "x"}, headers=auth)
            assert odd.status_code == 422
            long = await client.post(cancel, json={"reason": "x" * 501}, headers=auth)
            assert long.status_code == 422
            assert (await journey_in(client, task_id, "running")) is not None  # none went out

            loop = asyncio.get_running_loop()
            accepted = await client.post(cancel, json=why, headers=auth)
            sent = loop.time()
            assert accepted.status_code == 202, accepted.text
            answer = accepted.json()
            assert answer["taskId"] == task_id  # `…/cancel/cancel` is the task `…/cancel`
            assert (answer["cancelledBy"], answer["reason"]) == ("ta@lab", why["reason"])
            assert answer["cancelledAt"].endswith("Z")
            crash = await line.next_json("crashes", timeout=STOP_WITHIN + 5)
            assert loop.time() - sent < STOP_WITHIN, loop.time() - sent
            assert crash["taskId"] == task_id and crash["error"]["kind"] == "cancelled"

            done = await until(
                lambda: journey_in(client, task_id, "cancelled"), "cancelled in the tracker"
            )
            assert (done["cancelledBy"], done["cancelReason"]) == ("ta@lab", why["reason"])
            assert done["cancelledAt"] == answer["cancelledAt"]
            assert done["stage"] == {"exchange": ex, "routingKey": "slow"}
            [visit] = done["visits"]
            assert visit["crash"]["kind"] == "cancelled"
            assert visit["crash"]["cancelledBy"] == "ta@lab"
            assert visit["outcome"] is None and "uploaded" not in visit["steps"]
            listed = (await client.get("/api/tasks", params={"state": "cancelled"})).json()
            assert [i["taskId"] for i in listed["items"]] == [task_id]
            sheet = await client.get("/api/owners/student-1/tasks.csv")
            assert f"{task_id},cancelled,slow," in sheet.text

            shown = await status_cli(task_id, "--tracker", base)
            assert shown.returncode == 0, shown.stderr
            assert "cancelled at slow" in shown.stdout
            assert f"cancel  by ta@lab at {answer['cancelledAt']}: {why['reason']}" in shown.stdout

            # Unknown task, no body: accepted all the same (it may not have been seen yet),
            # and the tracker says who when the request does not.
            unseen = await client.post(f"/api/tasks/{names.prefix}%2Funseen/cancel", headers=auth)
            assert unseen.status_code == 202, unseen.text
            assert unseen.json()["taskId"] == f"{names.prefix}/unseen"  # URL-encoded works too
            assert unseen.json()["cancelledBy"] == "tracker API"
            assert unseen.json()["reason"] == ""
            # Many requests at once travel as fewer messages (a node pays per message), and
            # each 202 came after its message was confirmed: all are on the exchange by now.
            heard = await channel.declare_queue(exclusive=True)
            await heard.bind("ulos-cancellations", "")
            many = [f"{names.prefix}/many-{n}" for n in range(40)]
            answers = await asyncio.gather(
                *(client.post(f"/api/tasks/{i}/cancel", headers=auth) for i in many)
            )
            assert {a.status_code for a in answers} == {202}
            messages = []
            while (got := await heard.get(no_ack=True, fail=False)) is not None:
                messages.append(parse_cancellations(got.body))
            assert sorted(c.task_id for m in messages for c in m) == sorted(many)
            assert len(messages) < len(many), len(messages)
            # A GET of `…/cancel` is still the task of that name, not the endpoint.
            assert (await client.get(cancel)).status_code == 404
        await channel.close()
        assert line.empty("next")  # nothing was forwarded


async def test_a_cancel_the_broker_cannot_take_is_a_502_naming_the_setting(
    names: Names,
    broker: Broker,
    tracker_queue: str,
    start_cli: StartCli,
    tmp_path: Path,
) -> None:
    port = steady_port()
    env = tracker_env(names, broker, f"sqlite:///{tmp_path / 't.sqlite3'}", port)
    env.update(ULOS_TRACKER_TOKEN=TOKEN, ULOS_CANCEL_EXCHANGE=f"{names.prefix}-missing")
    tracker = start_cli("tracker", env=env)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

        async def healthy() -> bool:
            try:
                return (await client.get("/healthz")).status_code == 200
            except httpx.TransportError:
                assert tracker.poll() is None, tracker.stderr.read() if tracker.stderr else ""
                return False

        await until(healthy, "the tracker answers /healthz")
        for _ in range(2):  # the tracker's publisher recovers from the refusal
            refused = await client.post("/api/tasks/t1/cancel", headers=auth)
            assert refused.status_code == 502, refused.text
            detail = refused.json()["detail"]
            assert "ULOS_CANCEL_EXCHANGE" in detail and "does not exist" in detail, detail
        assert (await client.get("/healthz")).status_code == 200
