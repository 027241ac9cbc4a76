"""Blocking TCP transport for one-shot CLI commands.

A command such as ``hs100local on`` makes one or two round trips and exits; the
asyncio machinery (≈25 ms of imports) would dominate its run time. This module
uses a plain socket with the same sans-I/O core and the same policy as
:class:`hs100local.transport.TcpTransport`: separate connect and I/O timeouts,
``TCP_NODELAY``, retries only on timeouts and lost connections, bounded reads.
"""

from __future__ import annotations

import select
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
from hs100local.protocol import (
    FrameDecoder,
    Reply,
    Request,
    dumps,
    encode_tcp,
    is_read_only,
    loads,
)

#: a retry needs at least this much of the budget left to be worth starting
MIN_RETRY_S = 0.05


class BlockingTransport(Endpoint):
    """A persistent blocking TCP connection to one plug.

    With a :class:`~hs100local.hostport.Budget` every connect, read and retry is
    capped by what is left of it, and error messages give the time really waited.
    """

    def __init__(self, host: str, port: int = DEFAULT_PORT, **settings: Any) -> None:
        super().__init__(host, port, **settings)
        self._sock: socket.socket | None = None

    def __enter__(self) -> BlockingTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _cap(self, wait: float) -> float:
        return wait if self.budget is None else self.budget.cap(wait)

    def _waited(self, started: float) -> str:
        spent = time.monotonic() - started + (self.budget.spent if self.budget else 0.0)
        return f"{spent:.1f} s"

    def _stale(self, sock: socket.socket) -> bool:
        """The plug closed the idle connection (some firmware does after each reply):
        reconnect instead of failing on it and spending a retry."""
        try:
            readable, _w, _x = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _connect(self, started: float, fresh: bool = False) -> socket.socket:
        if self._sock is not None:
            if not fresh and not self._stale(self._sock):
                return self._sock
            self.close()
        wait = self._cap(self.connect_timeout)
        if wait <= 0:
            raise PlugTimeoutError(f"no time left to connect to {self.where} "
                                   f"(waited {self._waited(started)})")
        try:
            sock = socket.create_connection((self.host, self.port), wait)
        except TimeoutError:
            raise PlugTimeoutError(
                f"timed out connecting to {self.where} after {self._waited(started)}"
            ) from None
        except OSError as exc:
            raise classify_os_error(exc, f"to {self.where}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        return sock

    def _exchange(self, sock: socket.socket, message: bytes) -> bytes:
        wait = self._cap(self.timeout)
        if wait <= 0:
            raise TimeoutError()
        deadline = time.monotonic() + wait
        sock.settimeout(wait)
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

    def _may_retry(self, this_try: float) -> bool:
        """Worth another try: time is left after ``this_try`` (not yet charged)."""
        return self.budget is None or self.budget.remaining() - this_try >= MIN_RETRY_S

    def query_bytes(self, message: bytes, *, repeatable: bool = True) -> bytes:
        """Send one plaintext message, return the decrypted plaintext reply.

        ``repeatable=False`` (a change, see :func:`~hs100local.protocol.is_read_only`):
        it goes out on a connection that has carried nothing yet — a plug that closes
        after each reply may not have closed the old one *yet*, and would act on the
        request without answering — and once sent it is never sent again: a broken
        connection then is an error, not a retry (the plug may have acted).
        """
        used = self._sock is not None
        for attempt in range(self.retries + 1):
            started = time.monotonic()
            sending = False
            try:
                sock = self._connect(started, fresh=used and not repeatable)
                try:
                    sending = True
                    return self._exchange(sock, message)
                except TimeoutError:
                    raise PlugTimeoutError(
                        f"no reply from {self.where} within {self._waited(started)}"
                    ) from None
                except OSError as exc:
                    raise classify_os_error(exc, f"talking to {self.where}") from None
            except Hs100Error as exc:
                self.close()
                if (not exc.retryable or attempt >= self.retries
                        or not self._may_retry(time.monotonic() - started)
                        or (sending and not repeatable)):
                    raise
            finally:
                if self.budget is not None:
                    self.budget.charge(time.monotonic() - started)
        raise AssertionError("unreachable")  # pragma: no cover

    def query(self, request: Request) -> Reply:
        return loads(self.query_bytes(dumps(request), repeatable=is_read_only(request)))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
