"""A stub inference replica for ``gateway_overhead.py --stub-replica``: answers ``/readyz`` and
every POST with one fixed 64-token completion after ``delay`` seconds, from a raw asyncio
protocol (next to no CPU of its own), so the gateway's own CPU per request can be measured at
request rates a CPU engine cannot reach.

    python benchmarks/_stub_replica.py PORT DELAY_S
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


class Replica(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
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
            if head.split(b" ", 2)[1].startswith(b"/readyz"):
                self.transport.write(response(READY))
            else:
                loop = asyncio.get_running_loop()
                loop.call_later(self.delay, self.transport.write, response(BODY))


async def main(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Replica(delay), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), float(sys.argv[2])))
