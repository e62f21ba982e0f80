"""A stub inference replica for ``gateway_overhead.py --stub-replica`` and ``scale_out.py``:
answers ``/readyz`` and every POST with one fixed 64-token completion after ``delay`` seconds,
from a raw asyncio protocol (next to no CPU of its own), so the gateway's own CPU per request
can be measured at request rates a CPU engine cannot reach. With ``MAX_CONCURRENT`` > 0 at
most that many requests are served at once (the rest wait in order), like an engine with a
fixed batch: its capacity is ``MAX_CONCURRENT / DELAY_S`` requests/s. ``GET /stats`` answers
``{"served": N}``.

    python benchmarks/_stub_replica.py PORT DELAY_S [MAX_CONCURRENT]
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop

BODY = json.dumps(
    {
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": 1,
        "model": "tiny-llama",
        "choices": [
            {"index": 0, "text": "word " * 64, "finish_reason": "length", "logprobs": None}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 64, "total_tokens": 76},
    }
).encode()
READY = b'{"status":"ready"}'


def response(body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body


SERVED = [0]
PENDING: set[asyncio.Future[None]] = set()  # strong refs to the capped requests' tasks


class Replica(asyncio.Protocol):
    def __init__(self, delay: float, slots: asyncio.Semaphore | None) -> None:
        self.delay = delay
        self.slots = slots
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.WriteTransport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(rest) < length:
                return  # the body is still arriving
            self.buf = rest[length:]
            target = head.split(b" ", 2)[1]
            if target.startswith(b"/readyz"):
                self.transport.write(response(READY))
            elif target.startswith(b"/stats"):
                self.transport.write(response(json.dumps({"served": SERVED[0]}).encode()))
            elif self.slots is None:
                SERVED[0] += 1
                loop = asyncio.get_running_loop()
                loop.call_later(self.delay, self.transport.write, response(BODY))
            else:
                task = asyncio.ensure_future(self._capped(self.slots))
                PENDING.add(task)
                task.add_done_callback(PENDING.discard)

    async def _capped(self, slots: asyncio.Semaphore) -> None:
        async with slots:
            await asyncio.sleep(self.delay)
        SERVED[0] += 1
        if not self.transport.is_closing():
            self.transport.write(response(BODY))


async def main(port: int, delay: float, cap: int) -> None:
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(cap) if cap > 0 else None
    server = await loop.create_server(lambda: Replica(delay, slots), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    cap = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    uvloop.run(main(int(sys.argv[1]), float(sys.argv[2]), cap))
