"""`hs100local demo`: the whole product on loopback, in a few seconds.

Why it exists: the README's first command has to show what the companion is *for*,
on any Linux machine, without root, without a plug, and without sending a single
packet beyond loopback. So it runs the real thing, in this process: ``serve``'s
daemon (DNS sinkhole, NTP server, cloud listener and event store) on free loopback
ports, and three emulated plugs that behave like plugs just after a power cut, each
on its own loopback address (127.0.0.2, .3, .4: Linux routes all of 127/8 on ``lo``)
so that the companion tells their traffic apart exactly as it tells real plugs
apart, by source address. The plugs were recorded in the inventory by a unicast
discovery (never a broadcast), their DNS server is the companion's, and they do
what a plug does: look up a time server, ask it for the time, and keep trying
their cloud over TLS, pinned to a CA the companion's certificate does not come from.

The demo waits for those conditions (a deadline, not a sleep), then runs the real
commands a user would type, in-process, and prints them with their output: switch
a plug by its alias, ``plugs``, ``events``, ``report``. Then it stops everything
it started (plugs, daemon, event store, its loop and thread) and removes its
temporary database, also on Ctrl-C or an error; nothing stays bound.

Two things differ from real plugs, to fit in a few seconds: they retry the cloud
and resync their clock every couple of seconds (a real plug: about a minute and
hourly). The second time request shows that the first one set the clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hs100local.errors import Hs100Error

if TYPE_CHECKING:
    import asyncio
    import threading

    from hs100local.emulator.cloud import CloudStats, PlugCloud
    from hs100local.emulator.server import EmulatorServer
    from hs100local.serve import Daemon

#: (alias, emulator model, loopback address) of the demo's plugs
PLUGS = (
    ("Desk lamp", "hs110", "127.0.0.2"),
    ("Power strip", "hs300", "127.0.0.3"),
    ("Kettle", "hs100", "127.0.0.4"),
)
#: seconds between a plug's cloud attempts and between its clock syncs (real: 60, 3600)
RETRY = 2.0
#: cloud attempts and NTP answers each plug should have had before the commands run
WANT_ATTEMPTS = 2
WANT_SYNCS = 2
#: seconds to wait for that (then the demo shows what it has and says what is missing)
WAIT = 10.0
#: seconds for starting, settling and stopping (each a bound, never a sleep)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


#: the exit code of a command the user interrupted (the CLI's, for Ctrl-C)
INTERRUPTED = 130


class DemoError(Hs100Error):
    """The demo could not start (an address it needs, the companion, discovery)."""


def run_demo(*, db: str | os.PathLike[str] | None, echo: Callable[[str], None],
             command: Callable[[list[str]], int]) -> int:
    """Run the demo; 0 when every plug showed the whole story, 1 if something was
    missing or a command failed. A ``db`` whose folder does not exist is a
    :class:`~hs100local.errors.TargetError` (usage, exit 2).

    ``db``: keep the database there (else a temporary folder, removed at the end).
    ``echo`` prints one line; ``command(args)`` runs one hs100local command in this
    process, printing its output, and returns its exit code. Start failures raise
    :class:`DemoError` (one line from the CLI).
    """
    import tempfile
    import time

    started = time.monotonic()
    if db is not None:
        path = Path(db)
        if not path.parent.is_dir():
            from hs100local.errors import TargetError

            raise TargetError(f"--db {path}: the folder {path.parent} does not exist")
        code = _Demo(path, echo, command, temporary=False).run()
        echo(f"Stopped everything the demo started; {time.monotonic() - started:.1f} s.")
        return code
    with tempfile.TemporaryDirectory(prefix="hs100local-demo-") as folder:
        code = _Demo(Path(folder) / "demo.db", echo, command, temporary=True).run()
    echo(f"Stopped everything the demo started and removed {folder}; "
         f"{time.monotonic() - started:.1f} s.")
    return code


class _Demo:
    """One run: the lab in its thread, the output and the commands in the calling one."""

    def __init__(self, db: Path, echo: Callable[[str], None],
                 command: Callable[[list[str]], int], *, temporary: bool) -> None:
        self.db = db
        self.echo = echo
        self.command = command
        self.temporary = temporary
        self.failed = 0

    def run(self) -> int:
        import time

        started = time.monotonic()
        lab = _Lab(self.db)
        try:
            lab.start()
            self._intro(lab)
            missing = lab.wait_for_story(WAIT)
            waited = time.monotonic() - started
            lab.settle()  # the plugs stop: what follows reads a still picture
            self._story(lab, missing, waited)
            self._commands()
        finally:
            lab.stop()
        self._next()
        return 1 if missing or self.failed else 0

    # ------------------------------------------------------------- output

    def _intro(self, lab: _Lab) -> None:
        echo = self.echo
        echo("hs100local demo: the cloud-isolation companion and three emulated plugs, all on")
        echo("loopback (no root; nothing is sent beyond this machine).")
        echo("")
        echo("Companion (the daemon of 'hs100local serve'):")
        echo(f"  DNS {_at(lab.dns)} (cloud and time-server names answered with its own address),")
        echo(f"  NTP {_at(lab.ntp)}, cloud listener {_at(lab.cloud)} (TLS: records every attempt),")
        if self.temporary:
            echo(f"  database {self.db} (a temporary folder, removed at the end)")
        else:
            echo(f"  database {self.db} (kept; the listener's certificate in "
                 f"{self.db.parent / 'tls'})")
        echo("Plugs, recorded in the inventory by a unicast discovery, each on its own address;")
        echo("clocks lost as after a power cut (2000-01-01), the companion as their DNS server,")
        echo("their cloud pinned to TP-Link's CA as on a real plug:")
        width = max(len(alias) for alias, _m, _h in PLUGS)
        for server in lab.servers:
            spec = server.plug.spec
            outlets = f"  ({spec.outlets} outlets)" if spec.outlets else ""
            echo(f"  {server.plug.alias:<{width}}  {spec.model:<10} "
                 f"{server.host}:{server.port:<5}  {server.plug.mac}{outlets}")
        echo("Like real plugs they look up a time server and their cloud, ask for the time and try")
        echo(f"TLS; here every {RETRY:g} s (a real plug: every minute, and its clock hourly).")
        echo("")
        echo("Waiting for each plug to get its time and try the cloud ...")

    def _story(self, lab: _Lab, missing: list[str], waited: float) -> None:
        """What each plug did, as it saw it (the commands show the companion's view)."""
        width = max(len(alias) for alias, _m, _h in PLUGS)
        for server, cloud in zip(lab.servers, lab.clouds, strict=True):
            stats, plug = cloud.stats, server.plug
            clock = (f"clock set by our NTP, now {plug.plug_now():%Y-%m-%d %H:%M:%S}"
                     if stats.ntp_syncs else "clock NOT set")
            self.echo(f"  {plug.alias:<{width}}  {clock}; cloud tried {stats.cloud_attempts}x: "
                      f"{_counts(stats.outcomes) or '-'}")
        if missing:
            self.echo(f"Not everything happened within {WAIT:g} s; missing:")
            for item in missing:
                self.echo(f"  - {item}")
        else:
            self.echo("Every plug got its time from the companion and tried the cloud, which is "
                      "the companion too;")
            self.echo("each plug hung up by itself: unknown_ca is the alert a plug sends for a "
                      "certificate not")
            self.echo(f"from the CA it pins ({waited:.1f} s since the start).")
        self.echo("")

    def _shown(self, args: list[str]) -> str:
        """The command as a user types it (the temporary database is not theirs to name)."""
        import shlex

        db = [] if self.temporary else ["--db", str(self.db)]
        return "$ " + shlex.join(["hs100local", *db, *args])

    def _commands(self) -> None:
        lamp, strip = PLUGS[0][0], PLUGS[1][0]
        steps = [
            (["-H", lamp, "on"], ["Switch a plug by its alias (the inventory knows where it is):"]),
            (["-H", strip, "-c", "2", "on"], ["... or one outlet of the strip:"]),
            (["plugs"], ["The inventory:"]),
            (["events", "--since", "5m"], ["What the companion recorded:"]),
            (["report"], ["Per plug: its cloud attempts, refused by its own CA pinning; its "
                          "clock, served by", "our NTP; and the verdict:"]),
        ]
        for args, title in steps:
            for text in title:
                self.echo(text)
            self.echo(self._shown(args))
            code = self.command(["--db", str(self.db), *args])
            if code == INTERRUPTED:  # Ctrl-C inside the command: stop here too
                raise KeyboardInterrupt
            if code:
                self.failed += 1
                self.echo(f"(exit code {code})")
            self.echo("")

    def _next(self) -> None:
        echo = self.echo
        echo("Next, with your own plugs:")
        echo("  hs100local discover      # find them on your network and record them")
        echo("  hs100local serve --config /etc/hs100local/hs100local.toml")
        echo("                           # the companion for real; see examples/ in the source")
        echo("                           # (a commented config, a systemd unit, OpenWrt)")
        if not self.temporary:
            echo("What this demo recorded stays readable:")
            for args in (["events", "--since", "1h"], ["report"]):
                echo(f"  {self._shown(args)[2:]}")


def _at(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


class _Lab:
    """The plugs and the companion, on one asyncio loop in one background thread.

    The calling thread submits coroutines (:meth:`_call`) and waits for them with a
    bound; :meth:`stop` cancels whatever is still running there, closes everything,
    and ends the loop and the thread.
    """

    def __init__(self, db: Path) -> None:
        self.db = db
        self.servers: list[EmulatorServer] = []
        self.clouds: list[PlugCloud] = []
        self.behaviours: list[asyncio.Task[None]] = []
        self.daemon: Daemon | None = None
        self.dns = self.ntp = self.cloud = ("127.0.0.1", 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: set[asyncio.Task[Any]] = set()

    # --------------------------------------------------------- plumbing

    def _call(self, coroutine: Any, timeout: float) -> Any:
        """Run ``coroutine`` on the lab's loop; its result, or its exception."""
        import asyncio
        import concurrent.futures

        assert self._loop is not None
        running = self._running

        async def tracked() -> Any:
            task = asyncio.current_task()
            assert task is not None
            running.add(task)
            try:
                return await coroutine
            finally:
                running.discard(task)

        future = asyncio.run_coroutine_threadsafe(tracked(), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise DemoError(f"the demo's services did not answer within {timeout:g} s") from None

    def start(self) -> None:
        import asyncio
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="hs100local-demo", daemon=True)
        self._thread.start()
        self._call(self._start(), START_TIMEOUT)

    def stop(self) -> None:
        """Stop everything, whatever state the start reached. Never raises."""
        import logging

        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if thread.is_alive():
                try:
                    self._call(self._close(), STOP_TIMEOUT)
                finally:
                    loop.call_soon_threadsafe(loop.stop)
                    thread.join(STOP_TIMEOUT)
            if not thread.is_alive():
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()
        except BaseException as exc:  # report it; do not hide the error that got us here
            logging.getLogger("hs100local.demo").error("stopping the demo: %r", exc)
        self._loop = None

    # ------------------------------------------------- on the lab's loop

    async def _start(self) -> None:
        import asyncio
        import socket

        from hs100local import config as cfg
        from hs100local.discovery import discover
        from hs100local.emulator import MODELS, EmulatedPlug
        from hs100local.emulator.cloud import CloudSettings, PlugCloud
        from hs100local.emulator.plug import POWER_ON_CLOCK
        from hs100local.emulator.server import EmulatorServer
        from hs100local.inventory import record_async
        from hs100local.ntp.server import NtpServer
        from hs100local.serve import Daemon
        from hs100local.timezones import host_index
        from hs100local.tls.listener import CloudListener

        zone = host_index()
        for alias, model, host in PLUGS:
            plug = EmulatedPlug(MODELS[model], alias=alias, tz_index=zone,
                                clock_start=POWER_ON_CLOCK)
            server = EmulatorServer(plug, host, 0)
            try:
                await server.start()
            except OSError as exc:
                raise DemoError(f"cannot listen on {host} for the plug {alias!r}: "
                                f"{exc.strerror or exc} (the demo needs the loopback "
                                f"addresses 127.0.0.2-4, as Linux has)") from None
            self.servers.append(server)

        # Record the plugs before the daemon starts: it reads the inventory to tell
        # whose traffic it sees. Unicast to each plug, never a broadcast.
        found = await discover(targets=[(s.host, s.port) for s in self.servers],
                               broadcast=False, timeout=3.0, expect=len(self.servers))
        if len(found.plugs) < len(self.servers):
            raise DemoError(f"discovery found {len(found.plugs)} of the "
                            f"{len(self.servers)} emulated plugs on loopback")
        await record_async(found.plugs, self.db)

        # Names that are not sinkholed would go upstream: a closed loopback port (the
        # plugs only ask sinkholed names, and nothing may leave this machine).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        config = cfg.from_mapping({
            "dns": "127.0.0.1:0", "ntp": "127.0.0.1:0", "cloud": "127.0.0.1:0",
            "upstream": f"127.0.0.1:{closed_port}", "db": str(self.db),
            "assume-synced": True, "time-interval": 0, "discover-interval": 0,
        }, "demo")
        self.daemon = Daemon(config)
        try:
            await self.daemon.start()
        except OSError as exc:
            raise DemoError(f"cannot start the companion: {exc.strerror or exc}") from None
        for service in self.daemon.services:
            if isinstance(service, NtpServer):
                self.ntp = service.bound[0]
            elif isinstance(service, CloudListener):
                self.cloud = service.bound[0]
        self.dns = self.daemon.dns.bound[0]

        for server in self.servers:
            settings = CloudSettings(dns=self.dns, cloud_port=self.cloud[1],
                                     ntp_port=self.ntp[1], retry=RETRY, resync=RETRY,
                                     timeout=3.0)
            cloud = PlugCloud(server.plug, settings, source=server.host)
            self.clouds.append(cloud)
            self.behaviours.append(asyncio.ensure_future(cloud.run()))

    def _missing(self) -> list[str]:
        """What is not yet seen, per plug, on its side and on the companion's."""
        assert self.daemon is not None and self.daemon.events is not None
        tally = self.daemon.events.tally
        missing = []
        for server, cloud in zip(self.servers, self.clouds, strict=True):
            mac, stats = server.plug.mac, cloud.stats
            lacks = []
            if not tally["dns", mac]:
                lacks.append("no DNS lookup recorded")
            if stats.ntp_syncs < WANT_SYNCS or tally["ntp", mac] < WANT_SYNCS:
                lacks.append(f"{min(stats.ntp_syncs, tally['ntp', mac])} of {WANT_SYNCS} "
                             f"NTP answers")
                if stats.time_outcomes:
                    lacks[-1] += f" (it saw: {_counts(stats.time_outcomes)})"
            if _refused(stats) < WANT_ATTEMPTS or tally["tls", mac] < WANT_ATTEMPTS:
                lacks.append(f"{min(_refused(stats), tally['tls', mac])} of {WANT_ATTEMPTS} "
                             f"cloud attempts refused by its CA pinning")
                if stats.outcomes:
                    lacks[-1] += f" (it saw: {_counts(stats.outcomes)})"
            if lacks:
                missing.append(f"{server.plug.alias}: {'; '.join(lacks)}")
        return missing

    def _unrecorded(self) -> list[str]:
        """Plugs whose NTP answers or refused cloud attempts the companion has not all
        recorded yet (it records an attempt when the plug's alert has arrived)."""
        assert self.daemon is not None and self.daemon.events is not None
        tally = self.daemon.events.tally
        return [server.plug.alias for server, cloud in zip(self.servers, self.clouds, strict=True)
                if tally["ntp", server.plug.mac] < cloud.stats.ntp_syncs
                or tally["tls", server.plug.mac] < _refused(cloud.stats)]

    @staticmethod
    async def _poll(missing: Callable[[], list[str]], timeout: float) -> list[str]:
        """Check ``missing()`` until it is empty or the time is up; what it said last.
        Polled: the counters it reads (the plugs' and the companion's) move on this
        loop but have no common event to await."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := missing()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return left

    def wait_for_story(self, timeout: float) -> list[str]:
        """Wait until each plug looked up and got its time and tried the cloud; what
        is still missing after ``timeout`` (empty: all there)."""
        return self._call(self._poll(self._missing, timeout), timeout + 5.0)

    async def _settle_plugs(self, timeout: float) -> None:
        """Stop the plugs' time and cloud behaviour between two cloud attempts, never
        in the middle of one (which the listener would record as a connection the
        plug closed); then write every event to the database."""
        import asyncio
        import contextlib

        async def settle(cloud: PlugCloud, behaviour: asyncio.Task[None]) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                while not _between_attempts(cloud.stats):
                    await cloud.wait_until(_between_attempts, deadline - loop.time())
            # No await since the check: the next attempt cannot have started.
            behaviour.cancel()

        await asyncio.gather(*(settle(c, b) for c, b in
                               zip(self.clouds, self.behaviours, strict=True)))
        await asyncio.gather(*self.behaviours, return_exceptions=True)
        # The listener records an attempt once the plug's alert has arrived: wait for
        # the companion to have recorded what the plugs did, then for the database.
        assert self.daemon is not None and self.daemon.store is not None
        await self._poll(self._unrecorded, 2.0)
        await self.daemon.store.aflush()

    def settle(self) -> None:
        self._call(self._settle_plugs(5.0), 15.0)

    async def _close(self) -> None:
        """Cancel what still runs (a start cut short by Ctrl-C), then stop the plugs'
        behaviour, the emulators and the daemon (its store flushed)."""
        import asyncio
        import contextlib

        current = asyncio.current_task()
        others = [t for t in self._running if t is not current]
        for task in [*others, *self.behaviours]:
            task.cancel()
        await asyncio.gather(*others, *self.behaviours, return_exceptions=True)
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.close()
        if self.daemon is not None:
            await self.daemon.close()


def _counts(table: dict[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(table.items()))


def _refused(stats: CloudStats) -> int:
    """Cloud attempts the plug ended with an alert against our certificate: what the
    report calls refused by the plug's own CA pinning."""
    from hs100local.report import PINNED

    return sum(stats.outcomes.get(o, 0) for o in PINNED)


def _between_attempts(stats: CloudStats) -> bool:
    """True when every cloud attempt begun has its outcome (none is under way)."""
    return stats.cloud_attempts <= sum(stats.outcomes.values())
