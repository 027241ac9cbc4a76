"""`hs100local serve`: DNS + NTP + cloud listener + time keeper + discovery in one process.

One asyncio loop runs every service, so a Raspberry Pi or a router pays for one
Python process. The order matters: every socket is bound first (ports below 1024
need root or CAP_NET_BIND_SERVICE), then privileges are dropped, then the
periodic tasks start. SIGHUP re-reads the config file and applies what can change
without rebinding (sinkhole rules and TTL, per-plug zones, time keeper threshold)
and re-reads the plug list that events are attributed with (see
:mod:`hs100local.attribution`; discovery refreshes it too); a bad file is
refused with one log line and the running settings stay. SIGTERM and SIGINT
stop the services and flush the event store before exiting.

Logs go to stderr, one line per notable event: the first time in a minute a
client does a thing (the event store folds the repeats the same way), plus what
the time keeper and discovery did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hs100local.attribution import PlugDirectory, known_plugs
from hs100local.config import ConfigError, ServeConfig, db_path, load, zone_index
from hs100local.errors import one_line

log = logging.getLogger("hs100local.serve")

#: inventory change kinds that are firmware events (a KLAP update is a protocol change)
FIRMWARE_CHANGES = ("firmware", "protocol")


class LoggingSink:
    """An event sink that attributes each event to a plug, passes it to the store, and
    logs one line when the store starts a new row: the first occurrence of each (kind,
    client, details) in a minute, since the store folds the repeats."""

    def __init__(self, store: Any, directory: PlugDirectory | None = None) -> None:
        self.store = store
        self.directory = directory
        #: events since start per (kind, plug MAC or None): counters for /metrics that
        #: only grow (the store folds repeats and prunes old rows)
        self.tally: Counter[tuple[str, str | None]] = Counter()

    def record(self, kind: str, client: str | None, details: dict[str, Any],
               *, at: float | None = None, plug: str | None = None) -> None:
        if plug is None and self.directory is not None:
            plug = self.directory.plug_for(client)
        self.tally[kind, plug] += 1
        if self.store.record(kind, client, details, at=at, plug=plug):
            shown = " ".join(f"{k}={v}" for k, v in details.items() if v not in (None, "", []))
            who = client or "-"
            if plug is not None and self.directory is not None:
                who += f" ({self.directory.alias(plug) or plug})"
            # Names and SNIs come from the network: escaped, they cannot start a forged
            # log line or send escape sequences to a terminal.
            logging.getLogger(f"hs100local.{kind}").info("%s", one_line(f"{who} {shown}"))

    def count(self, kind: str, key: str, n: int = 1, *, client: str | None = None) -> None:
        self.store.count(kind, key, n, client=client)


def drop_privileges(user: str, writable: list[Path]) -> None:
    """Become ``user`` (when root); first hand it the files it must keep writing."""
    import grp
    import pwd

    if os.getuid() != 0:
        log.info("not root: staying user %s (no privileges to drop)", os.getuid())
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"'user': no such user {user!r}") from None
    for path in writable:
        if path.exists():
            os.chown(path, entry.pw_uid, entry.pw_gid)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    os.setgroups(groups)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("dropped privileges to %s (uid %d)", user, entry.pw_uid)


class Daemon:
    """The running services of one ``serve`` process."""

    def __init__(self, config: ServeConfig, *, config_path: str | None = None,
                 overrides: Callable[[ServeConfig], ServeConfig] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides or (lambda c: c)
        self.store: Any = None
        self.events: LoggingSink | None = None
        self.directory = PlugDirectory()
        self.services: list[Any] = []
        self.dns: Any = None
        self.keeper: Any = None
        self.dashboard: Any = None
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    # ----------------------------------------------------------- start/stop

    async def start(self) -> None:
        from hs100local.events import EventStore

        config = self.config
        path = db_path(config)
        self.store = EventStore(path, retention_days=config.retention_days,
                                max_db_bytes=int(config.max_db_mb * 1024 * 1024))
        self.directory = PlugDirectory(await asyncio.to_thread(known_plugs, path))
        self.events = LoggingSink(self.store, self.directory)
        try:
            await self._start_services()
            if config.user:
                drop_privileges(config.user, [path, path.parent, Path(f"{path}-wal"),
                                              Path(f"{path}-shm")])
        except BaseException:
            await self.close()
            raise
        self._start_periodic()

    async def _start_services(self) -> None:
        config = self.config
        if config.dns:
            self.dns = self._dns_server(config)
            await self._add(self.dns)
        if config.ntp:
            from hs100local.ntp.clock import ClockState
            from hs100local.ntp.server import NtpServer
            from hs100local.ratelimit import RateLimiter

            clock = ClockState(stratum=config.stratum, assume_synced=config.assume_synced)
            await self._add(NtpServer(
                list(config.ntp), clock=clock, events=self.events,
                limiter=RateLimiter(config.ntp_rate_limit, max(8.0, 2 * config.ntp_rate_limit))))
        if config.cloud:
            await self._add(self._cloud_listener(config))
        if config.web.listen:
            await self._add(self._web_server(config))

    def _web_server(self, config: ServeConfig) -> Any:
        from hs100local.web.app import Dashboard
        from hs100local.web.server import HttpServer

        self.dashboard = Dashboard(config, db=db_path(config),
                                   tally=self.events.tally if self.events else None)
        server = HttpServer(list(config.web.listen), self.dashboard.handle)
        self.dashboard.http_stats = server.stats
        return server

    def _dns_server(self, config: ServeConfig) -> Any:
        import ipaddress

        from hs100local.dns.forward import Forwarder, system_upstreams, without_self
        from hs100local.dns.server import DnsServer, RateLimiter

        upstreams = without_self(list(config.upstream) or system_upstreams(), list(config.dns))
        if not upstreams:
            raise ConfigError("'upstream': no upstream DNS server (give upstream = "
                              "[\"ADDR\"]; /etc/resolv.conf names none but us)")
        nets = [ipaddress.IPv4Network(n, strict=False) for n in config.allow] or None
        return DnsServer(sinkhole_of(config), Forwarder(upstreams), list(config.dns),
                         allow=nets, events=self.events,
                         limiter=RateLimiter(config.dns_rate_limit, 2 * config.dns_rate_limit))

    def _cloud_listener(self, config: ServeConfig) -> Any:
        from hs100local.ratelimit import RateLimiter
        from hs100local.tls.cert import ensure_certificate
        from hs100local.tls.listener import CloudListener

        certificate = None
        if config.cloud_mode == "handshake":
            certificate = ensure_certificate(db_path(config).parent / "tls")
        return CloudListener(list(config.cloud), mode=config.cloud_mode,
                             certificate=certificate, events=self.events,
                             limiter=RateLimiter(config.cloud_rate_limit,
                                                 max(10.0, 2 * config.cloud_rate_limit)))

    async def _add(self, service: Any) -> None:
        try:
            await service.start()
        except OSError as exc:
            raise OSError(exc.errno, f"{type(service).__name__} on "
                          f"{', '.join(f'{h}:{p}' for h, p in service.listen)}: "
                          f"{exc.strerror or exc}") from None
        self.services.append(service)

    def _start_periodic(self) -> None:
        config = self.config
        if config.time_interval > 0:
            from hs100local.inventory import Inventory
            from hs100local.timekeeper import TimeKeeper

            self.keeper = TimeKeeper(Inventory(db_path(config)), events=self.events,
                                     threshold=config.time_threshold,
                                     zones=dict(config.zones), default_zone=zone_index(config))
            self._tasks.append(asyncio.create_task(
                self.keeper.run_forever(config.time_interval, self.stop)))
        if config.discover_interval > 0:
            self._tasks.append(asyncio.create_task(self._discover_forever()))
        if self.dashboard is not None:
            self._tasks.append(asyncio.create_task(self.dashboard.run(self.stop)))

    async def _discover_forever(self) -> None:
        """Discovery at start and every ``discover_interval``: new plugs, moved plugs,
        firmware changes (the inventory records them; a change is an event too)."""
        from hs100local.discovery import discover
        from hs100local.inventory import record_async

        config = self.config
        while not self.stop.is_set():
            try:
                found = await discover(interfaces=list(config.interfaces) or None)
                changes = await record_async(found.plugs, db_path(config))
                if changes:
                    await self.refresh_plugs()
                    if self.dashboard is not None:
                        self.dashboard.wake()
                for change in changes:
                    log.info("discovery: %s", change.describe())
                    if self.events is not None:
                        kind = "firmware" if change.kind in FIRMWARE_CHANGES else "discovery"
                        self.events.record(kind, None, change.as_dict(), plug=change.mac)
            except Exception:  # a pass failing must not end the daemon
                log.exception("discovery pass failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), config.discover_interval)

    async def refresh_plugs(self) -> None:
        """Re-read the inventory for attribution (after discovery, on SIGHUP)."""
        self.directory.load(await asyncio.to_thread(known_plugs, db_path(self.config)))

    async def close(self) -> None:
        self.stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for service in reversed(self.services):
            try:
                await service.close()
            except Exception:  # pragma: no cover - keep closing the others
                log.exception("closing %s", type(service).__name__)
        self.services.clear()
        if self.keeper is not None:
            self.keeper.inventory.close()
        if self.store is not None:
            self.store.close()  # flushes

    # --------------------------------------------------------------- reload

    def reload(self) -> bool:
        """SIGHUP: re-read the file; apply rules, TTL, zones, threshold. False if refused."""
        if self.config_path is None:
            log.info("SIGHUP: no config file to reload")
            return False
        try:
            fresh = self.overrides(load(self.config_path))
        except ConfigError as exc:
            log.error("SIGHUP: config refused, keeping the running one: %s", exc)
            return False
        rebind = [k for k in ("dns", "ntp", "cloud", "db", "user", "upstream", "web")
                  if getattr(fresh, k) != getattr(self.config, k)]
        if rebind:
            log.warning("SIGHUP: %s changed; that needs a restart", ", ".join(rebind))
        if self.dns is not None:
            self.dns.sinkhole = sinkhole_of(fresh)
        if self.keeper is not None:
            self.keeper.threshold = fresh.time_threshold
            self.keeper.default_zone = zone_index(fresh)
            self.keeper.set_zones(dict(fresh.zones))
        self.config = fresh
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.ensure_future(self.refresh_plugs()))
        log.info("SIGHUP: reloaded %s (%d sinkhole rules)", self.config_path,
                 len(sinkhole_of(fresh).rules))
        return True

    def describe(self) -> str:
        parts = []
        for service in self.services:
            name = type(service).__name__.replace("Server", "").replace("Listener", "")
            if name == "Http":
                parts.append("dashboard on " + ", ".join(
                    f"http://{h}:{p}/" for h, p in service.bound))
                continue
            parts.append(f"{name.upper()} on {', '.join(f'{h}:{p}' for h, p in service.bound)}")
        return "; ".join(parts) + f"; events in {db_path(self.config)}"


def sinkhole_of(config: ServeConfig) -> Any:
    from hs100local.dns.rules import Sinkhole, default_rules, parse_rule

    rules = (default_rules() if config.default_rules else []) + [
        parse_rule(r) for r in config.sinkhole]
    return Sinkhole(rules, ttl=config.ttl)


async def run(config: ServeConfig, *, config_path: str | None = None,
              overrides: Callable[[ServeConfig], ServeConfig] | None = None,
              ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT; ``ready`` gets the one-line description once bound."""
    daemon = Daemon(config, config_path=config_path, overrides=overrides)
    await daemon.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        if ready is not None:
            ready(daemon.describe())
        await daemon.stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await daemon.close()
