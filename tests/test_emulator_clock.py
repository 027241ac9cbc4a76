"""The emulated plug's clock behaves like the firmware's: no battery, -11 until set."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from hs100local.emulator import MODELS, EmulatedPlug
from hs100local.errors import ConnectionLostError
from hs100local.transport import TcpTransport

GET_TIME = {"time": {"get_time": {}, "get_timezone": {}}}
SYSINFO = {"system": {"get_sysinfo": {}}}
RULE = {"name": "r", "enable": 1, "sact": 1, "smin": 60, "repeat": 1, "wday": [1] * 7}
TIME_NOT_SYNCED = {"err_code": -11, "err_msg": "time not sync"}


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def wall(plug: EmulatedPlug) -> tuple[datetime, int]:
    t = plug.handle(GET_TIME)["time"]
    g = t["get_time"]
    moment = datetime(g["year"], g["month"], g["mday"], g["hour"], g["min"], g["sec"])
    return moment, t["get_timezone"]["index"]


def add_rule(plug: EmulatedPlug, module: str, context: list[str] | None = None) -> dict:
    request: dict = {module: {"add_rule": dict(RULE)}}
    if context:
        request["context"] = {"child_ids": context}
    return plug.handle(request)[module]["add_rule"]


def set_timezone(plug: EmulatedPlug, index: int, when: datetime) -> dict:
    params = {"index": index, "year": when.year, "month": when.month, "mday": when.day,
              "hour": when.hour, "min": when.minute, "sec": when.second}
    return plug.handle({"time": {"set_timezone": params}})["time"]["set_timezone"]


def test_clock_start_is_local_time_in_the_plug_zone_and_runs_on():
    clock = FakeClock()
    plug = EmulatedPlug(MODELS["hs105"], clock=clock, tz_index=41,
                        clock_start=datetime(2024, 3, 1, 12, 0, 0))
    assert wall(plug) == (datetime(2024, 3, 1, 12, 0, 0), 41)
    clock.t += 65
    assert wall(plug) == (datetime(2024, 3, 1, 12, 1, 5), 41)
    # A clock from 2001 on counts as set: rules work.
    assert add_rule(plug, "schedule")["err_code"] == 0


def test_aware_clock_start_is_converted_to_the_plug_zone():
    plug = EmulatedPlug(MODELS["hs105"], clock=FakeClock(), tz_index=41,
                        clock_start=datetime(2024, 7, 1, 12, 0, tzinfo=timezone.utc))
    assert wall(plug)[0] == datetime(2024, 7, 1, 14, 0, 0)  # CEST


@pytest.mark.parametrize("start", [datetime(1999, 12, 31, 23, 59), datetime(2100, 1, 1)])
def test_clock_start_outside_the_firmware_range_is_refused(start):
    with pytest.raises(ValueError, match=r"2000\.\.2099"):
        EmulatedPlug(MODELS["hs105"], clock_start=start)


def test_without_clock_start_the_plug_is_synced_to_the_host():
    plug = EmulatedPlug(MODELS["hs105"], tz_index=38)
    moment, _ = wall(plug)
    assert abs((moment - datetime.now(timezone.utc).replace(tzinfo=None)).total_seconds()) < 2
    assert add_rule(plug, "count_down")["err_code"] == 0


@pytest.mark.parametrize("method", ["set_timezone", "set_time"])
def test_rules_answer_minus_11_until_the_clock_is_set(method):
    plug = EmulatedPlug(MODELS["hs105"], clock=FakeClock(), tz_index=38,
                        clock_start=datetime(2000, 1, 1))
    assert add_rule(plug, "schedule") == TIME_NOT_SYNCED
    assert add_rule(plug, "count_down") == TIME_NOT_SYNCED
    reply = plug.handle({"schedule": {"get_next_action": {}, "get_rules": {}}})["schedule"]
    assert reply["get_next_action"] == TIME_NOT_SYNCED  # as captured on an HS100(EU)
    assert reply["get_rules"]["err_code"] == 0  # reading rules still works
    assert add_rule(plug, "anti_theft")["err_code"] == 0
    assert plug.handle({"schedule": {"get_rules": {}}})["schedule"]["get_rules"]["rule_list"] == []

    when = datetime(2026, 5, 6, 7, 8, 9)
    if method == "set_timezone":
        assert set_timezone(plug, 38, when)["err_code"] == 0
    else:
        params = {"year": 2026, "month": 5, "mday": 6, "hour": 7, "min": 8, "sec": 9}
        assert plug.handle({"time": {"set_time": params}})["time"]["set_time"]["err_code"] == 0
    assert wall(plug) == (when, 38)
    assert add_rule(plug, "schedule")["err_code"] == 0
    assert add_rule(plug, "count_down")["err_code"] == 0


def test_a_bad_set_time_does_not_sync_the_clock():
    plug = EmulatedPlug(MODELS["hs105"], clock=FakeClock(), clock_start=datetime(2000, 1, 1))
    bad = {"year": 2026, "month": 2, "mday": 31, "hour": 0, "min": 0, "sec": 0}
    assert plug.handle({"time": {"set_time": bad}})["time"]["set_time"]["err_code"] == -3
    assert add_rule(plug, "schedule") == TIME_NOT_SYNCED


def test_power_cycle_resets_the_clock_and_keeps_relay_and_settings():
    clock = FakeClock()
    plug = EmulatedPlug(MODELS["hs105"], clock=clock, tz_index=38)
    assert set_timezone(plug, 41, datetime(2026, 1, 2, 3, 4, 5))["err_code"] == 0
    plug.handle({"system": {"set_relay_state": {"state": 1}, "set_dev_alias": {"alias": "Lamp"}}})
    rule_id = add_rule(plug, "schedule")["id"]
    clock.t += 500
    assert plug.handle(SYSINFO)["system"]["get_sysinfo"]["on_time"] == 500

    plug.power_cycle()

    assert wall(plug) == (datetime(2000, 1, 1, 0, 0, 0), 41)
    info = plug.handle(SYSINFO)["system"]["get_sysinfo"]
    assert (info["relay_state"], info["on_time"], info["alias"]) == (1, 0, "Lamp")
    rules = plug.handle({"schedule": {"get_rules": {}}})["schedule"]["get_rules"]["rule_list"]
    assert [r["id"] for r in rules] == [rule_id]
    assert add_rule(plug, "schedule") == TIME_NOT_SYNCED
    assert plug.boot_time == clock.t and plug.power_cycles == 1
    clock.t += 10
    assert wall(plug)[0] == datetime(2000, 1, 1, 0, 0, 10)
    assert plug.handle(SYSINFO)["system"]["get_sysinfo"]["on_time"] == 10
    assert set_timezone(plug, 41, datetime(2026, 1, 2, 3, 20, 0))["err_code"] == 0
    assert add_rule(plug, "schedule")["err_code"] == 0


def test_power_cycle_on_a_strip_keeps_outlets_on_and_blocks_countdowns():
    clock = FakeClock()
    plug = EmulatedPlug(MODELS["hs300"], clock=clock)
    first = plug.child_id(0)
    plug.handle({"context": {"child_ids": [first]},
                 "system": {"set_relay_state": {"state": 1}}})
    clock.t += 100
    plug.power_cycle()
    children = plug.handle(SYSINFO)["system"]["get_sysinfo"]["children"]
    assert [(c["state"], c["on_time"]) for c in children[:2]] == [(1, 0), (0, 0)]
    assert add_rule(plug, "countdown", [first]) == TIME_NOT_SYNCED


def test_set_time_refused_by_flagged_firmware_while_set_timezone_works():
    flagged = [key for key, spec in MODELS.items() if spec.set_time_refused]
    assert flagged and len(flagged) < len(MODELS)
    for key in MODELS:
        plug = EmulatedPlug(MODELS[key], clock=FakeClock(), clock_start=datetime(2000, 1, 1))
        params = {"year": 2026, "month": 5, "mday": 6, "hour": 7, "min": 8, "sec": 9}
        answer = plug.handle({"time": {"set_time": params}})["time"]["set_time"]
        if key in flagged:
            assert answer == {"err_code": -3, "err_msg": "invalid argument"}
            assert wall(plug)[0].year == 2000
            assert set_timezone(plug, 39, datetime(2026, 5, 6, 7, 8, 9))["err_code"] == 0
        else:
            assert answer["err_code"] == 0
        assert wall(plug)[0] == datetime(2026, 5, 6, 7, 8, 9)


def test_refused_hook_answers_member_not_support_and_calls_are_counted():
    plug = EmulatedPlug(MODELS["hs105"], clock=FakeClock())
    plug.refused.add(("time", "set_timezone"))
    reply = plug.handle({
        "time": {"set_timezone": {"index": 38, "year": 2026, "month": 1, "mday": 1,
                                  "hour": 0, "min": 0, "sec": 0},
                 "get_time": {}, "no_such_method": {}},
        "no_such_module": {"x": {}},
    })
    assert reply["time"]["set_timezone"] == {"err_code": -2, "err_msg": "member not support"}
    assert reply["time"]["get_time"]["err_code"] == 0
    assert plug.calls == {("time", "set_timezone"): 1, ("time", "get_time"): 1}
    plug.refused.clear()
    assert set_timezone(plug, 38, datetime(2026, 1, 1))["err_code"] == 0


def test_power_cycle_over_the_network_drops_connections(start_emulator):
    emu = start_emulator("hs105", tz_index=38)

    async def main() -> None:
        async with TcpTransport("127.0.0.1", emu.port, timeout=2, retries=0) as plug:
            before = await plug.query(GET_TIME)
            assert before["time"]["get_time"]["year"] >= 2024
            emu.power_cycle()
            with pytest.raises(ConnectionLostError):
                await plug.query(GET_TIME)
            after = (await plug.query(GET_TIME))["time"]
            assert after["get_time"]["year"] == 2000 and after["get_timezone"]["index"] == 38

    asyncio.run(main())
    assert emu.plug.power_cycles == 1
