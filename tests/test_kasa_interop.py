"""python-kasa, a client no one here wrote, drives our emulator; our CLI drives the
same emulator; both must see the same plug."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import prockit
import pytest
from click.testing import CliRunner

from hs100local.cli import cli

kasa = pytest.importorskip("kasa")
from kasa import DeviceConfig, Module  # noqa: E402
from kasa.iot import IotPlug, IotStrip  # noqa: E402


def ours(emu, *args):
    result = CliRunner().invoke(cli, ["-H", f"127.0.0.1:{emu.port}", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def kasa_device(cls, emu):
    return cls("127.0.0.1", config=DeviceConfig("127.0.0.1", port_override=emu.port, timeout=5))


def test_kasa_library_plug_agrees_with_our_cli(start_emulator):
    emu = start_emulator("hs110", alias="Kettle", load_w=42.0)

    async def main():
        dev = kasa_device(IotPlug, emu)
        try:
            await dev.update()
            assert dev.alias == "Kettle" and dev.model == "HS110"
            assert dev.is_on is False
            await dev.turn_on()
            await dev.update()
            assert dev.is_on and ours(emu, "state") == {"state": "on"}

            ours(emu, "alias", "Teapot")
            ours(emu, "led", "off")
            await dev.update()
            assert dev.alias == "Teapot"
            assert dev.modules[Module.Led].led is False

            await dev.set_alias("Kettle 2")
            await dev.modules[Module.Led].set_led(True)
            await dev.update()
            assert ours(emu, "alias") == {"alias": "Kettle 2"} and ours(emu, "led") == {"led": "on"}

            energy = dev.modules[Module.Energy]
            assert energy.current_consumption == pytest.approx(42.0)
            assert ours(emu, "emeter")["power_w"] == pytest.approx(42.0)
            assert energy.voltage == pytest.approx(ours(emu, "emeter")["voltage_v"])

            await dev.turn_off()
            assert ours(emu, "state") == {"state": "off"}
        finally:
            await dev.protocol.close()

    asyncio.run(main())


def test_kasa_library_strip_outlets_agree(start_emulator):
    emu = start_emulator("kp303")

    async def main():
        dev = kasa_device(IotStrip, emu)
        try:
            await dev.update()
            assert len(dev.children) == 3
            await dev.children[1].turn_on()
            await dev.children[2].set_alias("Heater")
            await dev.update()
            theirs = [c.is_on for c in dev.children]
            mine = ours(emu, "state")["outlets"]
            assert [o["state"] == "on" for o in mine] == theirs == [False, True, False]
            assert mine[2]["alias"] == "Heater"

            ours(emu, "-c", "1", "on")
            await dev.update()
            assert [c.is_on for c in dev.children] == [True, True, False]
            assert dev.children[0].child_id == mine[0]["id"]
        finally:
            await dev.protocol.close()

    asyncio.run(main())


def test_kasa_strip_energy_per_outlet(start_emulator):
    emu = start_emulator("hs300", load_w=25.0)
    ours(emu, "-c", "2", "on")
    ours(emu, "-c", "4", "on")

    async def main():
        dev = kasa_device(IotStrip, emu)
        try:
            await dev.update()
            powers = [c.modules[Module.Energy].current_consumption for c in dev.children]
            assert powers == pytest.approx([0, 25, 0, 25, 0, 0])
            return powers
        finally:
            await dev.protocol.close()

    theirs = asyncio.run(main())
    mine = [o["power_w"] for o in ours(emu, "emeter")["outlets"]]
    assert mine == pytest.approx(theirs)


def kasa_cli() -> str:
    found = Path(sys.executable).with_name("kasa")
    return str(found) if found.exists() else (shutil.which("kasa") or "kasa")


def test_kasa_cli_and_our_cli_on_the_same_emulator(start_emulator):
    emu = start_emulator("hs105", alias="Lamp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASA_")}
    base = [kasa_cli(), "--host", "127.0.0.1", "--port", str(emu.port), "--type", "plug"]
    on = prockit.run([*base, "on"], capture_output=True, text=True, timeout=60, env=env)
    assert on.returncode == 0, on.stderr
    assert ours(emu, "state") == {"state": "on"}
    state = prockit.run([*base, "--json", "state"], capture_output=True, text=True,
                        timeout=60, env=env)
    assert state.returncode == 0, state.stderr
    sysinfo = json.loads(state.stdout)["system"]["get_sysinfo"]
    assert sysinfo == {k: v for k, v in ours(emu, "info").items() if k != "on_time"} | {
        "on_time": sysinfo["on_time"]
    }
    ours(emu, "off")
    state = prockit.run([*base, "--json", "state"], capture_output=True, text=True,
                        timeout=60, env=env)
    assert json.loads(state.stdout)["system"]["get_sysinfo"]["relay_state"] == 0
