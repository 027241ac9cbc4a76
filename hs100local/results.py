"""Typed results parsed from plug replies.

The firmware's JSON differs between hardware versions (``type``/``mic_type``,
``latitude``/``latitude_i``, energy meter v1 units vs v2 milli-units); these
classes normalise it once so the CLI and services never look at raw keys. Every
result keeps ``raw`` so nothing the plug said is lost (``--json`` prints it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

from hs100local.errors import ProtocolError

R = TypeVar("R")


def _parser(build: Callable[..., R]) -> Callable[..., R]:
    """Wrap a ``from_dict``: a reply with wrongly typed fields is a protocol error.

    A plug (or something pretending to be one) may send ``"children": 5`` or
    ``"latitude": "north"``; that must end as one clear error, not a traceback.
    """

    @wraps(build)
    def parse(*args: Any, **kwargs: Any) -> R:
        try:
            return build(*args, **kwargs)
        except (TypeError, ValueError, OverflowError, AttributeError, KeyError) as exc:
            raise ProtocolError(f"malformed reply ({build.__qualname__}): {exc}") from None

    return parse


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _flag(value: Any) -> bool:
    """A 0/1 state field; anything else is a malformed reply, not a guess."""
    if value in (0, 1) and isinstance(value, int):
        return bool(value)
    raise ValueError(f"expected 0 or 1, got {value!r}")


@dataclass(frozen=True)
class OutletInfo:
    """One outlet of a power strip (HS300, KP303, KP400), from ``children``."""

    index: int  # 1-based, as printed on the strip and in the default aliases
    id: str
    alias: str
    is_on: bool
    on_time: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.id,
            "alias": self.alias,
            "state": "on" if self.is_on else "off",
            "on_time": self.on_time,
        }


@dataclass(frozen=True)
class SysInfo:
    """``system.get_sysinfo``, normalised across hardware versions."""

    raw: dict[str, Any]
    alias: str
    model: str
    hw_ver: str
    sw_ver: str
    mac: str
    device_id: str
    device_type: str
    relay_on: bool | None  # None on strips: they have no top-level relay
    led_on: bool
    on_time: int
    rssi: int | None
    features: tuple[str, ...]
    latitude: float | None
    longitude: float | None
    children: tuple[OutletInfo, ...] = field(default_factory=tuple)

    @property
    def is_strip(self) -> bool:
        return bool(self.children)

    @property
    def has_emeter(self) -> bool:
        return "ENE" in self.features

    @classmethod
    @_parser
    def from_dict(cls, data: dict[str, Any]) -> SysInfo:
        children = tuple(
            OutletInfo(
                index=i + 1,
                id=str(child.get("id", "")),
                alias=str(child.get("alias", "")),
                is_on=_flag(child.get("state")),
                on_time=_int(child.get("on_time")),
            )
            for i, child in enumerate(data.get("children") or [])
            if isinstance(child, dict)
        )
        if "latitude_i" in data:
            lat = _int(data.get("latitude_i")) / 10000
            lon = _int(data.get("longitude_i")) / 10000
        elif "latitude" in data:
            lat, lon = float(data.get("latitude") or 0), float(data.get("longitude") or 0)
        else:
            lat = lon = None
        relay = data.get("relay_state")
        rssi = data.get("rssi")
        return cls(
            raw=data,
            alias=str(data.get("alias", "")),
            model=str(data.get("model", "")),
            hw_ver=str(data.get("hw_ver", "")),
            sw_ver=str(data.get("sw_ver", "")),
            mac=str(data.get("mac") or data.get("mic_mac") or ""),
            device_id=str(data.get("deviceId", "")),
            device_type=str(data.get("mic_type") or data.get("type") or ""),
            relay_on=None if relay is None else _flag(relay),
            led_on=not bool(_int(data.get("led_off"))),
            on_time=_int(data.get("on_time")),
            rssi=rssi if isinstance(rssi, int) else None,
            features=tuple(f for f in str(data.get("feature", "")).split(":") if f),
            latitude=lat,
            longitude=lon,
            children=children,
        )


@dataclass(frozen=True)
class EmeterReading:
    """Realtime energy meter reading in SI units (v1 and v2 firmware normalised)."""

    voltage_v: float
    current_a: float
    power_w: float
    total_kwh: float
    raw: dict[str, Any]

    @classmethod
    @_parser
    def from_dict(cls, data: dict[str, Any]) -> EmeterReading:
        def pick(v1: str, v2: str, scale: float) -> float:
            if v1 in data:
                return float(data[v1])
            if v2 in data:
                return float(data[v2]) * scale
            return 0.0

        return cls(
            voltage_v=pick("voltage", "voltage_mv", 1e-3),
            current_a=pick("current", "current_ma", 1e-3),
            power_w=pick("power", "power_mw", 1e-3),
            total_kwh=pick("total", "total_wh", 1e-3),
            raw=data,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "voltage_v": round(self.voltage_v, 3),
            "current_a": round(self.current_a, 4),
            "power_w": round(self.power_w, 3),
            "total_kwh": round(self.total_kwh, 4),
        }


@dataclass(frozen=True)
class EnergyEntry:
    """One row of ``get_daystat``/``get_monthstat``, energy in kWh."""

    year: int
    month: int
    day: int | None
    energy_kwh: float

    @classmethod
    @_parser
    def from_dict(cls, data: dict[str, Any]) -> EnergyEntry:
        if "energy" in data:
            kwh = float(data["energy"])
        else:
            kwh = float(data.get("energy_wh", 0)) / 1000
        day = data.get("day")
        return cls(_int(data.get("year")), _int(data.get("month")), day, kwh)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"year": self.year, "month": self.month}
        if self.day is not None:
            out["day"] = self.day
        out["energy_kwh"] = round(self.energy_kwh, 4)
        return out


@dataclass(frozen=True)
class PlugTime:
    """The plug's wall clock (local time in its zone, 1 s resolution) and zone index."""

    year: int
    month: int
    mday: int
    hour: int
    minute: int
    second: int
    tz_index: int | None

    @classmethod
    @_parser
    def from_dicts(cls, t: dict[str, Any], tz: dict[str, Any] | None) -> PlugTime:
        index = None if tz is None else tz.get("index")
        return cls(
            _int(t.get("year")),
            _int(t.get("month")),
            _int(t.get("mday")),
            _int(t.get("hour")),
            _int(t.get("min")),
            _int(t.get("sec")),
            index if isinstance(index, int) else None,
        )

    def isoformat(self) -> str:
        return (
            f"{self.year:04d}-{self.month:02d}-{self.mday:02d}T"
            f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.isoformat(), "tz_index": self.tz_index}


@dataclass(frozen=True)
class CloudInfo:
    """``cnCloud.get_info``: whether and where the plug is bound to the vendor cloud."""

    username: str
    server: str
    bound: bool
    connected: bool
    raw: dict[str, Any]

    @classmethod
    @_parser
    def from_dict(cls, data: dict[str, Any]) -> CloudInfo:
        return cls(
            username=str(data.get("username", "")),
            server=str(data.get("server", "")),
            bound=bool(_int(data.get("binded"))),
            connected=bool(_int(data.get("cld_connection"))),
            raw=data,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "server": self.server,
            "bound": self.bound,
            "connected": self.connected,
        }


KEY_TYPES = {0: "open", 1: "WEP", 2: "WPA", 3: "WPA2"}


@dataclass(frozen=True)
class AccessPoint:
    """One network from ``netif.get_scaninfo``."""

    ssid: str
    key_type: int
    rssi: int | None

    @classmethod
    @_parser
    def from_dict(cls, data: dict[str, Any]) -> AccessPoint:
        rssi = data.get("rssi")
        return cls(str(data.get("ssid", "")), _int(data.get("key_type")), rssi)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ssid": self.ssid,
            "key_type": self.key_type,
            "security": KEY_TYPES.get(self.key_type, str(self.key_type)),
            "rssi": self.rssi,
        }


@dataclass(frozen=True)
class TimeSync:
    """Outcome of setting a plug's clock: what was sent and what was read back."""

    tz_index: int  # the zone asked for
    sent: str
    read_back: PlugTime
    #: plug minus host (or minus what it should read), on the read-back; None when the
    #: plug read back an impossible date
    offset_s: float | None
    method: str = "set_timezone"

    def as_dict(self) -> dict[str, Any]:
        return {
            "tz_index": self.tz_index,
            "sent": self.sent,
            "method": self.method,
            "read_back": self.read_back.isoformat(),
            "tz_read_back": self.read_back.tz_index,
            "offset_s": None if self.offset_s is None else round(self.offset_s, 3),
        }


def normalize_mac(text: Any) -> str | None:
    """``aa-bb-cc-dd-ee-ff``/``AABBCCDDEEFF``/``aa:bb:…`` -> ``AA:BB:CC:DD:EE:FF``.

    The legacy firmware says ``mac`` with colons, KLAP discovery with dashes, users
    type either; the inventory keys on one spelling. ``None`` when it is not a MAC.
    """
    if not isinstance(text, str):
        return None
    digits = "".join(ch for ch in text if ch not in ":-. ").upper()
    if len(digits) != 12 or any(ch not in "0123456789ABCDEF" for ch in digits):
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


#: ``protocol`` values: the legacy XOR protocol on port 9999, or KLAP (port 9999 closed)
#: a plug clock before this year has not been set since the plug started (it starts
#: at 2000-01-01 after a power cut); no plug was sold before 2010
CLOCK_LOST_BEFORE = 2010

PROTOCOL_XOR = "xor"
PROTOCOL_KLAP = "klap"

KLAP_NOTE = (
    "firmware closed port 9999 (KLAP, needs cloud credentials): no local control; "
    "'Third-Party Compatibility' in the Kasa app is reported to reopen it"
)


@dataclass(frozen=True)
class DiscoveredPlug:
    """One device that answered discovery (UDP 9999, UDP 20002/20004 or a TCP sweep).

    ``host`` is always the address the answer came from, never an address the
    payload claims. ``sysinfo`` is set for legacy (XOR) plugs; KLAP devices only
    tell model, MAC and id, and cannot be controlled locally.
    """

    host: str
    port: int
    mac: str
    alias: str
    model: str
    hw_ver: str
    sw_ver: str
    device_id: str
    state: str | None  # "on"/"off"; a strip is "on" if any outlet is; None for KLAP
    protocol: str  # PROTOCOL_XOR or PROTOCOL_KLAP
    controllable: bool
    children: tuple[OutletInfo, ...] = ()
    interface: str | None = None  # where the answer arrived; None for --target/sweep
    via: str = "udp"  # "udp" (broadcast or --target) or "tcp" (sweep)
    note: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_sysinfo(
        cls, host: str, port: int, info: SysInfo, *, interface: str | None = None,
        via: str = "udp",
    ) -> DiscoveredPlug:
        if info.children:
            state: str | None = "on" if any(c.is_on for c in info.children) else "off"
        else:
            state = None if info.relay_on is None else ("on" if info.relay_on else "off")
        mac = normalize_mac(info.mac)
        if mac is None:
            raise ProtocolError(f"reply from {host} has no valid MAC ({info.mac!r})")
        return cls(
            host=host, port=port, mac=mac, alias=info.alias, model=info.model,
            hw_ver=info.hw_ver, sw_ver=info.sw_ver, device_id=info.device_id, state=state,
            protocol=PROTOCOL_XOR, controllable=True, children=info.children,
            interface=interface, via=via, raw=info.raw,
        )

    @classmethod
    @_parser
    def from_tdp(
        cls, host: str, port: int, result: dict[str, Any], *, interface: str | None = None,
        via: str = "udp",
    ) -> DiscoveredPlug:
        """A device that answered the TDP v2 probe on 20002/20004 (KLAP or AES firmware)."""
        mac = normalize_mac(result.get("mac"))
        if mac is None:
            raise ProtocolError(f"TDP answer from {host} has no valid MAC")
        scheme = result.get("mgt_encrypt_schm") or {}
        if not isinstance(scheme, dict):
            raise ValueError("mgt_encrypt_schm is not an object")
        encrypt = str(scheme.get("encrypt_type") or "").lower()
        protocol = encrypt or PROTOCOL_KLAP
        note = KLAP_NOTE if protocol == PROTOCOL_KLAP else (
            f"firmware speaks {protocol.upper()} only (port 9999 closed): no local control"
        )
        return cls(
            host=host, port=port, mac=mac, alias="",
            model=str(result.get("device_model", "")),
            hw_ver=str(result.get("hw_ver") or result.get("hardware_version") or ""),
            sw_ver=str(result.get("firmware_version") or ""),
            device_id=str(result.get("device_id", "")), state=None, protocol=protocol,
            controllable=False, interface=interface, via=via, note=note, raw=result,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "mac": self.mac,
            "alias": self.alias,
            "model": self.model,
            "hw_ver": self.hw_ver,
            "sw_ver": self.sw_ver,
            "device_id": self.device_id,
            "state": self.state,
            "protocol": self.protocol,
            "controllable": self.controllable,
            "children": [
                {"index": c.index, "id": c.id, "alias": c.alias,
                 "state": "on" if c.is_on else "off"}
                for c in self.children
            ],
            "interface": self.interface,
            "via": self.via,
            "note": self.note,
        }


@dataclass(frozen=True)
class ClockSet:
    """How :func:`hs100local.ops.correct_clock` set a plug's clock."""

    method: str  # "set_timezone" or "set_time"
    tz_index: int  # the zone in effect: the one asked for, or the one the plug kept
    sent: str  # the local time sent, ISO 8601 without zone
    refused: str | None = None  # set_timezone's error when set_time had to be used
    #: the host's monotonic clock when it went out (where the read-back waits from)
    sent_monotonic: float | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tz_index": self.tz_index,
            "sent": self.sent,
            "refused": self.refused,
        }
