"""Device operations, driven without any network: replies come from real-device
shaped fixtures or straight from the emulator's ``handle``."""

from __future__ import annotations

from datetime import datetime

import pytest

from hs100local import ops
from hs100local.emulator import MODELS, EmulatedPlug
from hs100local.errors import DeviceError, NotAppliedError, ProtocolError, TargetError
from hs100local.results import EmeterReading, EnergyEntry, SysInfo

# Shape of a real HS110(EU) hw 1.0 reply (python-kasa fixture), v1 energy units.
HS110_V1 = {
    "system": {
        "get_sysinfo": {
            "alias": "Kettle", "dev_name": "Wi-Fi Smart Plug With Energy Monitoring",
            "deviceId": "80061E9E5B5B4B2F1C4A5D7D6E5E6F1F2A3B4C5D", "err_code": 0,
            "feature": "TIM:ENE", "hw_ver": "1.0", "latitude": 52.5, "led_off": 1,
            "longitude": 13.4, "mac": "50:C7:BF:00:00:01", "model": "HS110(EU)",
            "on_time": 6023162, "relay_state": 1, "rssi": -71,
            "sw_ver": "1.2.5 Build 171213 Rel.101523", "type": "IOT.SMARTPLUGSWITCH",
        }
    },
    "emeter": {
        "get_realtime": {
            "current": 0.014937, "err_code": 0, "power": 0.928511, "total": 55.139,
            "voltage": 231.067823,
        }
    },
}


class Script:
    """A fake plug answering from a list of canned replies, recording requests."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.requests = []

    def __call__(self, request):
        self.requests.append(request)
        return self.replies.pop(0)


def test_sysinfo_normalises_hw1_fields():
    info = ops.run_sync(ops.sysinfo(), Script(HS110_V1))
    assert info.alias == "Kettle"
    assert info.relay_on is True
    assert info.led_on is False  # led_off = 1
    assert info.has_emeter and not info.is_strip
    assert (info.latitude, info.longitude) == (52.5, 13.4)
    assert info.device_type == "IOT.SMARTPLUGSWITCH"


def test_sysinfo_hw2_int_location_and_mic_type():
    raw = {"alias": "x", "latitude_i": 525000, "longitude_i": -1234, "mic_type": "IOT.X",
           "relay_state": 0, "feature": "TIM"}
    info = SysInfo.from_dict(raw)
    assert (info.latitude, info.longitude) == (52.5, -0.1234)
    assert info.device_type == "IOT.X" and not info.has_emeter and info.relay_on is False


def test_emeter_units_are_normalised():
    v1 = EmeterReading.from_dict(HS110_V1["emeter"]["get_realtime"])
    assert v1.power_w == pytest.approx(0.928511) and v1.total_kwh == pytest.approx(55.139)
    v2 = EmeterReading.from_dict(
        {"current_ma": 6, "power_mw": 277, "total_wh": 62, "voltage_mv": 120110}
    )
    assert (v2.current_a, v2.power_w, v2.voltage_v) == pytest.approx((0.006, 0.277, 120.11))
    assert v2.total_kwh == pytest.approx(0.062)
    assert EnergyEntry.from_dict({"year": 2024, "month": 2, "day": 3, "energy_wh": 1500}
                                 ).energy_kwh == pytest.approx(1.5)
    assert EnergyEntry.from_dict({"year": 2024, "month": 2, "energy": 0.25}).energy_kwh == 0.25


def off(reply: dict) -> dict:
    """``reply`` with the relay read back off."""
    info = dict(reply["system"]["get_sysinfo"], relay_state=0)
    return {**reply, "system": {"get_sysinfo": info}}


def test_toggle_reads_then_sets_the_opposite_and_reads_it_back():
    script = Script(HS110_V1, {"system": {"set_relay_state": {"err_code": 0}}}, off(HS110_V1))
    assert ops.run_sync(ops.toggle(), script) is False
    assert script.requests[1] == {"system": {"set_relay_state": {"state": 0}}}
    assert script.requests[2] == {"system": {"get_sysinfo": {}}}


def test_a_relay_that_does_not_switch_is_not_applied():
    """The plug answers 0 and keeps its relay: that is an error, not "Power OFF"."""
    script = Script({"system": {"set_relay_state": {"err_code": 0}}}, HS110_V1)
    with pytest.raises(NotAppliedError, match="set_relay_state but the relay is still on"):
        ops.run_sync(ops.set_relay(False), script)


def test_device_error_surfaces_with_code():
    script = Script({"system": {"set_led_off": {"err_code": -3, "err_msg": "invalid argument"}}})
    with pytest.raises(DeviceError) as exc:
        ops.run_sync(ops.set_led(True), script)
    assert exc.value.code == -3


@pytest.fixture
def strip_plug():
    return EmulatedPlug(MODELS["hs300"])


def test_outlet_selection_by_index_id_alias(strip_plug):
    info = ops.run_sync(ops.sysinfo(), strip_plug.handle)
    assert ops.find_outlet(info, "2").id == strip_plug.child_id(1)
    assert ops.find_outlet(info, strip_plug.child_id(5)).index == 6
    assert ops.find_outlet(info, "plug 3").index == 3  # case-insensitive alias
    with pytest.raises(TargetError, match="no outlet"):
        ops.find_outlet(info, "7")
    ops.run_sync(ops.set_alias("Lamp", "1"), strip_plug.handle)
    ops.run_sync(ops.set_alias("Lamp", "2"), strip_plug.handle)
    info = ops.run_sync(ops.sysinfo(), strip_plug.handle)
    with pytest.raises(TargetError, match="names 2 outlets"):
        ops.find_outlet(info, "lamp")


def test_child_selector_on_single_plug_is_a_target_error():
    plug = EmulatedPlug(MODELS["hs105"])
    with pytest.raises(TargetError, match="no outlets") as exc:
        ops.run_sync(ops.set_relay(True, "1"), plug.handle)
    assert exc.value.exit_code == 2


def test_strip_relay_states_and_whole_strip_toggle(strip_plug):
    ops.run_sync(ops.set_relay(True, "3"), strip_plug.handle)
    states = ops.run_sync(ops.relay_states(), strip_plug.handle)
    assert [on for _a, on in states] == [False, False, True, False, False, False]
    # Any outlet on -> whole-strip toggle switches everything off.
    assert ops.run_sync(ops.toggle(), strip_plug.handle) is False
    assert not any(on for _a, on in ops.run_sync(ops.relay_states(), strip_plug.handle))
    assert ops.run_sync(ops.toggle(), strip_plug.handle) is True
    assert all(on for _a, on in ops.run_sync(ops.relay_states(), strip_plug.handle))


def test_countdown_tries_both_module_spellings():
    single = EmulatedPlug(MODELS["hs100"])  # count_down
    strip = EmulatedPlug(MODELS["kp303"])  # countdown
    single.handle({"count_down": {"add_rule": {"enable": 1, "delay": 60, "act": 1, "name": "a"}}})
    strip.handle({"countdown": {"add_rule": {"enable": 1, "delay": 30, "act": 0, "name": "b"}}})
    assert [r["delay"] for r in ops.run_sync(ops.countdown_rules(), single.handle)] == [60]
    assert [r["delay"] for r in ops.run_sync(ops.countdown_rules(), strip.handle)] == [30]
    neither = Script({"count_down": {"err_code": -1, "err_msg": "module not support"},
                      "countdown": {"err_code": -1, "err_msg": "module not support"}})
    with pytest.raises(DeviceError):
        ops.run_sync(ops.countdown_rules(), neither)
    with pytest.raises(ProtocolError):
        ops.run_sync(ops.countdown_rules(), Script({}))


def test_sync_time_sets_zone_and_reports_small_offset():
    plug = EmulatedPlug(MODELS["hs110"])

    def now(index):
        from hs100local.timezones import zoneinfo_for

        return datetime.now(zoneinfo_for(index)).replace(tzinfo=None)

    result = ops.run_sync(ops.sync_time(41, now), plug.handle)
    assert result.tz_index == 41 and plug.tz_index == 41
    assert abs(result.offset_s) <= 1.0
    assert result.read_back.tz_index == 41


def test_set_clock_falls_back_to_set_time_when_zone_unchanged():
    replies = Script(
        {"time": {"set_timezone": {"err_code": -3, "err_msg": "invalid argument"}}},
        {"time": {"get_time": {"year": 2000, "month": 1, "mday": 1, "hour": 0, "min": 0,
                               "sec": 5, "err_code": 0},
                  "get_timezone": {"index": 38, "err_code": 0}}},
        {"time": {"set_time": {"err_code": 0}}},
    )
    method = ops.run_sync(ops.set_clock(datetime(2026, 1, 2, 3, 4, 5), 38), replies)
    assert method == "set_time"
    assert replies.requests[2]["time"]["set_time"]["mday"] == 2
    # A different zone cannot be set with set_time: the first error stands.
    replies = Script(
        {"time": {"set_timezone": {"err_code": -3, "err_msg": "invalid argument"}}},
        {"time": {"get_time": {"year": 2000, "month": 1, "mday": 1, "hour": 0, "min": 0,
                               "sec": 5, "err_code": 0},
                  "get_timezone": {"index": 6, "err_code": 0}}},
    )
    with pytest.raises(DeviceError):
        ops.run_sync(ops.set_clock(datetime(2026, 1, 2, 3, 4, 5), 38), replies)


def test_plug_offset_rejects_impossible_dates():
    from hs100local.results import PlugTime

    with pytest.raises(ProtocolError):
        ops.plug_offset(PlugTime(2024, 2, 31, 0, 0, 0, 38), datetime(2024, 1, 1))
