"""Device operations as pure, transport-free steps.

An operation is a generator that *yields* request dicts and *receives* the plug's
reply dicts, finally *returning* a typed result. It performs no I/O itself, so the
same operation runs over the asyncio transport (:func:`run_async`, used by the
library and the services) and over the blocking transport (:func:`run_sync`, used
by one-shot CLI commands, which then need not import asyncio at all). Multi-step
logic such as "toggle" or "set the clock, then read it back" lives here once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from hs100local.errors import DeviceError, NotAppliedError, ProtocolError, TargetError
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


@dataclass(frozen=True)
class Pause:
    """Yielded instead of a request: the driver waits ``seconds`` and sends back None.

    Setting a clock well is a matter of timing (send at the start of a second, read
    back half a second later); the operation says when, the driver does the waiting,
    so the operation stays free of I/O and of any particular event loop.
    """

    seconds: float


Op = Generator[Request | Pause, Reply | None, T]

# ----------------------------------------------------------------- drivers


def run_sync(op: Op[T], send: Callable[[Request], Reply],
             sleep: Callable[[float], None] = time.sleep) -> T:
    """Drive an operation with a blocking ``send(request) -> reply``."""
    try:
        step = next(op)
        while True:
            if isinstance(step, Pause):
                sleep(max(step.seconds, 0.0))
                step = op.send(None)
            else:
                step = op.send(send(step))
    except StopIteration as done:
        return done.value


async def run_async(op: Op[T], send: Callable[[Request], Awaitable[Reply]],
                    sleep: Callable[[float], Awaitable[None]] | None = None) -> T:
    """Drive an operation with an async ``send(request) -> reply``."""
    if sleep is None:
        import asyncio  # not at the top: the blocking CLI path never loads asyncio

        sleep = asyncio.sleep
    try:
        step = next(op)
        while True:
            if isinstance(step, Pause):
                await sleep(max(step.seconds, 0.0))
                step = op.send(None)
            else:
                step = op.send(await send(step))
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
    matches = [o for o in info.children if o.alias.casefold() == selector.casefold()]
    if selector.isascii() and selector.isdigit():  # "²".isdigit() is True, int() fails
        index = int(selector)
        if 1 <= index <= len(info.children):
            by_index = info.children[index - 1]
            if any(o is not by_index for o in matches):
                raise TargetError(f"{selector!r} is outlet {index} and the alias of outlet "
                                  f"{matches[0].index}; use the outlet's id")
            return by_index
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
    """Switch the relay (or one outlet); on a strip without ``child`` all outlets. The
    state is read back: a plug that answers 0 and does not switch is an error."""
    ids = yield from _child_ids(child)
    yield from call("system", "set_relay_state", {"state": int(on)}, ids)
    _check_relays((yield from sysinfo()), on, ids)


def _check_relays(info: SysInfo, on: bool, ids: list[str] | None) -> None:
    """Raise :class:`NotAppliedError` unless the switched relays read ``on``."""
    if ids:
        states = [(f"outlet {o.index}", o.is_on) for o in info.children if o.id in ids]
    elif info.children:
        states = [(f"outlet {o.index}", o.is_on) for o in info.children]
    else:
        states = [("the relay", bool(info.relay_on))]
    wrong = [what for what, is_on in states if is_on != on]
    if wrong or not states:
        what = ", ".join(wrong) or "the outlet"
        raise NotAppliedError(f"the plug accepted set_relay_state but {what} is still "
                              f"{'off' if on else 'on'}")


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
    _check_relays((yield from sysinfo()), new, ids)
    return new


def set_led(on: bool) -> Op[None]:
    yield from call("system", "set_led_off", {"off": int(not on)})


def set_led_verified(on: bool) -> Op[None]:
    """Switch the LED, then read it back (a setting is only done when it reads back)."""
    yield from set_led(on)
    if (yield from sysinfo()).led_on != on:
        raise NotAppliedError(f"the plug accepted set_led_off but its LED is still "
                              f"{'off' if on else 'on'}")


def set_alias(alias: str, child: str | None = None) -> Op[None]:
    ids = yield from _child_ids(child)
    yield from call("system", "set_dev_alias", {"alias": alias}, ids)


def set_alias_verified(alias: str, child: str | None = None) -> Op[SysInfo]:
    """Set the alias (of the plug, or the ``child`` outlet), then read it back; returns
    the sysinfo read back."""
    ids = yield from _child_ids(child)
    yield from call("system", "set_dev_alias", {"alias": alias}, ids)
    info = yield from sysinfo()
    now = find_outlet(info, ids[0]).alias if ids else info.alias
    if now != alias:
        raise NotAppliedError(f"the plug accepted the alias {alias!r} but reads back {now!r}")
    return info


def outlet_info(selector: str) -> Op[tuple[SysInfo, OutletInfo, EmeterReading | None]]:
    """One outlet of a strip: the strip, the outlet, and its meter reading if it has one."""
    info = yield from sysinfo()
    outlet = find_outlet(info, selector)
    reading = None
    if info.has_emeter:
        data = yield from call("emeter", "get_realtime", None, [outlet.id])
        reading = EmeterReading.from_dict(data)
    return info, outlet, reading


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
    except (DeviceError, ProtocolError):
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


#: Read a clock back this long after setting it. The plug counts whole seconds from
#: the moment it was set, so half a second later its reading is furthest from a
#: tick either way, and one reading says whether it holds the time to ±0.5 s.
READ_BACK_AFTER = 0.5


def until_next_second(now: datetime) -> float:
    """Seconds from ``now`` to the start of the next whole second (0 on one)."""
    fraction = now.microsecond / 1_000_000
    return 0.0 if fraction == 0 else 1.0 - fraction


def read_back(sent: float, now: Callable[[int], datetime], tz_index: int,
              read: Callable[[], Op[T]], clock: Callable[[], float] = time.monotonic,
              ) -> Op[tuple[T, datetime, float]]:
    """Wait until :data:`READ_BACK_AFTER` after ``sent`` (``clock``, monotonic), run
    ``read()``; returns its result, the host's wall time in zone ``tz_index`` at the
    middle of that round trip (what the reading is compared with), and that middle on
    ``clock``. Durations are measured on ``clock``: wall time in a zone jumps an hour
    twice a year."""
    wait = READ_BACK_AFTER - (clock() - sent)
    if wait > 0:
        yield Pause(wait)
    before = clock()
    result = yield from read()
    after = clock()
    wall = now(tz_index) - timedelta(seconds=(after - before) / 2)
    return result, wall, (before + after) / 2


def sync_time(tz_index: int, now: Callable[[int], datetime],
              clock: Callable[[], float] = time.monotonic) -> Op[TimeSync]:
    """Set the plug to ``now(tz_index)`` (host wall time in that zone), then read back.

    The plug takes whole seconds and starts counting from the moment it is set, so
    the set is sent at the start of one of this host's seconds (a pause of up to a
    second): the plug then ticks with the host instead of up to half a second apart.
    The clock is read back half a second later. ``now`` and ``clock`` are the
    caller's, so this stays free of I/O and testable; :func:`clock_problem` judges
    the result (the caller refuses wall times that are ambiguous first, see
    :func:`hs100local.timezones.wall_time_problem`).
    """
    yield Pause(until_next_second(now(tz_index)))
    sent_at, sent = now(tz_index), clock()
    target = _whole_second(sent_at)
    method = yield from set_clock(target, tz_index)
    read, host_mid, _mid = yield from read_back(sent, now, tz_index, get_time, clock)
    # Measured in the zone the plug says it is in: its own wall clock's error (a zone
    # it kept is reported by clock_problem, not as an offset of whole hours).
    zone = read.tz_index if read.tz_index in range(110) else tz_index
    offset = _offset_or_none(read, host_mid + _zone_shift(now, tz_index, zone))
    return TimeSync(tz_index, target.isoformat(), read, offset, method)


def set_time_verified(when: datetime, tz_index: int, now: Callable[[int], datetime],
                      clock: Callable[[], float] = time.monotonic) -> Op[TimeSync]:
    """Set wall time ``when`` (naive, zone ``tz_index``), read back half a second
    later; the offset is the read-back minus ``when`` plus the time since sending."""
    sent = clock()
    method = yield from set_clock(when, tz_index)
    read, _wall, mid = yield from read_back(sent, now, tz_index, get_time, clock)
    expected = when + timedelta(seconds=mid - sent)
    return TimeSync(tz_index, when.isoformat(), read, _offset_or_none(read, expected), method)


def _offset_or_none(read: PlugTime, expected: datetime) -> float | None:
    try:
        return plug_offset(read, expected)
    except ProtocolError:  # an impossible date read back: clock_problem says so
        return None


def _zone_shift(now: Callable[[int], datetime], wanted: int, zone: int) -> timedelta:
    """How far wall time in ``zone`` is ahead of wall time in ``wanted`` right now."""
    if zone == wanted:
        return timedelta(0)
    return now(zone) - now(wanted)


def clock_problem(result: TimeSync, threshold: float) -> str | None:
    """Why a set clock is not right (for the exit code), or None when it is: the plug
    kept another zone than asked (or cannot say, having refused ``set_timezone``), its
    read-back is an impossible date, or it is off by more than ``threshold``."""
    read = result.read_back
    if read.tz_index is not None and read.tz_index != result.tz_index:
        return (f"the plug accepted {result.method} but kept zone {read.tz_index} instead "
                f"of {result.tz_index} (clock reads {read.isoformat()})")
    if read.tz_index is None and result.method != "set_timezone":
        return (f"the plug refused set_timezone and does not report its zone: the time "
                f"was set with {result.method}, zone {result.tz_index} is not set")
    if result.offset_s is None:
        return f"the plug accepted {result.method} but reads back {read.isoformat()}"
    if abs(result.offset_s) > threshold:
        return (f"the plug accepted {result.method} but its clock reads {read.isoformat()}, "
                f"{result.offset_s:+.1f} s off (more than {threshold:g} s)")
    return None


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


def emeter_history(
    year: int, month: int | None, child: str | None = None
) -> Op[list[tuple[OutletInfo | None, list[EnergyEntry]]]]:
    """Energy per day of ``month`` (per month of ``year`` when ``month`` is None): one
    list for a plug or the ``child`` outlet, one per outlet for a whole strip (the
    strip keeps its statistics per outlet)."""
    if month is None:
        method, params, key = "get_monthstat", {"year": year}, "month_list"
    else:
        method, params, key = "get_daystat", {"year": year, "month": month}, "day_list"
    info = yield from sysinfo()
    if child is not None:
        targets: list[OutletInfo | None] = [find_outlet(info, child)]
    elif info.children:
        targets = list(info.children)
    else:
        targets = [None]
    found: list[tuple[OutletInfo | None, list[EnergyEntry]]] = []
    for outlet in targets:
        ids = None if outlet is None else [outlet.id]
        data = yield from call("emeter", method, params, ids)
        found.append((outlet, _entries(data, key)))
    return found


# ----------------------------------------------------------------------- cloud


def cloud_info() -> Op[CloudInfo]:
    return CloudInfo.from_dict((yield from call("cnCloud", "get_info")))


def cloud_unbind() -> Op[None]:
    yield from call("cnCloud", "unbind")


def cloud_set_server(server: str) -> Op[None]:
    yield from call("cnCloud", "set_server_url", {"server": server})


def cloud_unbind_verified() -> Op[None]:
    """Unbind, then read the binding back."""
    yield from cloud_unbind()
    if (yield from cloud_info()).bound:
        raise NotAppliedError("the plug accepted unbind but is still bound")


def cloud_set_server_verified(server: str) -> Op[None]:
    """Point the cloud client at ``server``, then read it back."""
    yield from cloud_set_server(server)
    now = (yield from cloud_info()).server
    if now != server:
        raise NotAppliedError(f"the plug accepted the server {server!r} but reads back {now!r}")


# ----------------------------------------------------------------------- Wi-Fi


def wifi_scan(refresh: bool = True) -> Op[list[AccessPoint]]:
    data = yield from call("netif", "get_scaninfo", {"refresh": int(refresh)})
    return [AccessPoint.from_dict(a) for a in _items(data, "ap_list")]


def wifi_join(ssid: str, password: str, key_type: int = 3) -> Op[None]:
    """Point the plug at a Wi-Fi network (``key_type`` is required by the firmware)."""
    params = {"ssid": ssid, "password": password, "key_type": key_type}
    yield from call("netif", "set_stainfo", params)


# ----------------------------------------------------------------------- rules


def schedule_rules(child: str | None = None) -> Op[list[dict[str, Any]]]:
    """Schedule rules of the plug, or of the ``child`` outlet of a strip."""
    ids = yield from _child_ids(child)
    data = yield from call("schedule", "get_rules", None, ids)
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
    tz_index: int, keep_index: int, now: Callable[[int], datetime],
    clock: Callable[[], float] = time.monotonic,
) -> Op[ClockSet]:
    """Set the clock to ``now(tz_index)`` with ``set_timezone`` (full date + zone).

    If the firmware refuses that, ``set_time`` with ``now(keep_index)``: the local
    time in the zone the plug keeps. Unlike :func:`set_clock` this falls back even
    when the zones differ, because a right clock in the old zone beats a clock left
    at 2000 (schedules answer -11 until the clock is set). When both are refused,
    ``set_time``'s :class:`DeviceError` is raised with ``set_timezone``'s as its
    ``__cause__``. Reading the clock back is the caller's step.
    """
    yield Pause(until_next_second(now(tz_index)))  # see sync_time: tick with the host
    sent, at = _whole_second(now(tz_index)), clock()
    try:
        yield from call("time", "set_timezone", {"index": tz_index, **_time_params(sent)})
        return ClockSet("set_timezone", tz_index, sent.isoformat(), sent_monotonic=at)
    except DeviceError as exc:
        first = exc
    yield Pause(until_next_second(now(keep_index)))
    sent, at = _whole_second(now(keep_index)), clock()
    try:
        yield from call("time", "set_time", _time_params(sent))
    except DeviceError as exc:
        raise exc from first
    return ClockSet("set_time", keep_index, sent.isoformat(), str(first), sent_monotonic=at)
