"""Emulated plugs on their own loopback addresses (127.0.0.2, .3, …), each recorded in
one inventory as discovery would record it, so events from an address are that plug's.

Shared by the audit and dashboard tests; multi-host tests use network namespaces
(``netlab``/``plug_lab``) instead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hs100local.device import Plug
from hs100local.emulator import MODELS, EmulatedPlug
from hs100local.emulator.server import EmulatorThread
from hs100local.inventory import Inventory
from hs100local.results import DiscoveredPlug
from hs100local.timezones import host_index


class LoopbackPlugs:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.plugs: dict[str, EmulatorThread] = {}
        self.macs: dict[str, str] = {}
        self.hosts: dict[str, str] = {}

    def add(self, alias: str, model: str = "hs110", **plug_kw: Any) -> EmulatorThread:
        """Start a plug and record it (discovery's record, from its own sysinfo)."""
        n = len(self.macs) + 2
        mac, host = f"50:C7:BF:00:00:{n:02X}", f"127.0.0.{n}"
        plug_kw.setdefault("tz_index", host_index())  # the time keeper's zone: nothing to fix
        plug = EmulatedPlug(MODELS[model], alias=alias, mac=mac, **plug_kw)
        emu = EmulatorThread(plug, host=host, port=0, reboot_downtime=0.05).__enter__()
        self.plugs[alias], self.macs[alias], self.hosts[alias] = emu, mac, host
        self.record(alias)
        return emu

    def record(self, alias: str) -> DiscoveredPlug:
        host, port = self.hosts[alias], self.plugs[alias].port

        async def ask() -> Any:
            async with Plug(host, port, timeout=2) as plug:
                return await plug.sysinfo()

        found = DiscoveredPlug.from_sysinfo(host, port, asyncio.run(ask()))
        with Inventory(self.db) as inventory:
            inventory.record([found])
        return found

    def stop(self, alias: str) -> None:
        self.plugs.pop(alias).__exit__(None, None, None)

    def close(self) -> None:
        for alias in list(self.plugs):
            self.stop(alias)
