"""The asyncio HTTP/1.1 server under the dashboard: bounded reads, timeouts, no surprises.

The protocol rules live in :mod:`hs100local.web.http`; this module only moves
bytes, and bounds every resource a client can make it spend: bytes buffered
(``max_head``, ``max_body``), time (a head must complete within
``head_timeout`` of its first byte, a body within ``body_timeout``, a keep-alive
connection may sit idle ``idle_timeout``, a client that does not read what we
write is dropped after ``idle_timeout``), handler time (``handler_timeout``) and
connections (``max_connections``, above which a client gets an immediate 503).

Reactions are fixed: a head over ``max_head`` gets 431, a declared body over
``max_body`` 413 (unread), an incomplete head or body 408, a request the parser
refuses its :class:`~hs100local.web.http.HttpError` status; each of these closes
the connection. A handler that raises gets 500 (logged once, never shown to the
client), one that takes too long 503; the connection goes on. An idle
connection, a client that hangs up and a client that does not read are closed
without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hs100local.web.http import (
    HttpError,
    Request,
    Response,
    encode_response,
    find_head_end,
    leading_empty_lines,
    parse_head,
)

__all__ = ["Handler", "HttpServer", "HttpStats"]

log = logging.getLogger("hs100local.web")

Handler = Callable[[Request], Awaitable[Response]]

#: bytes asked of the socket per read
READ_SIZE = 65536
#: after an error response, how long (at most) and how much we read and discard
#: before closing: closing a socket with unread input makes the kernel send RST,
#: which can destroy the response before the client has read it
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
#: how long :meth:`HttpServer.close` lets cancelled handlers unwind (release a plug, a file)
HANDLER_GRACE = 1.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class HttpStats:
    """Counters for /metrics. ``requests`` counts every response sent (refusals by the
    parser and by the connection cap included), ``errors_4xx``/``errors_5xx`` those of
    each class, so ``requests - errors_4xx - errors_5xx`` are the successes (and
    redirects); ``connections`` the connections served, ``rejected`` those turned away
    over ``max_connections``."""

    requests: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    connections: int = 0
    rejected: int = 0

    def count(self, status: int) -> None:
        self.requests += 1
        if 400 <= status < 500:
            self.errors_4xx += 1
        elif status >= 500:
            self.errors_5xx += 1


class _Hangup(Exception):
    """End the connection, answering ``response`` first if there is one."""

    def __init__(self, response: Response | None = None) -> None:
        super().__init__(response.status if response else None)
        self.response = response


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    client: tuple[str, int]
    buffer: bytearray = field(default_factory=bytearray)
    served: int = 0


class HttpServer:
    """HTTP/1.1 on the TCP ``listen`` addresses, each request answered by ``handler``."""

    def __init__(
        self,
        listen: Sequence[tuple[str, int]],
        handler: Handler,
        *,
        max_head: int = 16384,
        max_body: int = 65536,
        head_timeout: float = 10.0,
        body_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        handler_timeout: float = 30.0,
        max_connections: int = 64,
        max_requests_per_connection: int = 1000,
    ) -> None:
        self.listen = list(listen)
        self.handler = handler
        self.max_head = max_head
        self.max_body = max_body
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self.handler_timeout = handler_timeout
        self.max_connections = max_connections
        self.max_requests_per_connection = max_requests_per_connection
        self.stats = HttpStats()
        self.bound: list[tuple[str, int]] = []
        self._servers: list[asyncio.Server] = []
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._handlers: set[asyncio.Future[Response]] = set()
        self._closing = False

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        return len(self._connections)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> HttpServer:
        """Bind every listen address (port 0: an ephemeral one, see ``bound``)."""
        try:
            for host, port in self.listen:
                server = await asyncio.start_server(self._accept, host, port,
                                                    reuse_address=True)
                self._servers.append(server)
                self.bound.append((host, server.sockets[0].getsockname()[1]))
        except OSError:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Stop accepting, end every open connection and wait for their tasks.

        Connections are cancelled before ``wait_closed``: from Python 3.12 it
        waits for every connection to end, and an idle keep-alive one would
        otherwise hold it for ``idle_timeout``. The ``_closing`` flag backs up the
        cancellation: before 3.12 ``wait_for`` swallows a cancel that arrives as
        the awaited read or drain completes, and the connection would go on to
        wait ``idle_timeout`` for its next request."""
        self._closing = True
        for server in self._servers:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._handlers:  # cancelled with their connections
            await asyncio.wait(set(self._handlers), timeout=HANDLER_GRACE)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    # ----------------------------------------------------------- connections

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A plain callback, not a coroutine: the connection is registered before any
        await, so :meth:`close` knows every task, even one that has not started."""
        if self._closing:  # accepted by the kernel just before close(): not served
            writer.transport.abort()
            return
        if len(self._connections) >= self.max_connections:
            self._reject(writer)
            return
        self.stats.connections += 1
        peer = writer.get_extra_info("peername") or ("", 0)
        connection = _Connection(reader, writer, (str(peer[0]), int(peer[1])))
        task = asyncio.get_running_loop().create_task(self._serve(connection))
        self._connections[task] = writer
        task.add_done_callback(self._forget)

    def _reject(self, writer: asyncio.StreamWriter) -> None:
        """503 without reading: over the cap we spend nothing more on a client (a request
        it sent already may turn our close into a reset, the price of not reading)."""
        self.stats.rejected += 1
        self.stats.count(503)
        response = Response.error(503, "too many connections")
        response.headers.append(("Retry-After", "1"))
        writer.write(encode_response(response, keep_alive=False))
        writer.close()

    def _forget(self, task: asyncio.Task[None]) -> None:
        """Drop a finished connection; abort its transport if the task never ran (cancelled
        by :meth:`close` before its first step, so its ``finally`` did not either)."""
        writer = self._connections.pop(task)
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover - a bug
            log.error("HTTP connection task failed: %r", task.exception())
        if not writer.is_closing():
            writer.transport.abort()

    async def _serve(self, conn: _Connection) -> None:
        try:
            await self._exchanges(conn)
        except _Hangup as hangup:
            if hangup.response is not None:
                await self._last_words(conn, hangup.response)
        except ConnectionError:
            pass  # the client reset while we wrote: nothing to tell it
        except Exception:  # pragma: no cover - a bug here must not kill the server
            log.exception("HTTP connection from %s", conn.client[0])
        finally:
            await _close(conn.writer)

    async def _exchanges(self, conn: _Connection) -> None:
        """Request after request until one side wants the connection closed."""
        while True:
            request = await self._read_request(conn)
            conn.served += 1
            self._check_open()
            keep_alive = (request.keep_alive
                          and conn.served < self.max_requests_per_connection)
            response = await self._call_handler(request)
            await self._write(conn, self._encode(response, request, keep_alive))
            if not keep_alive:
                await self._linger(conn)
                return

    # ---------------------------------------------------------------- reading

    async def _read_request(self, conn: _Connection) -> Request:
        end = await self._read_head(conn)
        try:
            request, length = parse_head(bytes(conn.buffer[:end]), client=conn.client)
        except HttpError as exc:
            raise _Hangup(Response.error(exc.status, exc.reason)) from None
        del conn.buffer[:end]
        body = await self._read_body(conn, request, length)
        return dataclasses.replace(request, body=body) if body else request

    async def _read_head(self, conn: _Connection) -> int:
        """Wait up to ``idle_timeout`` for a request to begin (silence: hang up quietly),
        then up to ``head_timeout`` for its head to end; return the head's length."""
        _drop_empty_lines(conn.buffer)
        if not conn.buffer and not await self._receive(conn, self.idle_timeout):
            raise _Hangup()
        deadline = _now() + self.head_timeout
        scanned = 0
        while True:
            if _drop_empty_lines(conn.buffer):
                scanned = 0
            end = find_head_end(conn.buffer, scanned)
            if end > self.max_head or (end < 0 and len(conn.buffer) > self.max_head):
                raise _Hangup(Response.error(431, "request header fields too large"))
            if end >= 0:
                return end
            scanned = len(conn.buffer) - 3
            if not await self._receive(conn, deadline - _now()):
                raise _Hangup(Response.error(408, "request timeout"))

    async def _read_body(self, conn: _Connection, request: Request, length: int) -> bytes:
        """The body, refused unread (413) when over ``max_body``."""
        if length > self.max_body:
            raise _Hangup(Response.error(413, "content too large"))
        await self._expect(conn, request, length)
        deadline = _now() + self.body_timeout
        while len(conn.buffer) < length:
            if not await self._receive(conn, deadline - _now()):
                raise _Hangup(Response.error(408, "request timeout"))
        body = bytes(conn.buffer[:length])
        del conn.buffer[:length]
        return body

    async def _expect(self, conn: _Connection, request: Request, length: int) -> None:
        """``Expect: 100-continue`` (curl sends it for bodies over 1 KiB, then waits a
        second): say so before the body instead of making the client guess. Any other
        expectation is 417; HTTP/1.0 clients' are ignored (RFC 9110 10.1.1)."""
        expect = request.header("expect")
        if expect is None or request.version != "HTTP/1.1":
            return
        if expect.lower() != "100-continue":
            raise _Hangup(Response.error(417, "expectation failed"))
        if len(conn.buffer) < length:
            await self._write(conn, _CONTINUE)

    async def _receive(self, conn: _Connection, timeout: float) -> bool:
        """Append what the client sends within ``timeout``; False if it sent nothing in
        time. A client that hangs up ends the connection without an answer."""
        self._check_open()
        if timeout <= 0:
            return False
        try:
            chunk = await asyncio.wait_for(conn.reader.read(READ_SIZE), timeout)
        except asyncio.TimeoutError:
            return False
        if not chunk:
            raise _Hangup()
        conn.buffer += chunk
        return True

    # ---------------------------------------------------------------- handling

    async def _call_handler(self, request: Request) -> Response:
        """The handler's response, 503 past ``handler_timeout``, 500 if it raises.

        It runs as its own task rather than under ``wait_for`` so that a
        ``TimeoutError`` the handler raises itself is its failure (500), not ours
        (503), and so that a handler which swallows cancellation cannot hold the
        connection."""
        task = asyncio.ensure_future(self.handler(request))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.handler_timeout)
        finally:
            if not task.done():
                task.cancel()
                task.add_done_callback(_consume)
        if not done:
            log.warning("handler timed out on %s %r", request.method, request.path)
            return Response.error(503, "service unavailable")
        try:
            response = task.result()
        except Exception:
            log.exception("handler failed on %s %r", request.method, request.path)
            return Response.error(500, "internal error")
        if not isinstance(response, Response):
            log.error("handler returned %r on %s %r, not a Response", type(response).__name__,
                      request.method, request.path)
            return Response.error(500, "internal error")
        return response

    def _encode(self, response: Response, request: Request, keep_alive: bool) -> bytes:
        """The response's bytes, counted; a response that cannot be encoded (a header
        with CR/LF...) is the handler's bug: 500, logged."""
        head_only = request.method == "HEAD"
        try:
            data = encode_response(response, keep_alive=keep_alive, head_only=head_only)
        except ValueError:
            log.exception("unsendable response to %s %r", request.method, request.path)
            response = Response.error(500, "internal error")
            data = encode_response(response, keep_alive=keep_alive, head_only=head_only)
        self.stats.count(response.status)
        return data

    def _check_open(self) -> None:
        """End the connection (quietly) once :meth:`close` has begun."""
        if self._closing:
            raise _Hangup()

    # ---------------------------------------------------------------- writing

    async def _write(self, conn: _Connection, data: bytes) -> None:
        """Send ``data``; a client that does not take it within ``idle_timeout`` is
        dropped (its unsent bytes would otherwise stay buffered here)."""
        self._check_open()
        conn.writer.write(data)
        try:
            await asyncio.wait_for(conn.writer.drain(), self.idle_timeout)
        except asyncio.TimeoutError:
            conn.writer.transport.abort()
            raise _Hangup() from None

    async def _last_words(self, conn: _Connection, response: Response) -> None:
        """Answer an error with ``Connection: close``, then linger before the close (a
        client gone meanwhile changes nothing: we were closing anyway)."""
        self.stats.count(response.status)
        with contextlib.suppress(ConnectionError, _Hangup):
            await self._write(conn, encode_response(response, keep_alive=False))
            await self._linger(conn)

    async def _linger(self, conn: _Connection) -> None:
        """Half-close, then read and discard what the client still sends (bounded in
        time and bytes) until it closes: see :data:`LINGER_SECONDS`."""
        if conn.writer.can_write_eof():
            conn.writer.write_eof()
        deadline = _now() + min(LINGER_SECONDS, self.idle_timeout)
        discarded = 0
        while discarded < LINGER_BYTES and not self._closing:
            remaining = deadline - _now()
            if remaining <= 0:
                return
            try:
                chunk = await asyncio.wait_for(conn.reader.read(READ_SIZE), remaining)
            except asyncio.TimeoutError:
                return
            if not chunk:
                return
            discarded += len(chunk)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _drop_empty_lines(buffer: bytearray) -> int:
    """Remove the empty lines a client may send between requests; how many bytes."""
    skip = leading_empty_lines(buffer)
    if skip:
        del buffer[:skip]
    return skip


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve a cancelled handler's outcome, so that asyncio does not report
    "Task exception was never retrieved" for an answer no one waits for."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("handler failed after its timeout: %r", task.exception())


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close the connection and wait until it is (no ResourceWarning, no late
    callbacks after the loop stops). Data a client did not read is not worth
    waiting for: abort."""
    if writer.transport.get_write_buffer_size():
        writer.transport.abort()
    else:
        writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
