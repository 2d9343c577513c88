#!/usr/bin/env python
"""What reading a flood of single-id cancels costs a node's cancel follower alone (no tasks),
read live or in bursts, and how late each cancel reaches it.

    python benchmarks/cancel_follower.py --mode burst --messages 20000          # unpaced
    python benchmarks/cancel_follower.py --mode live --messages 10000 --rate 1000

A child process (uvloop, as a node) follows a fresh stream with `follow_cancellations`, on a
connection read continuously (`live`) or in bursts (`burst`, as a node does); this process
publishes the cancels, confirmed, 200 at a time (or paced at `--rate` a second), each with
its send time in its reason. Printed as one JSON line: the follower's CPU (user + system,
from getrusage) per message from the first message to the last, and each cancel's lag from
its send to the follower's board (p50, p99, max; the send time is taken before the publish,
so a publisher's own queueing counts too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import time
import uuid
from multiprocessing.connection import Connection
from urllib.parse import urlsplit

import aio_pika
import uvloop

from ulos_py.adapters import rabbitmq
from ulos_py.adapters.amqp_bursts import BurstReading
from ulos_py.adapters.cancellations import follow_cancellations
from ulos_py.cancellation import CancelBoard, Cancellation

WHEN = "2026-01-01T00:00:00Z"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _follow(url: str, mode: str, stream: str, messages: int, pipe: Connection) -> None:
    async def main() -> None:
        lags: list[float] = []
        started, done = asyncio.Event(), asyncio.Event()

        class Board(CancelBoard):
            def cancel(self, cancellation: Cancellation) -> None:
                lags.append(time.time() - float(cancellation.reason))
                started.set()
                super().cancel(cancellation)
                if len(lags) >= messages:
                    done.set()

        parts = urlsplit(url)
        address = rabbitmq.BrokerAddress(
            parts.hostname or "127.0.0.1",
            parts.port or 5672,
            parts.username or "guest",
            parts.password or "guest",
            "cancel follower benchmark",
        )
        reading = BurstReading() if mode == "burst" else None
        connection = await rabbitmq.connect(address, reading)
        stop = await follow_cancellations(connection, stream, stream, Board(), reading)
        pipe.send("ready")
        await started.wait()
        start = _cpu()
        await done.wait()
        used = _cpu() - start
        await stop()
        await connection.close()
        lags.sort()
        pipe.send(
            {
                "cpu_us_per_message": round(used / max(1, messages - 1) * 1e6, 1),
                "lag_p50_s": round(lags[len(lags) // 2], 3),
                "lag_p99_s": round(lags[int(len(lags) * 0.99)], 3),
                "lag_max_s": round(lags[-1], 3),
            }
        )

    uvloop.run(main())


async def run(url: str, mode: str, messages: int, rate: float) -> dict[str, object]:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    name = f"bench-follower-{uuid.uuid4().hex[:8]}"
    exchange = await channel.declare_exchange(name, "fanout", auto_delete=True)
    queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "stream"})
    await queue.bind(exchange, "")
    parent, child = multiprocessing.Pipe()
    follower = multiprocessing.Process(target=_follow, args=(url, mode, name, messages, child))
    follower.start()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError("the follower did not start")
        began = time.monotonic()
        step = 200 if rate == 0 else max(1, int(rate / 50))
        for first in range(0, messages, step):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            json.dumps(
                                Cancellation(f"{name}-{n}", "bench", repr(time.time()), WHEN).body()
                            ).encode()
                        ),
                        "",
                    )
                    for n in range(first, min(messages, first + step))
                )
            )
            if rate:
                ahead = began + (first + step) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        published = time.monotonic() - began
        result = await asyncio.to_thread(parent.recv)
    finally:
        follower.join(timeout=60)
        await channel.queue_delete(name)
        await connection.close()
    return {
        "mode": mode,
        "messages": messages,
        "messages_per_s": round(messages / published),
        "load": os.getloadavg()[0],
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--mode", choices=("live", "burst"), default="burst")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=0, help="messages a second (0: unpaced)")
    args = parser.parse_args()
    report = asyncio.run(run(args.broker_url, args.mode, args.messages, args.rate))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
