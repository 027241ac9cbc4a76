"""Async device model: :class:`Plug` and :class:`Outlet`.

The methods are thin: each drives one operation from :mod:`hs100local.ops` over the
plug's :class:`~hs100local.transport.TcpTransport`, so the library, the services
and the blocking CLI share one implementation of every command.

>>> async with Plug("192.0.2.10") as plug:          # doctest: +SKIP
...     await plug.turn_on()
...     print((await plug.sysinfo()).alias)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from hs100local import ops
from hs100local.hostport import DEFAULT_PORT
from hs100local.protocol import Reply, Request
from hs100local.results import (
    AccessPoint,
    CloudInfo,
    EmeterReading,
    EnergyEntry,
    OutletInfo,
    PlugTime,
    SysInfo,
    TimeSync,
)
from hs100local.timezones import host_now
from hs100local.transport import TcpTransport

T = TypeVar("T")


__all__ = ["Outlet", "Plug", "host_now"]  # host_now: kept here for older imports


class Plug:
    """A legacy (port 9999) TP-Link plug, switch or power strip."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        transport: TcpTransport | None = None,
        **settings: Any,
    ) -> None:
        """``settings``: ``timeout``, ``connect_timeout``, ``retries``, ``limit`` (see
        :class:`~hs100local.hostport.Endpoint`), or pass a ready ``transport``."""
        self.transport = transport or TcpTransport(host, port, **settings)

    def __repr__(self) -> str:
        return f"Plug({self.transport.where!r})"

    async def __aenter__(self) -> Plug:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    async def run(self, op: ops.Op[T]) -> T:
        """Drive any operation from :mod:`hs100local.ops` on this plug."""
        return await ops.run_async(op, self.transport.query)

    async def query(self, request: Request) -> Reply:
        """Send a raw request dict; the reply is returned unchecked."""
        return await self.transport.query(request)

    # --- state
    async def sysinfo(self) -> SysInfo:
        return await self.run(ops.sysinfo())

    async def is_on(self) -> bool:
        """True if the relay (or, on a strip, any outlet) is on."""
        return any(on for _alias, on in await self.run(ops.relay_states()))

    async def turn_on(self) -> None:
        await self.run(ops.set_relay(True))

    async def turn_off(self) -> None:
        await self.run(ops.set_relay(False))

    async def toggle(self) -> bool:
        return await self.run(ops.toggle())

    async def set_led(self, on: bool) -> None:
        await self.run(ops.set_led(on))

    async def set_alias(self, alias: str) -> None:
        await self.run(ops.set_alias(alias))

    async def reboot(self, delay: int = 1) -> None:
        await self.run(ops.reboot(delay))

    async def factory_reset(self, delay: int = 1) -> None:
        await self.run(ops.factory_reset(delay))

    # --- time
    async def time(self) -> PlugTime:
        return await self.run(ops.get_time())

    async def sync_time(
        self, tz_index: int | None = None, now: Callable[[int], datetime] = host_now
    ) -> TimeSync:
        """Set the clock to this host's time; ``tz_index`` defaults to the host's zone."""
        if tz_index is None:
            from hs100local.timezones import host_index

            tz_index = host_index()
        return await self.run(ops.sync_time(tz_index, now))

    # --- energy meter
    async def emeter_realtime(self) -> EmeterReading:
        return await self.run(ops.emeter_realtime())

    async def emeter_daystat(self, year: int, month: int) -> list[EnergyEntry]:
        return await self.run(ops.emeter_daystat(year, month))

    async def emeter_monthstat(self, year: int) -> list[EnergyEntry]:
        return await self.run(ops.emeter_monthstat(year))

    # --- cloud, Wi-Fi, rules
    async def cloud_info(self) -> CloudInfo:
        return await self.run(ops.cloud_info())

    async def cloud_unbind(self) -> None:
        await self.run(ops.cloud_unbind())

    async def cloud_set_server(self, server: str) -> None:
        await self.run(ops.cloud_set_server(server))

    async def wifi_scan(self, refresh: bool = True) -> list[AccessPoint]:
        return await self.run(ops.wifi_scan(refresh))

    async def wifi_join(self, ssid: str, password: str, key_type: int = 3) -> None:
        await self.run(ops.wifi_join(ssid, password, key_type))

    async def schedule_rules(self) -> list[dict[str, Any]]:
        return await self.run(ops.schedule_rules())

    async def countdown_rules(self) -> list[dict[str, Any]]:
        return await self.run(ops.countdown_rules())

    # --- strips
    async def outlets(self) -> list[Outlet]:
        """All outlets of a strip (empty for a single plug), in slot order."""
        info = await self.sysinfo()
        return [Outlet(self, o.id) for o in info.children]

    def outlet(self, selector: str | int) -> Outlet:
        """One outlet by 1-based index, id or alias; resolved on each call."""
        return Outlet(self, str(selector))


class Outlet:
    """One outlet of a power strip, addressed with ``context.child_ids``."""

    def __init__(self, plug: Plug, selector: str) -> None:
        self.plug = plug
        self.selector = selector

    def __repr__(self) -> str:
        return f"Outlet({self.plug!r}, {self.selector!r})"

    async def info(self) -> OutletInfo:
        return await self.plug.run(ops.resolve_outlet(self.selector))

    async def is_on(self) -> bool:
        return (await self.info()).is_on

    async def turn_on(self) -> None:
        await self.plug.run(ops.set_relay(True, self.selector))

    async def turn_off(self) -> None:
        await self.plug.run(ops.set_relay(False, self.selector))

    async def toggle(self) -> bool:
        return await self.plug.run(ops.toggle(self.selector))

    async def set_alias(self, alias: str) -> None:
        await self.plug.run(ops.set_alias(alias, self.selector))

    async def emeter_realtime(self) -> EmeterReading:
        return await self.plug.run(ops.emeter_realtime(self.selector))
