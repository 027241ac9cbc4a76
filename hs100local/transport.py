"""Asyncio transport: one persistent TCP connection per plug, plus UDP queries.

Policy (same as :mod:`hs100local.blocking`):

* separate connect and I/O timeouts; ``TCP_NODELAY`` because each request is one
  small write that should leave at once;
* retries only on timeouts and lost connections (a plug closes idle connections,
  so the first query on a stale one fails with EOF and must be re-sent on a fresh
  connection); never on refused or unreachable, which cannot get better;
* reads are bounded: the length prefix is checked against the 64 KiB cap before
  anything is read, and the whole exchange runs under the I/O timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from hs100local.errors import (
    ConnectionLostError,
    Hs100Error,
    PlugTimeoutError,
    ProtocolError,
    classify_os_error,
)
from hs100local.hostport import DEFAULT_PORT, DEFAULT_TIMEOUT, Endpoint
from hs100local.protocol import (
    HEADER_SIZE,
    Reply,
    Request,
    decode_udp,
    decrypt,
    dumps,
    encode_tcp,
    encode_udp,
    is_read_only,
    loads,
    parse_header,
)

__all__ = ["DEFAULT_TIMEOUT", "TcpTransport", "udp_query"]


class TcpTransport(Endpoint):
    """Send requests to one plug over a persistent TCP connection.

    Queries are serialised (one in flight per connection, as on the plug itself).
    Use as ``async with TcpTransport(host) as t: await t.query({...})``.
    """

    def __init__(self, host: str, port: int = DEFAULT_PORT, **settings: Any) -> None:
        super().__init__(host, port, **settings)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> TcpTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _connect(self) -> None:
        if self._writer is not None:
            return
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=self.limit + HEADER_SIZE),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise PlugTimeoutError(
                f"timed out connecting to {self.where} after {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise classify_os_error(exc, f"to {self.where}") from None
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def _exchange(self, message: bytes) -> bytes:
        assert self._reader is not None and self._writer is not None
        reader, writer = self._reader, self._writer
        writer.write(encode_tcp(message))
        await writer.drain()
        header = await reader.readexactly(HEADER_SIZE)
        length = parse_header(header, self.limit)
        return await reader.readexactly(length)

    async def query_bytes(self, message: bytes, *, repeatable: bool = True) -> bytes:
        """Send one plaintext message, return the decrypted plaintext reply.

        ``repeatable=False`` (a change): sent on a connection that has carried nothing
        yet and never re-sent once it may have reached the plug (see
        :meth:`hs100local.blocking.BlockingTransport.query_bytes`).
        """
        async with self._lock:
            if not repeatable and self._writer is not None:
                await self._drop()
            for attempt in range(self.retries + 1):
                sending = False
                try:
                    await self._connect()
                    try:
                        sending = True
                        cipher = await asyncio.wait_for(self._exchange(message), self.timeout)
                    except asyncio.TimeoutError:
                        raise PlugTimeoutError(
                            f"no reply from {self.where} within {self.timeout:g} s"
                        ) from None
                    except asyncio.IncompleteReadError as exc:
                        raise ConnectionLostError(
                            f"{self.where} closed the connection mid-reply "
                            f"({len(exc.partial)} of {exc.expected} bytes)"
                        ) from None
                    except OSError as exc:
                        raise classify_os_error(exc, f"talking to {self.where}") from None
                    return decrypt(cipher)
                except Hs100Error as exc:
                    await self._drop()
                    if not exc.retryable or attempt >= self.retries or (
                            sending and not repeatable):
                        raise
            raise AssertionError("unreachable")  # pragma: no cover

    async def query(self, request: Request) -> Reply:
        """Send a request dict, return the reply dict (no err_code checks here)."""
        return loads(await self.query_bytes(dumps(request),
                                            repeatable=is_read_only(request)))

    async def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


class _UdpCollector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.replies.put_nowait((data, addr))


async def udp_query(
    host: str,
    request: Request,
    port: int = DEFAULT_PORT,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Reply:
    """One request over UDP 9999 (no length prefix); the first JSON reply from ``host``.

    Datagrams from other addresses or that are not JSON are ignored, not fatal:
    UDP is connectionless and anyone can send us anything.
    """
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.create_datagram_endpoint(
            _UdpCollector, remote_addr=(host, port)
        )
    except OSError as exc:
        raise classify_os_error(exc, f"to udp {host}:{port}") from None
    try:
        transport.sendto(encode_udp(dumps(request)))
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PlugTimeoutError(f"no UDP reply from {host}:{port} within {timeout:g} s")
            try:
                data, _addr = await asyncio.wait_for(proto.replies.get(), remaining)
            except asyncio.TimeoutError:
                continue
            try:
                return loads(decode_udp(data))
            except ProtocolError:
                continue
    finally:
        transport.close()
