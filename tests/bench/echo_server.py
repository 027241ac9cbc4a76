"""Bare asyncio "echo" peer for bench_queries.py: the floor a plug server can reach.

For each request frame it receives (4-byte big-endian length, then that many
bytes) it writes back one fixed, pre-encoded reply frame read from a file — no
decryption, no JSON, no emulation. It is an :class:`asyncio.Protocol` with
``TCP_NODELAY``, as the emulator's server is, so the only difference between the
two is the work done per request.

    python tests/bench/echo_server.py REPLY_FILE [--port 0]

Prints one line ``echo server on 127.0.0.1:PORT`` once listening; stops on
SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from pathlib import Path


class EchoSession(asyncio.Protocol):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            end = 4 + int.from_bytes(buf[:4], "big")
            if len(buf) < end:
                break
            del buf[:end]
            assert self.transport is not None
            self.transport.write(self.reply)


async def serve(reply: bytes, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoSession(reply), host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"echo server on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reply_file", type=Path, help="file holding the whole reply frame")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    reply = args.reply_file.read_bytes()
    if len(reply) < 4 or int.from_bytes(reply[:4], "big") != len(reply) - 4:
        sys.exit(f"{args.reply_file}: not one length-prefixed frame")
    asyncio.run(serve(reply, args.host, args.port))


if __name__ == "__main__":
    main()
