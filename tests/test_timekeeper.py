"""The time keeper against real emulated plugs on loopback, recorded in a real inventory."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from datetime import datetime, timedelta, timezone

import pytest

from hs100local.emulator import MODELS, EmulatedPlug
from hs100local.emulator.server import EmulatorThread
from hs100local.events import EventStore
from hs100local.inventory import Inventory
from hs100local.results import DiscoveredPlug, SysInfo
from hs100local.timekeeper import STATUSES, TimeCheck, TimeKeeper
from hs100local.transport import TcpTransport

UTC_INDEX = 38  # the firmware's UTC slot: plug wall time = UTC


@pytest.fixture
def inventory(tmp_path):
    with Inventory(tmp_path / "inventory.db") as inv:
        yield inv


def sysinfo_of(plug: EmulatedPlug) -> SysInfo:
    return SysInfo.from_dict(plug.get_sysinfo({}))


def remember(inventory: Inventory, emu: EmulatorThread, **changes) -> DiscoveredPlug:
    """Record a running emulator in the inventory as discovery would."""
    info = SysInfo.from_dict(emu.call(emu.plug.get_sysinfo, {}))
    found = DiscoveredPlug.from_sysinfo("127.0.0.1", emu.port, info)
    if changes:
        from dataclasses import replace

        found = replace(found, **changes)
    inventory.record([found])
    return found


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(keeper: TimeKeeper) -> dict[str, TimeCheck]:
    checks = asyncio.run(keeper.run_once())
    assert len({c.mac for c in checks}) == len(checks)
    return {c.mac: c for c in checks}


def plug_offset(emu: EmulatorThread) -> float:
    """The emulator's wall clock minus the host's, read from its state (UTC zone)."""
    now = emu.call(emu.plug.plug_now)
    return (now - datetime.now(timezone.utc)).total_seconds()


def set_calls(emu: EmulatorThread) -> dict:
    calls = emu.call(lambda: dict(emu.plug.calls))
    return {k: n for k, n in calls.items() if k[1].startswith("set_")}


def switch_on_long_ago(emu: EmulatorThread, seconds: float = 300.0) -> None:
    """Relay (all outlets of a strip) on since ``seconds``: on_time is well above 0."""

    def work() -> None:
        plug = emu.plug
        for relay in (plug.relay, *plug.outlets):
            relay.switch(True, plug.clock() - seconds)

    emu.call(work)


async def query(emu: EmulatorThread, request: dict) -> dict:
    async with TcpTransport("127.0.0.1", emu.port, timeout=2) as plug:
        return await plug.query(request)


COUNTDOWN = {"count_down": {"add_rule": {"enable": 1, "delay": 60, "act": 1, "name": "off"}}}


# ------------------------------------------------------------------ passes


def test_clock_within_threshold_is_ok_in_one_round_trip_and_nothing_is_set(
    start_emulator, inventory
):
    emu = start_emulator("hs105", tz_index=UTC_INDEX)
    found = remember(inventory, emu)
    before = emu.server.requests
    check = run(TimeKeeper(inventory, default_zone=UTC_INDEX))[found.mac]
    assert check.status == "ok" and check.reasons == ()
    assert abs(check.offset_before_s) <= 1.0
    assert check.offset_after_s is None and check.method is None
    assert check.tz_index == UTC_INDEX == check.tz_wanted
    assert emu.server.requests - before == 1  # sysinfo + clock + zone merged
    assert set_calls(emu) == {}


def test_power_cycled_plug_is_found_and_fixed_on_the_next_pass(start_emulator, inventory):
    emu = start_emulator("hs105", tz_index=UTC_INDEX)
    found = remember(inventory, emu)
    switch_on_long_ago(emu)
    keeper = TimeKeeper(inventory, default_zone=UTC_INDEX)
    assert run(keeper)[found.mac].status == "ok"

    emu.power_cycle()
    assert emu.call(emu.plug.plug_now).year == 2000
    check = run(keeper)[found.mac]

    assert check.status == "fixed", check
    assert set(check.reasons) == {"clock_lost", "reboot", "offset"}
    assert check.method == "set_timezone" and check.tz_index == UTC_INDEX
    assert check.offset_before_s < -20 * 365 * 86400
    assert abs(check.offset_after_s) <= 2.0
    assert abs(plug_offset(emu)) <= 2.0  # the plug itself, not just the keeper, says so
    # and the next pass finds nothing to do
    assert run(keeper)[found.mac].status == "ok"


def test_countdown_refused_with_minus_11_works_after_the_keeper_fixed_the_clock(
    start_emulator, inventory
):
    emu = start_emulator("hs105", tz_index=UTC_INDEX)
    found = remember(inventory, emu)
    emu.power_cycle()
    refused = asyncio.run(query(emu, COUNTDOWN))["count_down"]["add_rule"]
    assert refused == {"err_code": -11, "err_msg": "time not sync"}

    assert run(TimeKeeper(inventory, default_zone=UTC_INDEX))[found.mac].status == "fixed"
    added = asyncio.run(query(emu, COUNTDOWN))["count_down"]["add_rule"]
    assert added["err_code"] == 0 and added["id"]


def test_set_timezone_refused_falls_back_to_set_time_in_the_plug_zone(
    start_emulator, inventory
):
    emu = start_emulator("hs105", tz_index=UTC_INDEX, clock_start=datetime(2000, 1, 1))
    emu.call(emu.plug.refused.add, ("time", "set_timezone"))
    found = remember(inventory, emu)
    keeper = TimeKeeper(inventory, default_zone=41)  # wants Berlin; the plug keeps UTC

    check = run(keeper)[found.mac]
    assert check.status == "fixed", check
    assert set(check.reasons) == {"clock_lost", "offset", "zone"}
    assert check.method == "set_time"
    assert (check.tz_index, check.tz_wanted) == (UTC_INDEX, 41)
    assert "set_timezone" in check.error and "member not support" in check.error
    assert abs(check.offset_after_s) <= 2.0 and abs(plug_offset(emu)) <= 2.0
    assert set_calls(emu) == {("time", "set_timezone"): 1, ("time", "set_time"): 1}

    # The zone it would not change is not "fixed" again every pass.
    again = run(keeper)[found.mac]
    assert again.status == "ok" and "set_timezone" in again.error
    assert set_calls(emu) == {("time", "set_timezone"): 1, ("time", "set_time"): 1}


def test_plug_refusing_both_methods_is_backed_off_then_retried(start_emulator, inventory):
    # hs110 is catalogued with firmware that answers set_time with -3.
    emu = start_emulator("hs110", tz_index=UTC_INDEX, clock_start=datetime(2000, 1, 1))
    assert emu.plug.spec.set_time_refused
    emu.call(emu.plug.refused.add, ("time", "set_timezone"))
    found = remember(inventory, emu)
    shift = [0.0]
    keeper = TimeKeeper(inventory, default_zone=UTC_INDEX, refused_backoff=600,
                        now=lambda: time.time() + shift[0])

    check = run(keeper)[found.mac]
    assert check.status == "refused" and "clock_lost" in check.reasons
    assert "-2" in check.error and "-3" in check.error  # both refusals are told
    assert check.offset_after_s is None

    before = emu.server.requests
    shift[0] = 599.0
    skipped = run(keeper)[found.mac]
    assert skipped.status == "backoff" and "next try in" in skipped.error
    assert emu.server.requests == before  # not even asked

    shift[0] = 601.0
    assert run(keeper)[found.mac].status == "refused"  # asked again, still refuses
    assert emu.server.requests > before
    shift[0] = 1000.0
    assert run(keeper)[found.mac].status == "backoff"  # a new backoff from the retry

    emu.call(emu.plug.refused.clear)
    shift[0] = 1202.0
    fixed = run(keeper)[found.mac]
    assert fixed.status == "fixed" and fixed.method == "set_timezone"
    # The plug now runs on the keeper's clock, which is 1202 s ahead of the host's.
    assert abs(plug_offset(emu) - 1202.0) <= 2.0


def test_plug_that_accepts_a_time_but_keeps_its_clock_counts_as_refused(
    start_emulator, inventory
):
    emu = start_emulator("hs105", tz_index=UTC_INDEX, clock_start=datetime(2000, 1, 1))

    def deaf() -> None:  # answers 0 and changes nothing
        emu.plug.set_timezone = lambda params: {}

    emu.call(deaf)
    found = remember(inventory, emu)
    keeper = TimeKeeper(inventory, default_zone=UTC_INDEX)
    check = run(keeper)[found.mac]
    assert check.status == "refused" and check.method == "set_timezone"
    assert "2000-01-01" in check.error and check.offset_after_s < -1e8
    assert run(keeper)[found.mac].status == "backoff"


def test_unreachable_plug_is_reported_while_the_others_are_fixed(start_emulator, inventory):
    emus = [start_emulator(model, tz_index=UTC_INDEX, clock_start=datetime(2000, 1, 1),
                           alias=f"plug {i}")
            for i, model in enumerate(("hs105", "hs300", "hs110v2"))]
    macs = [remember(inventory, emu).mac for emu in emus]
    ghost_plug = EmulatedPlug(MODELS["hs100"], alias="ghost")
    ghost = DiscoveredPlug.from_sysinfo("127.0.0.1", closed_port(), sysinfo_of(ghost_plug))
    inventory.record([ghost])

    started = time.monotonic()
    checks = run(TimeKeeper(inventory, default_zone=UTC_INDEX, timeout=2.0))
    assert time.monotonic() - started < 2.0  # a refused port costs no timeout

    assert checks[ghost.mac].status == "unreachable"
    assert "cannot connect" in checks[ghost.mac].error
    for mac, emu in zip(macs, emus, strict=True):
        assert checks[mac].status == "fixed", checks[mac]
        assert abs(plug_offset(emu)) <= 2.0


def test_silent_plug_times_out_as_unreachable(start_emulator, inventory):
    emu = start_emulator("hs105", tz_index=UTC_INDEX, clock_start=datetime(2000, 1, 1))
    ok = remember(inventory, emu)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        mute = EmulatedPlug(MODELS["hs100"], alias="mute")
        port = silent.getsockname()[1]
        mute_found = DiscoveredPlug.from_sysinfo("127.0.0.1", port, sysinfo_of(mute))
        inventory.record([mute_found])
        checks = run(TimeKeeper(inventory, default_zone=UTC_INDEX, timeout=0.2))
    assert checks[mute_found.mac].status == "unreachable"
    assert "0.2 s" in checks[mute_found.mac].error
    assert checks[ok.mac].status == "fixed"


def test_another_device_at_the_recorded_address_is_not_touched(start_emulator, inventory):
    emu = start_emulator("hs105", tz_index=UTC_INDEX, clock_start=datetime(2000, 1, 1))
    recorded = remember(inventory, emu, mac="50:C7:BF:AA:BB:CC", alias="kitchen")
    check = run(TimeKeeper(inventory, default_zone=UTC_INDEX))[recorded.mac]
    assert check.status == "unreachable" and check.reasons == ("moved",)
    assert emu.plug.mac in check.error
    assert set_calls(emu) == {}
    assert emu.call(emu.plug.plug_now).year == 2000


def test_restart_with_clock_kept_is_detected_on_a_strip_outlet(start_emulator, inventory):
    emu = start_emulator("hs300", tz_index=UTC_INDEX)
    found = remember(inventory, emu)
    switch_on_long_ago(emu)
    keeper = TimeKeeper(inventory, default_zone=UTC_INDEX)
    assert run(keeper)[found.mac].status == "ok"
    emu.call(emu.plug.rebooted)  # a soft reboot: on-times restart, the clock stays
    check = run(keeper)[found.mac]
    assert (check.status, check.reasons) == ("fixed", ("reboot",))
    assert check.method == "set_timezone"
    # The read-back is the new observation: no second "reboot" on the next pass.
    assert run(keeper)[found.mac].status == "ok"


def test_offset_only_and_zone_only(start_emulator, inventory):
    late = start_emulator("hs105", tz_index=UTC_INDEX, alias="late",
                          clock_start=datetime.now(timezone.utc) - timedelta(seconds=90))
    elsewhere = start_emulator("hs105", tz_index=6, alias="elsewhere")
    late_mac, elsewhere_mac = remember(inventory, late).mac, remember(inventory, elsewhere).mac
    checks = run(TimeKeeper(inventory, default_zone=UTC_INDEX))
    assert checks[late_mac].reasons == ("offset",)
    assert -92 <= checks[late_mac].offset_before_s <= -88
    assert checks[elsewhere_mac].reasons == ("zone",)
    assert abs(checks[elsewhere_mac].offset_before_s) <= 1.0  # right time, wrong zone
    assert checks[elsewhere_mac].tz_index == UTC_INDEX
    assert emu_zone(elsewhere) == UTC_INDEX


def emu_zone(emu: EmulatorThread) -> int:
    return emu.call(lambda: emu.plug.tz_index)


def test_zone_overrides_by_mac_and_case_insensitive_alias(start_emulator, inventory):
    kitchen = start_emulator("hs105", tz_index=UTC_INDEX, alias="Kitchen")
    garage = start_emulator("hs105", tz_index=UTC_INDEX, alias="Garage")
    other = start_emulator("hs105", tz_index=UTC_INDEX, alias="Other")
    for emu in (kitchen, garage, other):
        remember(inventory, emu)
    garage_mac = garage.plug.mac.lower().replace(":", "-")
    keeper = TimeKeeper(inventory, default_zone=UTC_INDEX,
                        zones={" KITCHEN ": 41, garage_mac: 18, "Other": 6, other.plug.mac: 39})
    run(keeper)
    assert [emu_zone(e) for e in (kitchen, garage, other)] == [41, 18, 39]  # MAC beats alias


def test_default_zone_is_this_hosts(start_emulator, inventory, monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    emu = start_emulator("hs105", tz_index=UTC_INDEX)
    found = remember(inventory, emu)
    check = run(TimeKeeper(inventory))[found.mac]
    assert check.tz_wanted == 41 and check.reasons == ("zone",) and emu_zone(emu) == 41


def test_only_controllable_xor_plugs_are_checked(start_emulator, inventory):
    emu = start_emulator("hs105", tz_index=UTC_INDEX)
    xor = remember(inventory, emu)
    klap = DiscoveredPlug.from_tdp("127.0.0.1", 20002, {
        "device_model": "HS100(UK)", "mac": "AA-BB-CC-00-11-22", "device_id": "x",
        "mgt_encrypt_schm": {"encrypt_type": "KLAP", "http_port": 80},
    })
    inventory.record([klap])
    assert set(run(TimeKeeper(inventory, default_zone=UTC_INDEX))) == {xor.mac}


def test_bad_settings_are_refused(inventory):
    for kwargs in ({"zones": {"kitchen": 110}}, {"zones": {"kitchen": True}},
                   {"default_zone": -1}, {"concurrency": 0}, {"timeout": 0},
                   {"threshold": -1}):
        with pytest.raises(ValueError):
            TimeKeeper(inventory, **kwargs)


def test_concurrency_one_still_checks_every_plug(start_emulator, inventory):
    emus = [start_emulator("hs105", tz_index=UTC_INDEX, alias=f"p{i}",
                           clock_start=datetime(2000, 1, 1)) for i in range(3)]
    for emu in emus:
        remember(inventory, emu)
    checks = run(TimeKeeper(inventory, default_zone=UTC_INDEX, concurrency=1))
    assert sorted(c.status for c in checks.values()) == ["fixed"] * 3


# ------------------------------------------------------------------ events


def test_events_are_recorded_with_what_was_done(start_emulator, inventory, tmp_path):
    fixed_emu = start_emulator("hs105", tz_index=UTC_INDEX, alias="Lamp",
                               clock_start=datetime(2000, 1, 1))
    ok_emu = start_emulator("hs105", tz_index=UTC_INDEX, alias="Fine")
    fixed = remember(inventory, fixed_emu)
    remember(inventory, ok_emu)
    ghost = DiscoveredPlug.from_sysinfo(
        "127.0.0.1", closed_port(), sysinfo_of(EmulatedPlug(MODELS["hs100"], alias="ghost"))
    )
    inventory.record([ghost])
    with EventStore(tmp_path / "inventory.db") as store:
        run(TimeKeeper(inventory, events=store, default_zone=UTC_INDEX))
        store.flush()
        events = {e.details["mac"]: e for e in store.events(kind="time")}

    assert set(events) == {fixed.mac, ghost.mac}  # a plug that was fine is no event
    done = events[fixed.mac]
    assert done.client == "127.0.0.1"
    details = done.details
    assert details["alias"] == "Lamp" and details["outcome"] == "fixed"
    assert set(details["reasons"]) == {"clock_lost", "offset"}
    assert details["offset_before_s"] < -1e8 and abs(details["offset_after_s"]) <= 2.0
    assert details["method"] == "set_timezone" and details["tz_index"] == UTC_INDEX
    lost = events[ghost.mac].details
    assert lost["outcome"] == "unreachable" and lost["alias"] == "ghost"
    assert lost["offset_before_s"] is None and lost["error"]


def test_time_check_as_dict_is_json():
    check = TimeCheck("50:C7:BF:01:02:03", "Lamp", "192.0.2.1", 9999, "fixed",
                      ("clock_lost",), -8e8, 0.31234, "set_timezone", 41, 41)
    data = json.loads(json.dumps(check.as_dict()))
    assert data["reasons"] == ["clock_lost"] and data["offset_after_s"] == 0.312
    assert data["status"] in STATUSES


# -------------------------------------------------------------- run_forever


def test_run_forever_survives_a_bad_pass_and_stops(inventory, caplog):
    keeper = TimeKeeper(inventory, default_zone=UTC_INDEX)
    passes: list[int] = []

    async def main() -> None:
        stop = asyncio.Event()

        async def flaky() -> list:
            passes.append(len(passes))
            if len(passes) == 1:
                raise RuntimeError("database on fire")
            if len(passes) == 3:
                stop.set()
            return []

        keeper.run_once = flaky  # type: ignore[method-assign]
        await asyncio.wait_for(keeper.run_forever(0.01, stop), 5)

    with caplog.at_level(logging.ERROR, "hs100local.timekeeper"):
        asyncio.run(main())
    assert passes == [0, 1, 2]
    assert "database on fire" in caplog.text


def test_run_forever_stop_cancels_a_pass_in_progress(inventory):
    keeper = TimeKeeper(inventory, default_zone=UTC_INDEX)
    cancelled = []

    async def main() -> None:
        stop = asyncio.Event()
        started = asyncio.Event()

        async def stuck() -> list:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return []

        keeper.run_once = stuck  # type: ignore[method-assign]
        task = asyncio.create_task(keeper.run_forever(3600, stop))
        await started.wait()
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert cancelled == [True]


def test_run_forever_waits_the_interval_between_passes(start_emulator, inventory):
    emu = start_emulator("hs105", tz_index=UTC_INDEX)
    remember(inventory, emu)
    keeper = TimeKeeper(inventory, default_zone=UTC_INDEX)

    real_pass = keeper.run_once
    passes = []

    async def main() -> int:
        stop = asyncio.Event()
        passed = asyncio.Event()

        async def counted() -> list:
            checks = await real_pass()
            passes.append(checks)
            passed.set()
            return checks

        keeper.run_once = counted  # type: ignore[method-assign]
        task = asyncio.create_task(keeper.run_forever(3600, stop))
        await asyncio.wait_for(passed.wait(), 5)  # the first pass runs at once
        await asyncio.sleep(0.2)  # time in which a wrong loop would run more passes
        stop.set()
        await asyncio.wait_for(task, 5)
        return emu.server.requests

    assert asyncio.run(main()) == 1  # one pass, then waiting until stopped
    assert [c.status for c in passes[0]] == ["ok"]
