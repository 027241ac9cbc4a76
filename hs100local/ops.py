"""Device operations as pure, transport-free steps.

An operation is a generator that *yields* request dicts and *receives* the plug's
reply dicts, finally *returning* a typed result. It performs no I/O itself, so the
same operation runs over the asyncio transport (:func:`run_async`, used by the
library and the services) and over the blocking transport (:func:`run_sync`, used
by one-shot CLI commands, which then need not import asyncio at all). Multi-step
logic such as "toggle" or "set the clock, then read it back" lives here once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from datetime import datetime, timedelta
from typing import Any, TypeVar

from hs100local.errors import DeviceError, ProtocolError, TargetError
from hs100local.protocol import Reply, Request, build_request, merge_requests, method_result
from hs100local.results import (
    AccessPoint,
    ClockSet,
    CloudInfo,
    EmeterReading,
    EnergyEntry,
    OutletInfo,
    PlugTime,
    SysInfo,
    TimeSync,
)

T = TypeVar("T")
Op = Generator[Request, Reply, T]

# ----------------------------------------------------------------- drivers


def run_sync(op: Op[T], send: Callable[[Request], Reply]) -> T:
    """Drive an operation with a blocking ``send(request) -> reply``."""
    try:
        request = next(op)
        while True:
            request = op.send(send(request))
    except StopIteration as done:
        return done.value


async def run_async(op: Op[T], send: Callable[[Request], Awaitable[Reply]]) -> T:
    """Drive an operation with an async ``send(request) -> reply``."""
    try:
        request = next(op)
        while True:
            request = op.send(await send(request))
    except StopIteration as done:
        return done.value


# --------------------------------------------------------------- building blocks


def call(
    module: str,
    method: str,
    params: dict[str, Any] | None = None,
    child_ids: list[str] | None = None,
) -> Op[dict[str, Any]]:
    """One method call; returns its result object or raises :class:`DeviceError`."""
    reply = yield build_request(module, method, params, child_ids)
    return method_result(reply, module, method)


def sysinfo() -> Op[SysInfo]:
    return SysInfo.from_dict((yield from call("system", "get_sysinfo")))


def find_outlet(info: SysInfo, selector: str) -> OutletInfo:
    """Pick a strip outlet by id, 1-based index, or alias (case-insensitive)."""
    if not info.children:
        raise TargetError(f"{info.model or 'this plug'} has no outlets; drop -c/--child")
    for outlet in info.children:
        if outlet.id == selector:
            return outlet
    if selector.isdigit():
        index = int(selector)
        if 1 <= index <= len(info.children):
            return info.children[index - 1]
    matches = [o for o in info.children if o.alias.casefold() == selector.casefold()]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise TargetError(f"alias {selector!r} names {len(matches)} outlets; use the index or id")
    names = ", ".join(f"{o.index}={o.alias!r}" for o in info.children)
    raise TargetError(f"no outlet {selector!r} (outlets: {names})")


def resolve_outlet(selector: str) -> Op[OutletInfo]:
    return find_outlet((yield from sysinfo()), selector)


def _child_ids(selector: str | None) -> Op[list[str] | None]:
    if selector is None:
        return None
    return [(yield from resolve_outlet(selector)).id]


# ---------------------------------------------------------------- relay and LED


def set_relay(on: bool, child: str | None = None) -> Op[None]:
    """Switch the relay (or one outlet); on a strip without ``child`` all outlets."""
    ids = yield from _child_ids(child)
    yield from call("system", "set_relay_state", {"state": int(on)}, ids)


def relay_states(child: str | None = None) -> Op[list[tuple[str | None, bool]]]:
    """``[(outlet alias or None, is_on)]``: one entry for a plug, one per outlet for a strip."""
    info = yield from sysinfo()
    if child is not None:
        outlet = find_outlet(info, child)
        return [(outlet.alias, outlet.is_on)]
    if info.children:
        return [(o.alias, o.is_on) for o in info.children]
    if info.relay_on is None:
        raise ProtocolError("get_sysinfo has neither relay_state nor children")
    return [(None, info.relay_on)]


def toggle(child: str | None = None) -> Op[bool]:
    """Flip the relay; returns the new state. A strip without ``child`` flips as a whole:
    off if any outlet is on, else on (what the vendor app's strip switch does)."""
    info = yield from sysinfo()
    if child is not None:
        outlet = find_outlet(info, child)
        new, ids = not outlet.is_on, [outlet.id]
    elif info.children:
        new, ids = not any(o.is_on for o in info.children), None
    else:
        new, ids = not info.relay_on, None
    yield from call("system", "set_relay_state", {"state": int(new)}, ids)
    return new


def set_led(on: bool) -> Op[None]:
    yield from call("system", "set_led_off", {"off": int(not on)})


def set_alias(alias: str, child: str | None = None) -> Op[None]:
    ids = yield from _child_ids(child)
    yield from call("system", "set_dev_alias", {"alias": alias}, ids)


def reboot(delay: int = 1) -> Op[None]:
    yield from call("system", "reboot", {"delay": delay})


def factory_reset(delay: int = 1) -> Op[None]:
    yield from call("system", "reset", {"delay": delay})


# ------------------------------------------------------------------------ time


def get_time() -> Op[PlugTime]:
    """Clock and zone in one round trip (the plug answers merged requests)."""
    reply = yield merge_requests(
        build_request("time", "get_time"), build_request("time", "get_timezone")
    )
    return _plug_time(reply)


def _plug_time(reply: Reply) -> PlugTime:
    """The clock and zone out of a reply to merged get_time + get_timezone."""
    t = method_result(reply, "time", "get_time")
    try:
        tz: dict[str, Any] | None = method_result(reply, "time", "get_timezone")
    except DeviceError:
        tz = None  # some firmware lacks get_timezone; the clock is still useful
    return PlugTime.from_dicts(t, tz)


def _time_params(when: datetime) -> dict[str, int]:
    return {
        "year": when.year,
        "month": when.month,
        "mday": when.day,
        "hour": when.hour,
        "min": when.minute,
        "sec": when.second,
    }


def set_clock(when: datetime, tz_index: int) -> Op[str]:
    """Set local wall time ``when`` (naive, in zone ``tz_index``).

    ``set_timezone`` with a full date is what works on every firmware seen;
    ``set_time`` answers ``-3`` on some, so it is only the fallback when the zone
    need not change. Returns the method that succeeded.
    """
    params = _time_params(when)
    try:
        yield from call("time", "set_timezone", {"index": tz_index, **params})
        return "set_timezone"
    except DeviceError as first:
        current = yield from get_time()
        if current.tz_index not in (None, tz_index):
            raise first
        yield from call("time", "set_time", params)
        return "set_time"


def plug_offset(plug: PlugTime, host_now: datetime) -> float:
    """Plug clock minus host clock in seconds; ``host_now`` in the plug's zone, naive.

    The plug reports whole seconds (truncated), so half a second is added to put
    the estimate in the middle of the plug's second.
    """
    try:
        reading = datetime(plug.year, plug.month, plug.mday, plug.hour, plug.minute, plug.second)
    except ValueError:
        raise ProtocolError(f"plug reported an impossible time {plug.isoformat()}") from None
    return (reading - host_now).total_seconds() + 0.5


def sync_time(tz_index: int, now: Callable[[int], datetime]) -> Op[TimeSync]:
    """Set the plug to ``now(tz_index)`` (host wall time in that zone), then read back.

    ``now`` is the caller's clock so this stays free of I/O and testable.
    """
    sent = now(tz_index)
    # Round to the nearest second: the plug only takes whole seconds.
    rounded = (sent + timedelta(microseconds=500_000)).replace(microsecond=0)
    yield from set_clock(rounded, tz_index)
    read = yield from get_time()
    offset = plug_offset(read, now(tz_index))
    return TimeSync(tz_index, rounded.isoformat(), read, offset)


# ---------------------------------------------------------------- energy meter


def emeter_realtime(child: str | None = None) -> Op[EmeterReading]:
    ids = yield from _child_ids(child)
    return EmeterReading.from_dict((yield from call("emeter", "get_realtime", None, ids)))


def emeter_strip(child: str | None) -> Op[list[tuple[OutletInfo | None, EmeterReading]]]:
    """Realtime readings: one for a plug or the chosen outlet, one per outlet otherwise."""
    info = yield from sysinfo()
    if child is not None or not info.children:
        outlet = find_outlet(info, child) if child is not None else None
        ids = [outlet.id] if outlet else None
        data = yield from call("emeter", "get_realtime", None, ids)
        return [(outlet, EmeterReading.from_dict(data))]
    readings = []
    for outlet in info.children:
        data = yield from call("emeter", "get_realtime", None, [outlet.id])
        readings.append((outlet, EmeterReading.from_dict(data)))
    return readings


def _items(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The objects in list ``data[key]`` (a missing list is empty, a non-list malformed)."""
    items = data.get(key, [])
    if not isinstance(items, list):
        raise ProtocolError(f"malformed reply: {key} is not a list")
    return [item for item in items if isinstance(item, dict)]


def _entries(data: dict[str, Any], key: str) -> list[EnergyEntry]:
    return [EnergyEntry.from_dict(d) for d in _items(data, key)]


def emeter_daystat(year: int, month: int, child: str | None = None) -> Op[list[EnergyEntry]]:
    ids = yield from _child_ids(child)
    data = yield from call("emeter", "get_daystat", {"year": year, "month": month}, ids)
    return _entries(data, "day_list")


def emeter_monthstat(year: int, child: str | None = None) -> Op[list[EnergyEntry]]:
    ids = yield from _child_ids(child)
    data = yield from call("emeter", "get_monthstat", {"year": year}, ids)
    return _entries(data, "month_list")


# ----------------------------------------------------------------------- cloud


def cloud_info() -> Op[CloudInfo]:
    return CloudInfo.from_dict((yield from call("cnCloud", "get_info")))


def cloud_unbind() -> Op[None]:
    yield from call("cnCloud", "unbind")


def cloud_set_server(server: str) -> Op[None]:
    yield from call("cnCloud", "set_server_url", {"server": server})


# ----------------------------------------------------------------------- Wi-Fi


def wifi_scan(refresh: bool = True) -> Op[list[AccessPoint]]:
    data = yield from call("netif", "get_scaninfo", {"refresh": int(refresh)})
    return [AccessPoint.from_dict(a) for a in _items(data, "ap_list")]


def wifi_join(ssid: str, password: str, key_type: int = 3) -> Op[None]:
    """Point the plug at a Wi-Fi network (``key_type`` is required by the firmware)."""
    params = {"ssid": ssid, "password": password, "key_type": key_type}
    yield from call("netif", "set_stainfo", params)


# ----------------------------------------------------------------------- rules


def schedule_rules() -> Op[list[dict[str, Any]]]:
    data = yield from call("schedule", "get_rules")
    return _items(data, "rule_list")


COUNTDOWN_MODULES = ("count_down", "countdown")


def countdown_rules(child: str | None = None) -> Op[list[dict[str, Any]]]:
    """Countdown rules; firmware spells the module ``count_down`` or ``countdown``.

    Both spellings go in one request; the one the firmware lacks answers -1.
    """
    ids = yield from _child_ids(child)
    requests = (build_request(m, "get_rules", None, ids) for m in COUNTDOWN_MODULES)
    reply = yield merge_requests(*requests)
    errors: list[DeviceError] = []
    for module in COUNTDOWN_MODULES:
        if module not in reply:
            continue
        try:
            data = method_result(reply, module, "get_rules")
        except DeviceError as exc:
            errors.append(exc)
            continue
        return _items(data, "rule_list")
    if errors:
        raise errors[-1]
    raise ProtocolError("reply has neither count_down nor countdown")


# --------------------------------------------------------------- time keeping


def time_status() -> Op[tuple[SysInfo, PlugTime]]:
    """Sysinfo, clock and zone in one round trip (the plug answers merged requests).

    What a periodic clock check needs at once: the MAC (is this still the plug the
    inventory means?), relay ``on_time`` (did it restart?) and the clock itself.
    """
    reply = yield merge_requests(
        build_request("system", "get_sysinfo"),
        build_request("time", "get_time"),
        build_request("time", "get_timezone"),
    )
    info = SysInfo.from_dict(method_result(reply, "system", "get_sysinfo"))
    return info, _plug_time(reply)


def _whole_second(when: datetime) -> datetime:
    """Round to the nearest second: the plug only takes whole seconds."""
    return (when + timedelta(microseconds=500_000)).replace(microsecond=0)


def correct_clock(
    tz_index: int, keep_index: int, now: Callable[[int], datetime]
) -> Op[ClockSet]:
    """Set the clock to ``now(tz_index)`` with ``set_timezone`` (full date + zone).

    If the firmware refuses that, ``set_time`` with ``now(keep_index)``: the local
    time in the zone the plug keeps. Unlike :func:`set_clock` this falls back even
    when the zones differ, because a right clock in the old zone beats a clock left
    at 2000 (schedules answer -11 until the clock is set). When both are refused,
    ``set_time``'s :class:`DeviceError` is raised with ``set_timezone``'s as its
    ``__cause__``. Reading the clock back is the caller's step.
    """
    sent = _whole_second(now(tz_index))
    try:
        yield from call("time", "set_timezone", {"index": tz_index, **_time_params(sent)})
        return ClockSet("set_timezone", tz_index, sent.isoformat())
    except DeviceError as exc:
        first = exc
    sent = _whole_second(now(keep_index))
    try:
        yield from call("time", "set_time", _time_params(sent))
    except DeviceError as exc:
        raise exc from first
    return ClockSet("set_time", keep_index, sent.isoformat(), str(first))
