"""Sans-I/O emulated plug: ``EmulatedPlug.handle(request) -> reply``.

State (relay, LED, alias, clock, energy, cloud binding, Wi-Fi, rules) persists
across requests. Errors use the firmware's codes: an unknown module answers
``-1 "module not support"`` at module level, an unknown method ``-2 "member not
support"`` at method level, bad parameters ``-3 "invalid argument"``.

Choices where no capture tells the real behaviour (documented in the README):
a ``context.child_ids`` naming no outlet answers ``-3``; ``emeter`` on a strip
without a context answers the sum over all outlets; ``cnCloud.bind`` fails with
``-7`` because the emulator has no cloud to reach.

Clock: a real plug has no battery-backed clock. After :meth:`EmulatedPlug.power_cycle`
(or when built with a ``clock_start`` before 2001) its clock runs from 2000-01-01 and
it is *not synced* until ``set_time``/``set_timezone`` succeeds; meanwhile the rule
modules answer ``-11 "time not sync"``. A capture (tplink-smarthome-api issue #91,
HS100(EU) fw 1.1.0) shows that answer for ``schedule.get_next_action``; plug-facts
says schedules and countdowns fail, so ``add_rule`` and ``edit_rule`` of the schedule
and countdown modules answer it too (which methods exactly is an inference).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from hs100local.emulator.models import ModelSpec

Params = dict[str, Any]
Result = dict[str, Any]

MODULE_NOT_SUPPORTED = {"err_code": -1, "err_msg": "module not support"}
METHOD_NOT_SUPPORTED = {"err_code": -2, "err_msg": "member not support"}
INVALID_ARGUMENT = {"err_code": -3, "err_msg": "invalid argument"}
NOT_BOUND = {"err_code": -8, "err_msg": "not bind yet"}
CLOUD_OFFLINE = {"err_code": -7, "err_msg": "cloud connection failed"}
TIME_NOT_SYNCED = {"err_code": -11, "err_msg": "time not sync"}

DEFAULT_ACCESS_POINTS = (
    {"ssid": "hs100local-lab", "key_type": 3, "rssi": -41},
    {"ssid": "neighbours-guest", "key_type": 0, "rssi": -77},
)
FACTORY_TZ_INDEX = 6  # US Pacific, the factory default
#: what the clock reads after a power cut (local time in the plug's zone)
POWER_ON_CLOCK = datetime(2000, 1, 1)
#: a clock before this year was never set (firmware range for set_time starts at 2000)
SYNCED_FROM_YEAR = 2001
#: rule methods that need a set clock (see the module docstring)
_NEED_TIME = ("add_rule", "edit_rule", "get_next_action")
_SLOT_INDICES = frozenset(f"{i:02d}" for i in range(100)) | frozenset(str(i) for i in range(10))
_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


class _Invalid(Exception):
    """Raised by handlers for bad parameters; becomes ``-3 invalid argument``."""


def _hexid(seed: str, length: int) -> str:
    return hashlib.sha1(seed.encode()).hexdigest().upper()[:length]


def _require_int(params: Params, key: str, lo: int, hi: int) -> int:
    value = params.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _Invalid(key)
    return value


class _Relay:
    """One switchable load: the plug itself or one strip outlet, with its meter."""

    def __init__(self, alias: str, load_w: float) -> None:
        self.alias = alias
        self.on = False
        self.on_since = 0.0
        self.load_w = load_w
        self.energy_wh = 0.0
        self.day_wh: dict[tuple[int, int, int], float] = {}
        self.last_sample = 0.0

    def switch(self, on: bool, now: float) -> None:
        if on and not self.on:
            self.on_since = now
        self.on = on

    def on_time(self, now: float) -> int:
        return int(now - self.on_since) if self.on else 0

    def sample(self, now: float, day: tuple[int, int, int]) -> None:
        """Integrate energy since the last sample (the load draws ``load_w`` when on)."""
        if self.last_sample and self.on and now > self.last_sample:
            wh = self.load_w * (now - self.last_sample) / 3600
            self.energy_wh += wh
            self.day_wh[day] = self.day_wh.get(day, 0.0) + wh
        self.last_sample = now


class _Rules:
    """A rule list module (schedule, countdown, anti_theft)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.rules: list[dict[str, Any]] = []
        self.counter = 0

    def get_rules(self, params: Params) -> Result:
        return {"rule_list": [dict(r) for r in self.rules], "enable": 1, "version": 2}

    def add_rule(self, params: Params) -> Result:
        self.counter += 1
        rule_id = _hexid(f"{self.owner}/{self.counter}", 32)
        self.rules.append({**params, "id": rule_id})
        return {"id": rule_id}

    def edit_rule(self, params: Params) -> Result:
        for rule in self.rules:
            if rule["id"] == params.get("id"):
                rule.update(params)
                return {}
        raise _Invalid("id")

    def delete_rule(self, params: Params) -> Result:
        before = len(self.rules)
        self.rules = [r for r in self.rules if r["id"] != params.get("id")]
        if len(self.rules) == before:
            raise _Invalid("id")
        return {}

    def delete_all_rules(self, params: Params) -> Result:
        self.rules.clear()
        return {}

    def get_next_action(self, params: Params) -> Result:
        return {"type": -1}


class EmulatedPlug:
    """The state and behaviour of one emulated device."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        alias: str | None = None,
        mac: str | None = None,
        load_w: float = 60.0,
        tz_index: int = FACTORY_TZ_INDEX,
        clock: Callable[[], float] = time.time,
        bound_user: str | None = None,
        access_points: tuple[dict[str, Any], ...] = DEFAULT_ACCESS_POINTS,
        clock_start: datetime | None = None,
    ) -> None:
        """``clock``: the host clock the plug's clocks run on (injectable for tests).
        ``clock_start``: what the plug's wall clock reads now (naive = local time in
        zone ``tz_index``, as the firmware keeps it); None = this host's time. Before
        2001 it counts as never set, like a plug after a power cut."""
        self.spec = spec
        self.clock = clock
        if mac is None:
            suffix = _hexid(f"{spec.key}/{alias or ''}", 6)
            mac = f"{spec.mac_prefix}:{suffix[0:2]}:{suffix[2:4]}:{suffix[4:6]}"
        if not _MAC.fullmatch(mac):
            raise ValueError(f"bad MAC address {mac!r} (want six hex pairs like 50:C7:BF:01:02:03)")
        self.mac = mac.upper()
        self.device_id = _hexid(f"device/{self.mac}", 40)
        self.default_alias = alias or f"{spec.model.split('(')[0]} emulator"
        self.access_points = access_points
        self.load_w = load_w
        self.boot_time = clock()
        self.reboot_count = 0
        self.power_cycles = 0
        #: called with the delay in seconds when the plug is told to reboot
        self.on_reboot: Callable[[float], None] | None = None
        #: test hook: (module, method) pairs answered ``-2 "member not support"``, as
        #: firmware that lacks or refuses a method does
        self.refused: set[tuple[str, str]] = set()
        #: how often each known (module, method) was asked for, refused ones included
        #: (unknown names are not counted, so a hostile client cannot grow this)
        self.calls: Counter[tuple[str, str]] = Counter()
        self._factory_state(tz_index, bound_user)
        if clock_start is not None:
            self._start_clock_at(clock_start)

    # ------------------------------------------------------------------ state
    def _factory_state(self, tz_index: int, bound_user: str | None) -> None:
        now = self.clock()
        self.alias = self.default_alias
        self.led_off = 0
        self.latitude = 0.0
        self.longitude = 0.0
        self.tz_index = tz_index
        self.clock_offset = 0.0  # wall clock minus host clock, in seconds
        self.time_synced = True  # the host's clock is a set clock
        self.cloud = {
            "username": bound_user or "",
            "server": "n-devs.tplinkcloud.com",
            "binded": 1 if bound_user else 0,
            "cld_connection": 0,
            "illegalType": 0,
            "stopConnect": 0,
            "tcspStatus": 0,
            "fwDlPage": "",
            "tcspInfo": "",
            "fwNotifyType": -1,
        }
        self.sta = {"ssid": "", "key_type": 3, "rssi": -45}
        self.relay = _Relay(self.alias, self.load_w)
        self.outlets = [
            _Relay(f"Plug {i + 1}", self.load_w) for i in range(self.spec.outlets)
        ]
        for relay in (self.relay, *self.outlets):
            relay.last_sample = now
        self.rule_modules = {
            "schedule": _Rules("schedule"),
            self.spec.countdown_module: _Rules("countdown"),
            "anti_theft": _Rules("anti_theft"),
        }

    def child_id(self, index: int) -> str:
        """Outlet ids are the parent deviceId plus a two-digit slot index."""
        return f"{self.device_id}{index:02d}"

    @property
    def is_strip(self) -> bool:
        return bool(self.outlets)

    def plug_now(self) -> datetime:
        """The plug's wall clock: host clock + its own offset, in its zone."""
        from hs100local.timezones import zoneinfo_for

        return datetime.fromtimestamp(self.clock() + self.clock_offset, zoneinfo_for(self.tz_index))

    def _start_clock_at(self, start: datetime) -> None:
        """Make the wall clock read ``start`` now (naive = local in the plug's zone)."""
        from hs100local.timezones import zoneinfo_for

        local = start.astimezone(zoneinfo_for(self.tz_index)) if start.tzinfo else start
        if not POWER_ON_CLOCK.year <= local.year <= 2099:
            raise ValueError(f"clock start {start.isoformat()} is outside 2000..2099")
        moment = start if start.tzinfo else start.replace(tzinfo=zoneinfo_for(self.tz_index))
        self.clock_offset = moment.timestamp() - self.clock()
        self.time_synced = local.year >= SYNCED_FROM_YEAR

    def _sample_energy(self) -> None:
        now = self.clock()
        today = self.plug_now()
        day = (today.year, today.month, today.day)
        for relay in (self.relay, *self.outlets):
            relay.sample(now, day)

    # ------------------------------------------------------------ dispatching
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one decoded request the way the firmware does."""
        reply: dict[str, Any] = {}
        targets, context_error = self._targets(request.get("context"))
        for module, methods in request.items():
            if module == "context":
                continue
            table = self._module(module)
            if table is None or not isinstance(methods, dict):
                reply[module] = dict(MODULE_NOT_SUPPORTED)
                continue
            answers: dict[str, Any] = {}
            for method, params in methods.items():
                handler = table.get(method)
                if handler is not None:
                    self.calls[(module, method)] += 1
                if handler is None or (module, method) in self.refused:
                    answers[method] = dict(METHOD_NOT_SUPPORTED)
                elif context_error or not isinstance(params, dict | type(None)):
                    answers[method] = dict(INVALID_ARGUMENT)
                else:
                    answers[method] = self._call(handler, params or {}, targets)
            reply[module] = answers
        return reply

    def _call(
        self, handler: Callable[..., Result], params: Params, targets: list[int] | None
    ) -> Result:
        try:
            if getattr(handler, "_targets", False):
                result = handler(params, targets)
            else:
                result = handler(params)
        except _Invalid:
            return dict(INVALID_ARGUMENT)
        if "err_code" in result:
            return result
        return {**result, "err_code": 0}

    def _targets(self, context: Any) -> tuple[list[int] | None, bool]:
        """Outlet indices named by ``context.child_ids`` (None = the whole device)."""
        if context is None or not self.is_strip:
            return None, False
        ids = context.get("child_ids") if isinstance(context, dict) else None
        if not isinstance(ids, list) or not ids:
            return None, True
        indices = []
        for child in ids:
            matches = [i for i in range(len(self.outlets)) if self.child_id(i) == child]
            # Some clients send just the two-digit index; the firmware accepts both.
            if not matches and isinstance(child, str) and child in _SLOT_INDICES:
                matches = [int(child)] if int(child) < len(self.outlets) else []
            if not matches:
                return None, True
            indices.extend(matches)
        return indices, False

    def _module(self, module: str) -> dict[str, Callable[..., Result]] | None:
        tables: dict[str, dict[str, Callable[..., Result]]] = {
            "system": {
                "get_sysinfo": self.get_sysinfo,
                "set_relay_state": _targeted(self.set_relay_state),
                "set_led_off": self.set_led_off,
                "set_dev_alias": _targeted(self.set_dev_alias),
                "reboot": self.reboot,
                "reset": self.reset,
                "set_dev_location": self.set_dev_location,
                "set_mac_addr": self.set_mac_addr,
                "get_download_state": lambda p: {"status": 0, "ratio": 0},
                "download_firmware": lambda p: dict(CLOUD_OFFLINE),
            },
            "time": {
                "get_time": self.get_time,
                "get_timezone": lambda p: {"index": self.tz_index},
                "set_time": self.set_time,
                "set_timezone": self.set_timezone,
            },
            "cnCloud": {
                "get_info": lambda p: dict(self.cloud),
                "bind": self.cloud_bind,
                "unbind": self.cloud_unbind,
                "set_server_url": self.cloud_set_server,
                "get_intl_fw_list": lambda p: dict(CLOUD_OFFLINE),
            },
            "netif": {
                "get_scaninfo": lambda p: {"ap_list": [dict(a) for a in self.access_points]},
                "get_stainfo": lambda p: dict(self.sta),
                "set_stainfo": self.set_stainfo,
            },
        }
        if self.spec.emeter:
            tables["emeter"] = {
                "get_realtime": _targeted(self.emeter_realtime),
                "get_daystat": _targeted(self.emeter_daystat),
                "get_monthstat": _targeted(self.emeter_monthstat),
                "erase_emeter_stat": _targeted(self.emeter_erase),
            }
        if module in tables:
            return tables[module]
        rules = self.rule_modules.get(module)
        if rules is None:
            return None
        names = ("get_rules", "add_rule", "edit_rule", "delete_rule", "delete_all_rules")
        table = {name: getattr(rules, name) for name in names}
        if module != "anti_theft":
            table["get_next_action"] = rules.get_next_action
            if not self.time_synced:
                for name in _NEED_TIME:
                    table[name] = _time_not_synced
        return table

    # ----------------------------------------------------------------- system
    def get_sysinfo(self, params: Params) -> Result:
        spec, now = self.spec, self.clock()
        info: Result = {
            "sw_ver": spec.sw_ver,
            "hw_ver": spec.hw_ver,
            spec.type_key: "IOT.SMARTPLUGSWITCH",
            "model": spec.model,
            "mac": self.mac,
            "dev_name": spec.dev_name,
            "alias": self.alias,
            "icon_hash": "",
            "feature": spec.feature,
            "updating": 0,
            "led_off": self.led_off,
            "rssi": self.sta["rssi"],
            "deviceId": self.device_id,
            "hwId": _hexid(f"hw/{spec.model}/{spec.hw_ver}", 32),
            "oemId": _hexid(f"oem/{spec.model}", 32),
        }
        if spec.location_keys == "int":
            info["latitude_i"] = round(self.latitude * 10000)
            info["longitude_i"] = round(self.longitude * 10000)
        else:
            info["latitude"] = self.latitude
            info["longitude"] = self.longitude
            info["fwId"] = "0" * 32
        if spec.status_field:
            info["status"] = "new"
        if self.is_strip:
            info["child_num"] = len(self.outlets)
            info["children"] = [
                {
                    "id": self.child_id(i),
                    "state": int(o.on),
                    "alias": o.alias,
                    "on_time": o.on_time(now),
                    "next_action": {"type": -1},
                }
                for i, o in enumerate(self.outlets)
            ]
            if spec.key == "kp303":
                info["ntc_state"] = 0
        else:
            info["active_mode"] = "none"
            info["relay_state"] = int(self.relay.on)
            info["on_time"] = self.relay.on_time(now)
            if spec.next_action:
                info["next_action"] = {"type": -1}
        return info

    def _relays(self, targets: list[int] | None) -> list[_Relay]:
        if not self.is_strip:
            return [self.relay]
        if targets is None:
            return list(self.outlets)
        return [self.outlets[i] for i in targets]

    def set_relay_state(self, params: Params, targets: list[int] | None) -> Result:
        state = _require_int(params, "state", 0, 1)
        self._sample_energy()
        for relay in self._relays(targets):
            relay.switch(bool(state), self.clock())
        return {}

    def set_led_off(self, params: Params) -> Result:
        self.led_off = _require_int(params, "off", 0, 1)
        return {}

    def set_dev_alias(self, params: Params, targets: list[int] | None) -> Result:
        alias = params.get("alias")
        if not isinstance(alias, str) or len(alias.encode()) > 31:
            raise _Invalid("alias")
        if self.is_strip and targets is not None:
            for relay in self._relays(targets):
                relay.alias = alias
        else:
            self.alias = alias
        return {}

    def reboot(self, params: Params) -> Result:
        delay = _require_int(params, "delay", 0, 65535) if "delay" in params else 1
        self.reboot_count += 1
        if self.on_reboot is not None:
            self.on_reboot(delay)
        else:
            self.rebooted()
        return {}

    def rebooted(self) -> None:
        """The device came back up: uptime and relay on-times restart from zero, and
        its cloud connection, if it had one, is gone."""
        now = self.clock()
        self.boot_time = now
        self.cloud["cld_connection"] = 0
        for relay in (self.relay, *self.outlets):
            if relay.on:
                relay.on_since = now

    def power_cycle(self) -> None:
        """A power cut and restart: no battery-backed clock, so the wall clock starts
        again at 2000-01-01 00:00 local and is not synced; uptime and on-times restart.
        Relay states and settings (alias, zone, rules, cloud, Wi-Fi) are in flash and
        survive. Network effects (dropped connections) are the server's business."""
        self._sample_energy()  # credit the energy used so far to the day it was used
        self.power_cycles += 1
        self.rebooted()
        self._start_clock_at(POWER_ON_CLOCK)

    def reset(self, params: Params) -> Result:
        delay = _require_int(params, "delay", 0, 65535) if "delay" in params else 1
        self._factory_state(FACTORY_TZ_INDEX, None)
        self.reboot({"delay": delay})
        return {}

    def set_dev_location(self, params: Params) -> Result:
        if "latitude_i" in params:
            self.latitude = _require_int(params, "latitude_i", -900000, 900000) / 10000
            self.longitude = _require_int(params, "longitude_i", -1800000, 1800000) / 10000
        else:
            lat, lon = params.get("latitude"), params.get("longitude")
            for value, bound in ((lat, 90), (lon, 180)):
                if (
                    not isinstance(value, int | float)
                    or isinstance(value, bool)
                    or not -bound <= value <= bound  # also rejects NaN
                ):
                    raise _Invalid("latitude")
            self.latitude, self.longitude = float(lat), float(lon)
        return {}

    def set_mac_addr(self, params: Params) -> Result:
        mac = params.get("mac")
        if not isinstance(mac, str) or not _MAC.fullmatch(mac):
            raise _Invalid("mac")
        self.mac = mac.upper()
        return {}

    # ------------------------------------------------------------------- time
    def get_time(self, params: Params) -> Result:
        now = self.plug_now()
        return {
            "year": now.year,
            "month": now.month,
            "mday": now.day,
            "hour": now.hour,
            "min": now.minute,
            "sec": now.second,
        }

    def _set_wall_clock(self, params: Params, tz_index: int) -> None:
        from hs100local.timezones import zoneinfo_for

        try:
            local = datetime(
                _require_int(params, "year", 2000, 2099),
                _require_int(params, "month", 1, 12),
                _require_int(params, "mday", 1, 31),
                _require_int(params, "hour", 0, 23),
                _require_int(params, "min", 0, 59),
                _require_int(params, "sec", 0, 59),
                tzinfo=zoneinfo_for(tz_index),
            )
        except ValueError:  # e.g. 31 February
            raise _Invalid("mday") from None
        self._sample_energy()
        self.tz_index = tz_index
        self.clock_offset = local.timestamp() - self.clock()
        self.time_synced = True

    def set_time(self, params: Params) -> Result:
        if self.spec.set_time_refused:
            return dict(INVALID_ARGUMENT)
        self._set_wall_clock(params, self.tz_index)
        return {}

    def set_timezone(self, params: Params) -> Result:
        self._set_wall_clock(params, _require_int(params, "index", 0, 109))
        return {}

    def sync_clock(self, unix_time: float) -> None:
        """Set the wall clock to the instant ``unix_time`` and mark it synced, keeping
        the zone: what an NTP answer does on a real plug (NTP carries an instant, the
        zone index stays the one the app set). Energy used so far is credited to the
        day the old clock said, as ``set_time`` does."""
        self._sample_energy()
        self.clock_offset = unix_time - self.clock()
        self.time_synced = True

    # ------------------------------------------------------------------ cloud
    def cloud_bind(self, params: Params) -> Result:
        if not isinstance(params.get("username"), str) or not isinstance(
            params.get("password"), str
        ):
            raise _Invalid("username")
        return dict(CLOUD_OFFLINE)

    def cloud_unbind(self, params: Params) -> Result:
        if not self.cloud["binded"]:
            return dict(NOT_BOUND)
        self.cloud.update(binded=0, username="", cld_connection=0)
        return {}

    def cloud_set_server(self, params: Params) -> Result:
        server = params.get("server")
        if not isinstance(server, str) or not server:
            raise _Invalid("server")
        self.cloud["server"] = server
        return {}

    # ------------------------------------------------------------------ Wi-Fi
    def set_stainfo(self, params: Params) -> Result:
        ssid, password = params.get("ssid"), params.get("password")
        if not isinstance(ssid, str) or not ssid or not isinstance(password, str):
            raise _Invalid("ssid")
        key_type = _require_int(params, "key_type", 0, 3)
        self.sta.update(ssid=ssid, key_type=key_type)
        return {}

    # ----------------------------------------------------------- energy meter
    def _meters(self, targets: list[int] | None) -> list[_Relay]:
        self._sample_energy()
        return self._relays(targets)

    def emeter_realtime(self, params: Params, targets: list[int] | None) -> Result:
        meters = self._meters(targets)
        power = sum(m.load_w for m in meters if m.on)
        total_wh = sum(m.energy_wh for m in meters)
        volts = self.spec.voltage
        current = power / volts if power else 0.0
        if self.spec.emeter == "v1":
            return {"voltage": volts, "current": current, "power": power, "total": total_wh / 1000}
        result = {
            "voltage_mv": round(volts * 1000),
            "current_ma": round(current * 1000),
            "power_mw": round(power * 1000),
            "total_wh": round(total_wh),
        }
        if self.is_strip and targets is not None and len(targets) == 1:
            result["slot_id"] = targets[0]
        return result

    def _energy_key(self) -> str:
        return "energy" if self.spec.emeter == "v1" else "energy_wh"

    def _energy_value(self, wh: float) -> float | int:
        return round(wh / 1000, 3) if self.spec.emeter == "v1" else round(wh)

    def emeter_daystat(self, params: Params, targets: list[int] | None) -> Result:
        year = _require_int(params, "year", 2000, 2099)
        month = _require_int(params, "month", 1, 12)
        days: dict[int, float] = {}
        for meter in self._meters(targets):
            for (y, m, d), wh in meter.day_wh.items():
                if (y, m) == (year, month):
                    days[d] = days.get(d, 0.0) + wh
        key = self._energy_key()
        return {
            "day_list": [
                {"year": year, "month": month, "day": d, key: self._energy_value(wh)}
                for d, wh in sorted(days.items())
            ]
        }

    def emeter_monthstat(self, params: Params, targets: list[int] | None) -> Result:
        year = _require_int(params, "year", 2000, 2099)
        months: dict[int, float] = {}
        for meter in self._meters(targets):
            for (y, m, _d), wh in meter.day_wh.items():
                if y == year:
                    months[m] = months.get(m, 0.0) + wh
        key = self._energy_key()
        return {
            "month_list": [
                {"year": year, "month": m, key: self._energy_value(wh)}
                for m, wh in sorted(months.items())
            ]
        }

    def emeter_erase(self, params: Params, targets: list[int] | None) -> Result:
        for meter in self._meters(targets):
            meter.energy_wh = 0.0
            meter.day_wh.clear()
        return {}


def _time_not_synced(params: Params) -> Result:
    """What the rule methods answer while the clock has not been set."""
    return dict(TIME_NOT_SYNCED)


def _targeted(handler: Callable[[Params, list[int] | None], Result]) -> Callable[..., Result]:
    """Mark a handler that takes the outlets named by ``context.child_ids``."""

    def call(params: Params, targets: list[int] | None) -> Result:
        return handler(params, targets)

    call._targets = True  # type: ignore[attr-defined]
    return call
