"""Blocking TCP transport for one-shot CLI commands.

A command such as ``hs100local on`` makes one or two round trips and exits; the
asyncio machinery (≈25 ms of imports) would dominate its run time. This module
uses a plain socket with the same sans-I/O core and the same policy as
:class:`hs100local.transport.TcpTransport`: separate connect and I/O timeouts,
``TCP_NODELAY``, retries only on timeouts and lost connections, bounded reads.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from hs100local.errors import (
    ConnectionLostError,
    Hs100Error,
    PlugTimeoutError,
    classify_os_error,
)
from hs100local.hostport import DEFAULT_PORT, Endpoint
from hs100local.protocol import FrameDecoder, Reply, Request, dumps, encode_tcp, loads


class BlockingTransport(Endpoint):
    """A persistent blocking TCP connection to one plug."""

    def __init__(self, host: str, port: int = DEFAULT_PORT, **settings: Any) -> None:
        super().__init__(host, port, **settings)
        self._sock: socket.socket | None = None

    def __enter__(self) -> BlockingTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        except TimeoutError:
            raise PlugTimeoutError(
                f"timed out connecting to {self.where} after {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise classify_os_error(exc, f"to {self.where}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        return sock

    def _exchange(self, sock: socket.socket, message: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout
        sock.settimeout(self.timeout)
        sock.sendall(encode_tcp(message))
        decoder = FrameDecoder(self.limit)
        while True:
            reply = decoder.next_message()
            if reply is not None:
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError()
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionLostError(
                    f"{self.where} closed the connection mid-reply "
                    f"({decoder.pending} bytes received)"
                )
            decoder.feed(chunk)

    def query_bytes(self, message: bytes) -> bytes:
        """Send one plaintext message, return the decrypted plaintext reply."""
        for attempt in range(self.retries + 1):
            try:
                sock = self._connect()
                try:
                    return self._exchange(sock, message)
                except TimeoutError:
                    raise PlugTimeoutError(
                        f"no reply from {self.where} within {self.timeout:g} s"
                    ) from None
                except OSError as exc:
                    raise classify_os_error(exc, f"talking to {self.where}") from None
            except Hs100Error as exc:
                self.close()
                if not exc.retryable or attempt >= self.retries:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def query(self, request: Request) -> Reply:
        return loads(self.query_bytes(dumps(request)))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
