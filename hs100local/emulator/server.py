"""Asyncio TCP + UDP server around an :class:`EmulatedPlug`.

Bad input never stops the server: a length over the cap or a message that does
not decrypt to a JSON object closes that one connection (logged); a bad UDP
datagram is dropped; an internal error while answering closes the connection
and is logged with its traceback. Idle connections are closed after
``idle_timeout`` and at most ``max_connections`` are served at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from typing import Any

from hs100local.emulator.plug import EmulatedPlug
from hs100local.errors import ProtocolError
from hs100local.protocol import (
    MAX_MESSAGE,
    FrameDecoder,
    decode_udp,
    dumps,
    encode_tcp,
    encode_udp,
    loads,
)

log = logging.getLogger("hs100local.emulator")


class _TcpSession(asyncio.Protocol):
    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(MAX_MESSAGE)
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        if len(self.server.sessions) >= self.server.max_connections:
            log.warning("refusing %s: %d connections open", self.peer, len(self.server.sessions))
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sessions.add(self)
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.server.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        log.debug("closing idle connection from %s", self.peer)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.server.offline:
            self.close()
            return
        self._arm_idle()
        try:
            self.decoder.feed(data)
            while (message := self.decoder.next_message()) is not None:
                reply = self.server.answer(message)
                assert self.transport is not None
                self.transport.write(encode_tcp(reply))
        except ProtocolError as exc:
            log.info("closing connection from %s: %s", self.peer, exc)
            self.close()
        except Exception:
            log.exception("internal error answering %s; connection closed", self.peer)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.server.sessions.discard(self)


class _UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.server.offline or len(data) > MAX_MESSAGE:
            return
        try:
            reply = self.server.answer(decode_udp(data))
        except ProtocolError as exc:
            log.debug("dropping datagram from %s: %s", addr, exc)
            return
        except Exception:
            log.exception("internal error answering datagram from %s; dropped", addr)
            return
        assert self.transport is not None
        self.transport.sendto(encode_udp(reply), addr)


class EmulatorServer:
    """Serve one emulated plug on TCP and UDP ``host:port`` (``port=0`` picks one)."""

    def __init__(
        self,
        plug: EmulatedPlug,
        host: str = "127.0.0.1",
        port: int = 9999,
        *,
        udp: bool = True,
        idle_timeout: float = 60.0,
        max_connections: int = 64,
        reboot_downtime: float = 1.0,
    ) -> None:
        self.plug = plug
        self.host = host
        self.port = port
        self.udp = udp
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.reboot_downtime = reboot_downtime
        self.sessions: set[_TcpSession] = set()
        self.offline = False
        self.requests = 0
        #: set when a reboot takes the plug off the network / brings it back
        self.went_down = asyncio.Event()
        self.came_up = asyncio.Event()
        self._tcp: asyncio.base_events.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        plug.on_reboot = self._schedule_reboot

    def answer(self, message: bytes) -> bytes:
        """Decoded request bytes in, reply bytes out (raises ProtocolError for non-JSON)."""
        self.requests += 1
        return dumps(self.plug.handle(loads(message)))

    async def start(self) -> EmulatorServer:
        loop = asyncio.get_running_loop()
        for _attempt in range(20):
            tcp = await loop.create_server(
                lambda: _TcpSession(self), self.host, self.port, reuse_address=True
            )
            port = tcp.sockets[0].getsockname()[1]
            if not self.udp:
                break
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpEndpoint(self), local_addr=(self.host, port)
                )
            except OSError:
                tcp.close()
                await tcp.wait_closed()
                if self.port:
                    raise
                continue  # ephemeral TCP port taken on UDP: try another
            self._udp = udp  # type: ignore[assignment]
            break
        else:  # pragma: no cover
            raise OSError("could not find a port free for both TCP and UDP")
        self._tcp = tcp
        self.port = port
        log.info("emulating %s on %s:%d", self.plug.spec.model, self.host, port)
        return self

    async def __aenter__(self) -> EmulatorServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def drop_connections(self) -> None:
        for session in list(self.sessions):
            session.close()

    def power_cycle(self) -> None:
        """Cut the power and restore it at once: open connections die with the plug,
        and it comes back with its clock at 2000-01-01 (:meth:`EmulatedPlug.power_cycle`).
        Call on the server's loop (``EmulatorThread.power_cycle`` does)."""
        self.drop_connections()
        self.plug.power_cycle()

    def _schedule_reboot(self, delay: float) -> None:
        """Like the firmware: answer, then after ``delay`` go away and come back."""
        loop = asyncio.get_running_loop()

        def go_down() -> None:
            self.offline = True
            self.came_up.clear()
            self.went_down.set()
            self.drop_connections()
            loop.call_later(self.reboot_downtime, come_up)

        def come_up() -> None:
            self.offline = False
            self.went_down.clear()
            self.plug.rebooted()
            self.came_up.set()

        loop.call_later(max(delay, 0.05), go_down)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self.drop_connections()
            await self._tcp.wait_closed()
            self._tcp = None

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()


class EmulatorThread:
    """Run an emulator on its own event loop in a background thread.

    For synchronous callers: tests, the benchmarks and ``hs100local demo``.
    """

    def __init__(self, plug: EmulatedPlug | Any, host: str = "127.0.0.1", port: int = 0,
                 **kw: Any):
        # A ready server (e.g. a KlapServer) may be passed in place of a plug.
        self.server = plug if hasattr(plug, "start") else EmulatorServer(plug, host, port, **kw)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def plug(self) -> EmulatedPlug:
        """The emulated plug's state; change it through :meth:`call` (not thread-safe)."""
        return self.server.plug

    def power_cycle(self) -> None:
        """Cut the plug's power and restore it (see :meth:`EmulatorServer.power_cycle`)."""
        self.call(self.server.power_cycle)

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the emulator's loop (its state is not thread-safe)."""

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)
