"""The emulated plug answers like the firmware: shapes, error codes, persistent state."""

from __future__ import annotations

import pytest

from hs100local.emulator import MODELS, EmulatedPlug


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def sysinfo(plug):
    return plug.handle({"system": {"get_sysinfo": {}}})["system"]["get_sysinfo"]


@pytest.mark.parametrize("key", sorted(MODELS))
def test_sysinfo_shape_per_model(key):
    spec = MODELS[key]
    info = sysinfo(EmulatedPlug(spec))
    assert info["err_code"] == 0
    assert info["model"] == spec.model and info["hw_ver"] == spec.hw_ver
    assert spec.type_key in info
    assert ("latitude_i" in info) == (spec.location_keys == "int")
    assert ("latitude" in info) == (spec.location_keys == "float")
    assert info["feature"] == ("TIM:ENE" if spec.emeter else "TIM")
    assert len(info["deviceId"]) == 40
    if spec.outlets:
        assert "relay_state" not in info and info["child_num"] == spec.outlets
        assert [c["id"] for c in info["children"]] == [
            info["deviceId"] + f"{i:02d}" for i in range(spec.outlets)
        ]
    else:
        assert info["relay_state"] in (0, 1) and "children" not in info


def test_unknown_module_method_and_bad_params_use_firmware_codes():
    plug = EmulatedPlug(MODELS["hs105"])
    reply = plug.handle({"nosuch": {"x": {}}, "system": {"nosuch": {}, "set_relay_state": {}}})
    assert reply["nosuch"] == {"err_code": -1, "err_msg": "module not support"}
    assert reply["system"]["nosuch"]["err_code"] == -2
    assert reply["system"]["set_relay_state"]["err_code"] == -3
    # HS105 has no energy meter.
    assert plug.handle({"emeter": {"get_realtime": {}}})["emeter"]["err_code"] == -1


def test_state_persists_across_requests():
    plug = EmulatedPlug(MODELS["hs200"])
    plug.handle({"system": {"set_relay_state": {"state": 1}, "set_led_off": {"off": 1},
                            "set_dev_alias": {"alias": "Hall"}}})
    info = sysinfo(plug)
    assert (info["relay_state"], info["led_off"], info["alias"]) == (1, 1, "Hall")
    too_long = plug.handle({"system": {"set_dev_alias": {"alias": "x" * 32}}})
    assert too_long["system"]["set_dev_alias"]["err_code"] == -3
    assert sysinfo(plug)["alias"] == "Hall"


def test_strip_context_addresses_single_outlets():
    plug = EmulatedPlug(MODELS["kp303"])
    child = plug.child_id(1)
    reply = plug.handle({"context": {"child_ids": [child]},
                         "system": {"set_relay_state": {"state": 1}}})
    assert reply["system"]["set_relay_state"]["err_code"] == 0
    assert [c["state"] for c in sysinfo(plug)["children"]] == [0, 1, 0]
    bad = plug.handle({"context": {"child_ids": ["nope"]},
                       "system": {"set_relay_state": {"state": 1}}})
    assert bad["system"]["set_relay_state"]["err_code"] == -3
    plug.handle({"system": {"set_relay_state": {"state": 1}}})  # no context: all outlets
    assert [c["state"] for c in sysinfo(plug)["children"]] == [1, 1, 1]


def test_on_time_and_energy_follow_the_clock():
    clock = FakeClock()
    plug = EmulatedPlug(MODELS["hs110"], clock=clock, load_w=100.0)
    plug.handle({"system": {"set_relay_state": {"state": 1}}})
    clock.t += 3600
    assert sysinfo(plug)["on_time"] == 3600
    rt = plug.handle({"emeter": {"get_realtime": {}}})["emeter"]["get_realtime"]
    assert rt["power"] == 100.0 and rt["voltage"] == 230.0
    assert rt["total"] == pytest.approx(0.1)  # 100 W for an hour, v1 unit kWh
    now = plug.plug_now()
    days = plug.handle({"emeter": {"get_daystat": {"year": now.year, "month": now.month}}})
    assert sum(d["energy"] for d in days["emeter"]["get_daystat"]["day_list"]) == pytest.approx(
        0.1
    )
    plug.handle({"system": {"set_relay_state": {"state": 0}}})
    clock.t += 3600
    rt = plug.handle({"emeter": {"get_realtime": {}}})["emeter"]["get_realtime"]
    assert rt["power"] == 0 and rt["total"] == pytest.approx(0.1)


def test_v2_meter_per_outlet_and_strip_sum():
    clock = FakeClock()
    plug = EmulatedPlug(MODELS["hs300"], clock=clock, load_w=50.0)
    ids = [plug.child_id(0), plug.child_id(2)]
    plug.handle({"context": {"child_ids": ids}, "system": {"set_relay_state": {"state": 1}}})
    clock.t += 7200
    one = plug.handle({"context": {"child_ids": ids[:1]}, "emeter": {"get_realtime": {}}})
    assert one["emeter"]["get_realtime"]["power_mw"] == 50_000
    assert one["emeter"]["get_realtime"]["total_wh"] == 100
    assert one["emeter"]["get_realtime"]["slot_id"] == 0
    total = plug.handle({"emeter": {"get_realtime": {}}})["emeter"]["get_realtime"]
    assert total["power_mw"] == 100_000 and total["total_wh"] == 200


def test_time_zone_and_clock_setting():
    clock = FakeClock(1_700_000_000.0)  # 2023-11-14T22:13:20Z
    plug = EmulatedPlug(MODELS["hs105"], clock=clock)
    assert plug.handle({"time": {"get_timezone": {}}})["time"]["get_timezone"]["index"] == 6
    set_tz = {"index": 41, "year": 2030, "month": 6, "mday": 1, "hour": 12, "min": 0, "sec": 0}
    assert plug.handle({"time": {"set_timezone": set_tz}})["time"]["set_timezone"]["err_code"] == 0
    clock.t += 61
    t = plug.handle({"time": {"get_time": {}}})["time"]["get_time"]
    assert (t["year"], t["month"], t["mday"], t["hour"], t["min"], t["sec"]) == (
        2030, 6, 1, 12, 1, 1)
    bad = dict(set_tz, mday=31, month=2)
    assert plug.handle({"time": {"set_timezone": bad}})["time"]["set_timezone"]["err_code"] == -3
    missing = {k: v for k, v in set_tz.items() if k != "hour"}
    assert plug.handle({"time": {"set_time": missing}})["time"]["set_time"]["err_code"] == -3


def test_cloud_binding_behaviour():
    plug = EmulatedPlug(MODELS["hs100"], bound_user="me@example.com")
    info = plug.handle({"cnCloud": {"get_info": {}}})["cnCloud"]["get_info"]
    assert info["binded"] == 1 and info["server"] == "n-devs.tplinkcloud.com"
    assert plug.handle({"cnCloud": {"unbind": {}}})["cnCloud"]["unbind"]["err_code"] == 0
    assert plug.handle({"cnCloud": {"unbind": {}}})["cnCloud"]["unbind"]["err_code"] == -8
    plug.handle({"cnCloud": {"set_server_url": {"server": "companion.lan"}}})
    assert plug.handle({"cnCloud": {"get_info": {}}})["cnCloud"]["get_info"]["server"] == (
        "companion.lan")
    fw = plug.handle({"cnCloud": {"get_intl_fw_list": {}}})["cnCloud"]["get_intl_fw_list"]
    assert fw["err_code"] == -7


def test_wifi_join_requires_key_type():
    plug = EmulatedPlug(MODELS["hs105"])
    no_key = plug.handle({"netif": {"set_stainfo": {"ssid": "home", "password": "pw"}}})
    assert no_key["netif"]["set_stainfo"]["err_code"] == -3
    ok = plug.handle({"netif": {"set_stainfo": {"ssid": "home", "password": "pw", "key_type": 3}}})
    assert ok["netif"]["set_stainfo"]["err_code"] == 0
    assert plug.handle({"netif": {"get_stainfo": {}}})["netif"]["get_stainfo"]["ssid"] == "home"


def test_reboot_callback_and_factory_reset():
    plug = EmulatedPlug(MODELS["hs105"], alias="Desk")
    delays = []
    plug.on_reboot = delays.append
    plug.handle({"system": {"set_dev_alias": {"alias": "Other"}, "set_relay_state": {"state": 1}}})
    plug.handle({"system": {"reboot": {"delay": 3}}})
    assert delays == [3] and sysinfo(plug)["relay_state"] == 1
    plug.handle({"system": {"reset": {"delay": 0}}})
    info = sysinfo(plug)
    assert (info["alias"], info["relay_state"]) == ("Desk", 0)


def test_rule_modules_add_edit_delete():
    plug = EmulatedPlug(MODELS["hs105"])
    added = plug.handle({"schedule": {"add_rule": {"name": "a", "enable": 1}}})
    rule_id = added["schedule"]["add_rule"]["id"]
    plug.handle({"schedule": {"edit_rule": {"id": rule_id, "enable": 0}}})
    rules = plug.handle({"schedule": {"get_rules": {}}})["schedule"]["get_rules"]["rule_list"]
    assert rules == [{"name": "a", "enable": 0, "id": rule_id}]
    gone = plug.handle({"schedule": {"delete_rule": {"id": "missing"}}})
    assert gone["schedule"]["delete_rule"]["err_code"] == -3
    plug.handle({"schedule": {"delete_rule": {"id": rule_id}}})
    assert plug.handle({"schedule": {"get_rules": {}}})["schedule"]["get_rules"]["rule_list"] == []
    # Single plugs spell the countdown module count_down, strips countdown.
    assert plug.handle({"countdown": {"get_rules": {}}})["countdown"]["err_code"] == -1
