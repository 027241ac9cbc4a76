"""Keep the plugs' clocks right: check every plug, set the wrong ones, say what was done.

Why: the plugs have no battery-backed clock. After a power cut one reads 2000-01-01
and its schedules and countdowns answer ``-11 "time not sync"`` until something sets
it, and a cloud-free plug only gets time if its NTP names are answered locally. The
keeper is the fallback and the check on that path: ``hs100local time sync --all``
runs one pass, ``serve`` runs passes periodically.

A pass costs one round trip per plug when nothing is wrong (``get_sysinfo``,
``get_time`` and ``get_timezone`` merged; a power strip is one device with one clock,
so it is checked once). A plug is set when its clock was lost (a year before 2010),
it restarted (a relay that was on both times has a smaller ``on_time`` than last
pass: the reboot may have left a stale clock), its clock is more than ``threshold``
seconds off, or its zone is not the one wanted. Setting uses ``set_timezone`` with a
full date (works on every firmware seen), then ``set_time`` in the plug's own zone
when that is refused, then reads back. The sysinfo's MAC is checked first: DHCP may
have given the address to another device, whose clock is none of our business.

A plug that refuses both methods (or takes them and keeps a wrong clock) is left
alone for ``refused_backoff`` seconds instead of being asked again every pass.
Events (kind ``"time"``) are recorded for what was done or went wrong (``fixed``,
``refused``, ``unreachable``), not for plugs that were fine or skipped, so a
periodic pass over a healthy network writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from hs100local import ops
from hs100local.errors import DeviceError, Hs100Error, ProtocolError
from hs100local.results import (
    CLOCK_LOST_BEFORE,
    PROTOCOL_XOR,
    PlugTime,
    SysInfo,
    normalize_mac,
)
from hs100local.timezones import wall_time_problem
from hs100local.transport import TcpTransport

if TYPE_CHECKING:
    from hs100local.inventory import Inventory, PlugRecord

log = logging.getLogger("hs100local.timekeeper")

EVENT_KIND = "time"
#: what :attr:`TimeCheck.status` can be
STATUSES = ("ok", "fixed", "refused", "unreachable", "backoff")
#: firmware zone indices are 0..109
_ZONES = range(110)

Relays = dict[str, tuple[bool, int]]  # outlet id ("" for a plug) -> (on, on_time)


class EventSink(Protocol):
    """Where events go: :class:`hs100local.events.EventStore` or anything like it."""

    def record(self, kind: str, client: str | None, details: dict[str, Any], *,
               plug: str | None = None) -> Any: ...


@dataclass(frozen=True)
class TimeCheck:
    """What one pass found and did for one plug.

    ``status``: ``ok`` (nothing to do), ``fixed`` (set and read back within the
    threshold), ``refused`` (the plug would not take a time), ``unreachable`` (no
    answer, not the protocol, or ``moved``: another device answers at the address),
    ``backoff`` (refused recently, or the wall time to send is ambiguous: not set this
    pass). ``reasons`` says why the
    clock was set: ``clock_lost``, ``reboot``, ``offset``, ``zone`` (or ``moved``).
    Offsets are plug minus host in seconds; ``tz_index`` is the plug's zone after
    the check, ``tz_wanted`` the one the keeper asked for. ``error`` explains a
    status other than ok/fixed; on an ok or fixed plug it tells why the zone is not
    the wanted one (``set_timezone`` was refused, so ``set_time`` set the clock).
    """

    mac: str
    alias: str
    host: str
    port: int
    status: str
    reasons: tuple[str, ...] = ()
    offset_before_s: float | None = None
    offset_after_s: float | None = None
    method: str | None = None
    tz_index: int | None = None
    tz_wanted: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "alias": self.alias,
            "host": self.host,
            "port": self.port,
            "status": self.status,
            "reasons": list(self.reasons),
            "offset_before_s": _round(self.offset_before_s),
            "offset_after_s": _round(self.offset_after_s),
            "method": self.method,
            "tz_index": self.tz_index,
            "tz_wanted": self.tz_wanted,
            "error": self.error,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _relays(info: SysInfo) -> Relays:
    if info.children:
        return {c.id: (c.is_on, c.on_time) for c in info.children}
    return {"": (bool(info.relay_on), info.on_time)}


def _restarted(before: Relays, now: Relays) -> bool:
    """A relay on both times whose on-time went backwards: the plug restarted.

    (Switching it off and on between passes looks the same; setting the clock
    once more then is harmless.)
    """
    for key, (on, on_time) in now.items():
        was_on, was_time = before.get(key, (False, 0))
        if on and was_on and on_time < was_time:
            return True
    return False


def _valid_zone(index: int | None) -> int | None:
    return index if index in _ZONES else None


def _refusal(exc: DeviceError) -> str:
    """Both errors when set_timezone and set_time were refused."""
    first = exc.__cause__
    return f"{first}; {exc}" if isinstance(first, DeviceError) else str(exc)


class TimeKeeper:
    """Check and set the clocks of the inventory's plugs; remembers between passes.

    ``zones`` overrides the wanted zone index per plug, keyed by MAC (any spelling)
    or alias (case-insensitive); the others get ``default_zone``, or this host's
    zone when None (looked up each pass). ``now`` is the host clock (Unix time):
    plugs are set to it and backoffs measured on it, so a test can move it.
    """

    def __init__(
        self,
        inventory: Inventory,
        *,
        events: EventSink | None = None,
        threshold: float = 2.0,
        zones: Mapping[str, int] | None = None,
        default_zone: int | None = None,
        timeout: float = 3.0,
        refused_backoff: float = 3600.0,
        concurrency: int = 16,
        now: Callable[[], float] = time.time,
    ) -> None:
        if threshold < 0 or timeout <= 0 or refused_backoff < 0 or concurrency < 1:
            raise ValueError(
                "threshold and refused_backoff must not be negative, timeout must be "
                "positive, concurrency at least 1"
            )
        if default_zone is not None and default_zone not in _ZONES:
            raise ValueError(f"default zone index {default_zone} is not in 0..109")
        self.inventory = inventory
        self.events = events
        self.threshold = threshold
        self.default_zone = default_zone
        self.timeout = timeout
        self.refused_backoff = refused_backoff
        self.concurrency = concurrency
        self.now = now
        self._zone_by_mac: dict[str, int] = {}
        self._zone_by_alias: dict[str, int] = {}
        self.set_zones(zones or {})
        self._seen: dict[str, Relays] = {}  # MAC -> relays at the last answer
        self._refused: dict[str, tuple[float, str]] = {}  # MAC -> (retry at, why)
        self._zone_refused: dict[str, str] = {}  # MAC -> why set_timezone was refused
        #: the checks of the last finished pass (for a daemon's status page)
        self.last: list[TimeCheck] = []

    def set_zones(self, zones: Mapping[str, int]) -> None:
        """Replace the per-plug zone overrides (``serve`` does on SIGHUP); checked first,
        so a bad mapping leaves the old one in place."""
        by_mac: dict[str, int] = {}
        by_alias: dict[str, int] = {}
        for key, index in zones.items():
            if isinstance(index, bool) or index not in _ZONES:
                raise ValueError(f"zone index {index!r} for {key!r} is not in 0..109")
            mac = normalize_mac(key)
            if mac is not None:
                by_mac[mac] = index
            else:
                by_alias[key.strip().casefold()] = index
        self._zone_by_mac, self._zone_by_alias = by_mac, by_alias

    # ------------------------------------------------------------------ passes

    async def run_once(self) -> list[TimeCheck]:
        """Check every controllable XOR plug of the inventory, concurrently (at most
        ``concurrency`` at once); one plug's failure is its own TimeCheck, not the pass's."""
        records = [r for r in self.inventory.plugs() if r.protocol == PROTOCOL_XOR
                   and r.controllable]
        default = self.default_zone
        if default is None:
            from hs100local.timezones import host_index

            default = host_index()
        known = {r.mac for r in records}
        memories = (self._seen, self._refused, self._zone_refused)
        for memory in memories:  # forget plugs the inventory forgot
            for mac in [m for m in memory if m not in known]:
                del memory[mac]
        limit = asyncio.Semaphore(self.concurrency)

        async def bounded(record: PlugRecord) -> TimeCheck:
            async with limit:
                check = await self._check(record, self._wanted(record, default))
            self._report(check)
            return check

        self.last = list(await asyncio.gather(*(bounded(r) for r in records)))
        return self.last

    async def run_forever(self, interval: float, stop: asyncio.Event) -> None:
        """A pass every ``interval`` seconds (start to start) until ``stop`` is set.

        A pass that fails is logged and the next one runs on schedule; setting
        ``stop`` also cancels a pass in progress (a clock half set is set again
        by the next run, so nothing is left worse than it was).
        """
        if interval <= 0:
            raise ValueError("interval must be positive")
        loop = asyncio.get_running_loop()
        stopped = asyncio.ensure_future(stop.wait())
        running: asyncio.Future[list[TimeCheck]] | None = None
        try:
            while not stop.is_set():
                started = loop.time()
                running = asyncio.ensure_future(self.run_once())
                await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not running.done():
                    return  # stopped mid-pass; the finally cancels the pass
                if running.exception() is not None:
                    log.error("time keeper pass failed; next pass in %g s", interval,
                              exc_info=running.exception())
                # asyncio.wait, unlike wait_for, leaves the stop future alone on timeout
                await asyncio.wait({stopped}, timeout=max(started + interval - loop.time(), 0))
        finally:
            stopped.cancel()
            if running is not None and not running.done():
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running

    # --------------------------------------------------------------- one plug

    def _wanted(self, record: PlugRecord, default: int) -> int:
        by_mac = self._zone_by_mac.get(record.mac)
        if by_mac is not None:
            return by_mac
        return self._zone_by_alias.get(record.alias.strip().casefold(), default)

    def _host_now(self, tz_index: int) -> datetime:
        """The keeper's clock as wall time in plug zone ``tz_index`` (naive)."""
        from hs100local.timezones import zoneinfo_for

        return datetime.fromtimestamp(self.now(), zoneinfo_for(tz_index)).replace(tzinfo=None)

    def _offset(self, clock: PlugTime, tz_index: int) -> float | None:
        """Plug minus host in seconds; None when the plug reports an impossible date."""
        try:
            return ops.plug_offset(clock, self._host_now(tz_index))
        except ProtocolError:
            return None

    async def _check(self, record: PlugRecord, wanted: int) -> TimeCheck:
        def result(status: str, **fields: Any) -> TimeCheck:
            return TimeCheck(record.mac, record.alias, record.host, record.port, status,
                             tz_wanted=wanted, **fields)

        refused = self._refused.get(record.mac)
        if refused is not None:
            retry_at, why = refused
            if self.now() < retry_at:
                wait = retry_at - self.now()
                return result("backoff", error=f"{why} (next try in {wait:.0f} s)")
        try:
            async with TcpTransport(record.host, record.port, timeout=self.timeout) as plug:
                return await self._check_plug(record, wanted, plug, result)
        except DeviceError as exc:  # the plug answered, but not to a time read
            return self._refuse(record, result, (), str(exc))
        except (Hs100Error, OSError) as exc:
            return result("unreachable", error=str(exc) or type(exc).__name__)

    def _refuse(
        self, record: PlugRecord, result: Callable[..., TimeCheck], reasons: tuple[str, ...],
        why: str, **fields: Any,
    ) -> TimeCheck:
        self._refused[record.mac] = (self.now() + self.refused_backoff, why)
        return result("refused", reasons=reasons, error=why, **fields)

    async def _check_plug(
        self, record: PlugRecord, wanted: int, plug: TcpTransport,
        result: Callable[..., TimeCheck],
    ) -> TimeCheck:
        info, clock = await ops.run_async(ops.time_status(), plug.query)
        moved = self._moved(record, info)
        if moved is not None:
            return result("unreachable", reasons=("moved",), error=moved)
        before, relays = self._seen.get(record.mac), _relays(info)
        self._seen[record.mac] = relays
        zone = _valid_zone(clock.tz_index)
        offset = self._offset(clock, wanted if zone is None else zone)
        reasons: list[str] = []
        if clock.year < CLOCK_LOST_BEFORE or offset is None:
            reasons.append("clock_lost")
        if before is not None and _restarted(before, relays):
            reasons.append("reboot")
        if offset is not None and abs(offset) > self.threshold:
            reasons.append("offset")
        # A plug without get_timezone cannot tell its zone: it is set, not flagged.
        # Nor is a zone the plug would not change last time (set_timezone refused):
        # the clock was set in its own zone, and redoing that every pass helps nobody.
        zone_refused = self._zone_refused.get(record.mac)
        wrong_zone = clock.tz_index is not None and clock.tz_index != wanted
        if wrong_zone and zone_refused is None:
            reasons.append("zone")
        if not reasons:
            self._refused.pop(record.mac, None)
            note = f"zone {clock.tz_index} kept: {zone_refused}" if wrong_zone else None
            return result("ok", offset_before_s=offset, tz_index=zone, error=note)

        ambiguous = wall_time_problem(wanted, self._host_now(wanted))
        if ambiguous is not None:  # the hour the clocks go back: wall time names two
            return result("backoff", reasons=tuple(reasons), offset_before_s=offset,
                          tz_index=zone, error=f"not set this pass: now {ambiguous}")
        keep = wanted if zone is None else zone
        try:
            done = await ops.run_async(ops.correct_clock(wanted, keep, self._host_now),
                                       plug.query)
        except DeviceError as exc:
            return self._refuse(record, result, tuple(reasons), _refusal(exc),
                                offset_before_s=offset, tz_index=zone)
        # Read back half a second after the (second-aligned) set: see ops.sync_time.
        sent = done.sent_monotonic if done.sent_monotonic is not None else time.monotonic()
        (info, after), _wall, _mid = await ops.run_async(
            ops.read_back(sent, self._host_now, done.tz_index, ops.time_status), plug.query)
        moved = self._moved(record, info)
        if moved is not None:  # reconnected to another device half-way: say so
            return result("unreachable", reasons=("moved",), error=moved)
        self._seen[record.mac] = _relays(info)  # the read-back is the newer observation
        zone_after = _valid_zone(after.tz_index)
        offset_after = self._offset(after, done.tz_index if zone_after is None else zone_after)
        fields: dict[str, Any] = {"offset_before_s": offset, "offset_after_s": offset_after,
                                  "method": done.method, "tz_index": zone_after}
        if (after.year < CLOCK_LOST_BEFORE or offset_after is None
                or abs(offset_after) > self.threshold):
            # Firmware that answers 0 and keeps its clock would be set every pass.
            shown = "an impossible date" if offset_after is None else f"{offset_after:+.1f} s off"
            why = (f"{done.method} was accepted but the clock reads {after.isoformat()} "
                   f"({shown})")
            return self._refuse(record, result, tuple(reasons), why, **fields)
        self._refused.pop(record.mac, None)
        if done.refused is None:
            self._zone_refused.pop(record.mac, None)
        else:
            self._zone_refused[record.mac] = done.refused
        return result("fixed", reasons=tuple(reasons), error=done.refused, **fields)

    @staticmethod
    def _moved(record: PlugRecord, info: SysInfo) -> str | None:
        found = normalize_mac(info.mac)
        if found == record.mac:
            return None
        who = f"MAC {found}" if found else "a device without a valid MAC"
        return (f"moved: {who} answers at {record.host}:{record.port}, not {record.mac}; "
                "run discovery to find the plug again")

    # ---------------------------------------------------------------- report

    def _report(self, check: TimeCheck) -> None:
        """Log and record an event for what was done or went wrong."""
        if check.status in ("ok", "backoff"):
            log.debug("%s (%s): %s", check.alias, check.mac, check.status)
            return
        if check.status == "fixed":
            log.info("%s (%s) at %s: clock set via %s (%s), %s -> %s s", check.alias,
                     check.mac, check.host, check.method, ", ".join(check.reasons),
                     _round(check.offset_before_s), _round(check.offset_after_s))
        else:
            log.warning("%s (%s) at %s: %s: %s", check.alias, check.mac, check.host,
                        check.status, check.error)
        if self.events is None:
            return
        details = {
            "mac": check.mac,
            "alias": check.alias,
            "port": check.port,
            "reasons": list(check.reasons),
            "offset_before_s": _round(check.offset_before_s),
            "offset_after_s": _round(check.offset_after_s),
            "method": check.method,
            "tz_index": check.tz_index,
            "tz_wanted": check.tz_wanted,
            "outcome": "moved" if "moved" in check.reasons else check.status,
            "error": check.error,
        }
        try:
            # The keeper addressed this plug itself: the event is the plug's by its MAC,
            # never by an address another plug may share (emulators, one NAT).
            self.events.record(EVENT_KIND, check.host, details, plug=check.mac)
        except Exception:  # a closed store must not cost the pass its results
            log.exception("cannot record time event for %s", check.mac)
