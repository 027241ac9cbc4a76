"""The async device model and transport against the emulator on loopback."""

from __future__ import annotations

import asyncio

import pytest

from hs100local.device import Plug
from hs100local.emulator import MODELS, EmulatedPlug
from hs100local.emulator.server import EmulatorServer
from hs100local.errors import DeviceError, Hs100Error
from hs100local.transport import TcpTransport, udp_query


def test_plug_methods(emulator):
    async def main():
        async with Plug("127.0.0.1", emulator.port) as plug:
            await plug.turn_on()
            assert await plug.is_on()
            assert await plug.toggle() is False
            await plug.set_alias("Desk")
            await plug.set_led(False)
            info = await plug.sysinfo()
            assert (info.alias, info.led_on, info.relay_on) == ("Desk", False, False)
            reading = await plug.emeter_realtime()
            assert reading.power_w == 0 and reading.voltage_v == 230.0
            sync = await plug.sync_time(38)
            assert abs(sync.offset_s) <= 1.0 and (await plug.time()).tz_index == 38
            assert (await plug.cloud_info()).server == "n-devs.tplinkcloud.com"
            assert (await plug.wifi_scan())[0].ssid == "hs100local-lab"
            assert await plug.schedule_rules() == []
            assert await plug.countdown_rules() == []
            assert await plug.emeter_monthstat(2020) == []
            with pytest.raises(DeviceError):
                await plug.cloud_unbind()  # not bound: -8

    asyncio.run(main())


def test_outlets(strip):
    async def main():
        async with Plug("127.0.0.1", strip.port) as plug:
            outlets = await plug.outlets()
            assert len(outlets) == 6
            await outlets[4].turn_on()
            assert await plug.outlet(5).is_on()
            assert await plug.outlet("Plug 5").toggle() is False
            await plug.outlet(1).set_alias("Lamp")
            assert (await plug.outlet("lamp").info()).index == 1
            assert (await plug.outlet(1).emeter_realtime()).power_w == 0

    asyncio.run(main())


def test_one_connection_is_reused_and_survives_a_server_side_close(emulator):
    async def main():
        async with TcpTransport("127.0.0.1", emulator.port) as transport:
            plug = Plug("127.0.0.1", transport=transport)
            for _ in range(5):
                await plug.sysinfo()
            assert len(emulator.server.sessions) == 1
            emulator.call(emulator.server.drop_connections)  # like the plug's idle close
            assert (await plug.sysinfo()).model == "HS110(EU)"  # retried on a new connection

    asyncio.run(main())


def test_reboot_drops_connection_and_plug_comes_back():
    async def main():
        plug_state = EmulatedPlug(MODELS["hs105"])
        async with (
            EmulatorServer(plug_state, port=0, reboot_downtime=0.2) as server,
            Plug("127.0.0.1", server.port, timeout=2, retries=3) as plug,
        ):
            await plug.turn_on()
            await plug.reboot(delay=0)
            await asyncio.wait_for(server.went_down.wait(), 5)
            with pytest.raises(Hs100Error):  # down: connection dropped, new ones closed
                await Plug("127.0.0.1", server.port, timeout=1, retries=0).sysinfo()
            await asyncio.wait_for(server.came_up.wait(), 5)
            info = await plug.sysinfo()
            assert info.relay_on and plug_state.reboot_count == 1

    asyncio.run(main())


def test_udp_query_without_prefix(emulator):
    reply = asyncio.run(udp_query("127.0.0.1", {"system": {"get_sysinfo": {}}},
                                  emulator.port, timeout=2))
    assert reply["system"]["get_sysinfo"]["model"] == "HS110(EU)"
