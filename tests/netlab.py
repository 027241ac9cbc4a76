"""Throwaway network labs in Linux network namespaces, for tests and benchmarks.

Loopback cannot show what a real LAN does to us: broadcast discovery, hosts that
have no default route, frames that get lost. A :class:`Lab` builds a small LAN out
of namespaces instead: each :class:`Host` is a namespace with its own interfaces and
routes, each :class:`Bridge` is a Linux bridge (a switch) living in one hidden
"switch" namespace, and :meth:`Lab.connect` cables a host to a bridge with a veth
pair. Nothing is routed to or from the real network, and no default route is ever
added, so traffic can only reach the addresses the lab hands out (use 198.18.0.0/15,
the benchmarking range)::

    with netlab.Lab() as lab:
        sw = lab.add_bridge("br0")
        plug, ctl = lab.add_host("plug"), lab.add_host("ctl")
        plug_ip = lab.connect(plug, sw, "eth0", "198.18.0.11/24")
        lab.connect(ctl, sw, "eth0", "198.18.0.2/24")
        ctl.run([sys.executable, "-c", "..."])

Start many servers in parallel, not one after another: spawn them all first, then
wait for each one's ready line, so their start-up times overlap instead of adding
up::

    procs = [host.spawn([...], ready="listening") for host in hosts]
    for proc in procs:
        proc.wait_ready()

Everything a lab creates is named ``f"{prefix}-{name}"`` (the switch namespace is
``f"{prefix}-sw"``). Closing the lab (``with`` block, :meth:`Lab.close`, or as a
last resort garbage collection / interpreter exit) kills every process in its
namespaces and deletes them. A run that died before that (SIGKILL, power loss)
leaves namespaces behind; the next lab with the same prefix removes them first.

Needs root and iproute2; tests call :func:`require_netns` to skip (or, with
``HS100LOCAL_REQUIRE_NETNS=1``, fail) where that is missing. Frame loss prefers
``tc netem`` and falls back to an nftables bridge rule on kernels built without
netem. Only the standard library is used (pytest is imported lazily).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import ipaddress
import json
import os
import re
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from types import TracebackType

import prockit  # a sibling module (standard library only)

REQUIRE_ENV = "HS100LOCAL_REQUIRE_NETNS"

#: Linux limit for interface names (IFNAMSIZ - 1).
IFNAME_MAX = 15
#: Lines of stdout/stderr a :class:`Proc` keeps; bounded so a chatty server can run for long.
KEEP_LINES = 5000

_NAME = re.compile(r"[A-Za-z0-9_]+")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+")
_SWITCH = "sw"
_TAIL_CHARS = 2000

#: Prefixes of labs open in this process: a second lab with the same prefix would
#: delete the first one's namespaces as "stale", so that is refused instead.
_LIVE_PREFIXES: set[str] = set()


class NetlabError(AssertionError):
    """A lab operation failed. An AssertionError so pytest reports it as a test failure."""


class CommandError(NetlabError):
    """A command exited non-zero (or timed out); carries everything needed to see why."""

    def __init__(
        self, argv: list[str], returncode: int | None, stdout: str, stderr: str, why: str = ""
    ) -> None:
        self.argv, self.returncode, self.stdout, self.stderr = argv, returncode, stdout, stderr
        what = why or f"exited with {returncode}"
        super().__init__(
            f"{argv!r} {what}\n--- stdout ---\n{_tail(stdout)}\n--- stderr ---\n{_tail(stderr)}"
        )


def _tail(text: str, limit: int = _TAIL_CHARS) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


def _env(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    """Extra variables go *on top of* ours: a child without PATH cannot even find python."""
    return None if extra is None else {**os.environ, **extra}


def _run(
    argv: list[str],
    *,
    timeout: float = 60,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run, but a timeout kills the whole process group, not just the leader.

    ``ip netns exec`` children may fork; killing only the direct child would leave
    the rest holding our pipes open and communicate() would hang.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(env),
        start_new_session=True,
        preexec_fn=prockit.default_signals,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException as exc:  # timeout, KeyboardInterrupt: never leave the group behind
        _killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise CommandError(argv, None, out, err, f"timed out after {timeout:g} s") from None
        raise
    result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, out, err)
    return result


def _tool(name: str) -> str:
    """A system tool's full path when found (tc and nft live in /sbin, /usr/sbin), else its name."""
    return prockit.find_tool(name) or name


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --------------------------------------------------------------------------- availability


def netns_unavailable_reason() -> str | None:
    """Why labs cannot be built here, or None if they can.

    Cheap checks first (and uncached, so tests can monkeypatch them); the probe
    that really creates a namespace, a bridge and a veth runs once per process,
    because containers often allow ``ip netns add`` yet lack the bridge module.
    """
    if os.geteuid() != 0:
        return "network namespace labs need root (euid 0)"
    if prockit.find_tool("ip") is None:
        return "network namespace labs need iproute2 (no `ip` on PATH nor in /usr/sbin, /sbin)"
    return _probe()


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    ns = f"hslprobe{os.getpid() % 100000}"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "-n", ns, "link", "add", "pbr", "type", "bridge"],
        ["ip", "-n", ns, "link", "add", "pv0", "type", "veth", "peer", "name", "pv1"],
    ]
    try:
        _run(["ip", "netns", "del", ns], check=False, timeout=10)  # left by a crashed probe
        for argv in steps:
            _run(argv, timeout=10)
    except (OSError, CommandError) as exc:
        first = str(exc).strip().splitlines()
        return f"cannot build network namespace labs: {first[0] if first else exc!r}"
    finally:
        _run(["ip", "netns", "del", ns], check=False, timeout=10)
    return None


def require_netns() -> None:
    """Skip the calling test if labs are unavailable; fail instead when REQUIRE_ENV=1.

    CI sets the variable on runners that must have namespaces, so a broken runner
    shows up red instead of quietly skipping the whole network suite.
    """
    import pytest

    reason = netns_unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------- namespaces


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``, minus the ``(id: N)``)."""
    out = _run(["ip", "netns", "list"], timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _owned(prefix: str, ns: str) -> bool:
    """True for ``{prefix}-{name}``; names never contain "-", so "a" does not own "a-b-c"."""
    head = f"{prefix}-"
    return ns.startswith(head) and _NAME.fullmatch(ns[len(head) :]) is not None


def _delete_namespace(ns: str) -> None:
    """Kill whatever still runs in ``ns``, then delete it.

    Deleting alone is not enough: the namespace (with its veths and bound ports)
    lives on as long as any process is inside it.
    """
    pids = _run(["ip", "netns", "pids", ns], check=False, timeout=10).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run(["ip", "netns", "del", ns], check=False, timeout=10)


def remove_namespaces(prefix: str) -> list[str]:
    """Delete every namespace belonging to ``prefix`` (killing its processes); return them."""
    doomed = [ns for ns in list_namespaces() if _owned(prefix, ns)]
    # Hosts before the switch, so no veth is left dangling into a dying namespace.
    doomed.sort(key=lambda ns: ns == f"{prefix}-{_SWITCH}")
    for ns in doomed:
        _delete_namespace(ns)
    return doomed


def _finalize(prefix: str) -> None:
    """Last-resort cleanup for a lab that was never closed (GC or interpreter exit)."""
    _LIVE_PREFIXES.discard(prefix)
    remove_namespaces(prefix)


# --------------------------------------------------------------------------- processes


class Proc:
    """A long-running process in a namespace; its output is read by two daemon threads.

    Reader threads (instead of polling) let :meth:`wait_ready` wake the moment the
    ready line arrives, and draining stderr means a chatty child never blocks on a
    full pipe.
    """

    def __init__(self, argv: list[str], popen: subprocess.Popen[str], ready: str | None) -> None:
        self.argv = argv
        self.popen = popen
        self.ready = ready
        self.ready_line: str | None = None
        self._stdout: collections.deque[str] = collections.deque(maxlen=KEEP_LINES)
        self._stderr: collections.deque[str] = collections.deque(maxlen=KEEP_LINES)
        self._event = threading.Event()  # set on the ready line or on stdout EOF
        self._eof = False
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True, name=f"netlab-out-{popen.pid}"),
            threading.Thread(target=self._read_stderr, daemon=True, name=f"netlab-err-{popen.pid}"),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        try:
            for line in self.popen.stdout:
                self._stdout.append(line)
                if self.ready_line is None and self.ready is not None and self.ready in line:
                    self.ready_line = line.rstrip("\n")
                    self._event.set()
        finally:
            self._eof = True
            self._event.set()
            self.popen.stdout.close()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        try:
            for line in self.popen.stderr:
                self._stderr.append(line)
        finally:
            self.popen.stderr.close()

    @property
    def stdout_text(self) -> str:
        """Stdout read so far (the last KEEP_LINES lines); complete after :meth:`wait`."""
        return "".join(self._stdout)

    @property
    def stderr_text(self) -> str:
        """Stderr read so far (the last KEEP_LINES lines); complete after :meth:`wait`."""
        return "".join(self._stderr)

    def wait_ready(self, timeout: float = 15) -> str:
        """Block until a stdout line contains ``ready``; return that line (without newline).

        Raises :class:`NetlabError` with the output tails if the process exits first
        or ``timeout`` passes. Without a ``ready`` text there is nothing to wait for
        and "" is returned at once, so mixed lists can use the same spawn-then-wait loop.
        """
        if self.ready is None:
            return ""
        self._event.wait(timeout)
        if self.ready_line is not None:
            return self.ready_line
        if self._eof:
            try:
                rc: int | None = self.popen.wait(5)
            except subprocess.TimeoutExpired:
                rc = None
            self._join(1)
            why = f"closed stdout (exit code {rc}) before printing {self.ready!r}"
        else:
            why = f"did not print {self.ready!r} within {timeout:g} s"
        raise NetlabError(
            f"{self.argv!r} {why}\n--- stdout ---\n{_tail(self.stdout_text)}"
            f"\n--- stderr ---\n{_tail(self.stderr_text)}"
        )

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit on its own; return its exit code.

        Also waits (briefly) for the readers, so stdout_text/stderr_text are complete.
        """
        rc = self.popen.wait(timeout)
        self._join(2)
        return rc

    def stop(self) -> int:
        """SIGTERM the process group, SIGKILL after 5 s; return the exit code."""
        stop_all([self])
        return self.popen.returncode

    def _join(self, timeout: float) -> None:
        # A grandchild that escaped the group may hold the pipe open; don't hang on it.
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def stop_all(procs: Iterable[Proc], grace: float = 5) -> None:
    """Stop many processes with one shared grace period instead of one each.

    Signals go to process groups (each Proc is its own session), so children the
    program forked die with it. The group is signalled before the leader is reaped:
    once reaped, its pid could be reused.
    """
    running = [p for p in procs if p.popen.poll() is None]
    for p in running:
        _killpg(p.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in running:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _killpg(p.popen.pid, signal.SIGKILL)
            p.popen.wait()
    for p in procs:
        p._join(1)


# --------------------------------------------------------------------------- lab objects


class Bridge:
    """A Linux bridge in the lab's switch namespace; ``ports`` are its veth ends there."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ports: list[str] = []
        self.loss: int = 0  # percent currently applied (kept so later ports get it too)
        self.loss_method: str | None = None

    def __repr__(self) -> str:
        return f"Bridge({self.name!r}, ports={self.ports!r}, loss={self.loss})"


class Host:
    """A network namespace standing in for one machine on the lab LAN."""

    def __init__(self, lab: Lab, name: str, ns: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r})"

    def cmd(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(
        self,
        argv: list[str],
        *,
        timeout: float = 60,
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion in the namespace (text mode, output captured).

        ``env`` is merged on top of os.environ. With ``check``, a non-zero exit or a
        timeout raises :class:`CommandError` (an AssertionError) showing argv, exit
        code, stdout and stderr.
        """
        return _run(self.cmd(argv), timeout=timeout, check=check, input=input, env=env)

    def spawn(
        self, argv: list[str], *, ready: str | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        """Start a long-running process in the namespace; the lab stops it on close.

        It gets its own session (so it and its children can be killed as a group),
        default signal dispositions (whatever this process ignores or blocks) and
        stdin from /dev/null. Its ready line must be flushed (python: ``-u`` or
        ``print(..., flush=True)``). Call :meth:`Proc.wait_ready` afterwards,
        ideally after spawning everything else you need (see the module docstring).
        """
        full = self.cmd(argv)
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(env),
            start_new_session=True,
            preexec_fn=prockit.default_signals,
        )
        proc = Proc(argv, popen, ready)
        self.lab._procs.append(proc)
        return proc

    def addresses(self) -> list[str]:
        """IPv4 addresses in this namespace, loopback excluded, in interface order."""
        out = _run(["ip", "-n", self.ns, "-4", "-j", "addr", "show"], timeout=10).stdout
        found = []
        for link in json.loads(out or "[]"):
            if link.get("ifname") == "lo":
                continue
            for info in link.get("addr_info", []):
                local = info.get("local")
                if local and not ipaddress.ip_address(local).is_loopback:
                    found.append(local)
        return found


class Lab:
    """A set of namespaces, bridges and processes that all go away together.

    Use as a context manager. Construction first removes namespaces a crashed
    earlier run with the same prefix left behind, so a fixed prefix is self-healing.
    """

    def __init__(self, prefix: str | None = None) -> None:
        prefix = prefix if prefix is not None else f"hsl{os.getpid() % 100000}"
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"lab prefix must match {_PREFIX.pattern}: {prefix!r}")
        if prefix in _LIVE_PREFIXES:
            raise NetlabError(
                f"a lab with prefix {prefix!r} is already open in this process; "
                "close it first or pass a different prefix="
            )
        self.prefix = prefix
        self.hosts: dict[str, Host] = {}
        self.bridges: dict[str, Bridge] = {}
        self._procs: list[Proc] = []
        self._switch: str | None = None
        self._veths = 0
        self._netem: bool | None = None  # None: not tried yet on this kernel
        self._closed = False
        _LIVE_PREFIXES.add(prefix)
        self._finalizer = weakref.finalize(self, _finalize, prefix)
        remove_namespaces(prefix)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise
            # Don't let a cleanup hiccup mask the error that is already propagating.

    @property
    def switch_ns(self) -> str:
        """The hidden namespace holding every bridge; created on first use."""
        if self._switch is None:
            self._switch = self._new_namespace(_SWITCH)
        return self._switch

    def _new_namespace(self, name: str) -> str:
        self._check_open()
        ns = f"{self.prefix}-{name}"
        _run(["ip", "netns", "add", ns], timeout=10)
        try:
            _run(["ip", "-n", ns, "link", "set", "lo", "up"], timeout=10)
        except BaseException:
            _delete_namespace(ns)
            raise
        return ns

    def _check_open(self) -> None:
        if self._closed:
            raise NetlabError(f"lab {self.prefix!r} is closed")

    def add_host(self, name: str) -> Host:
        """A new namespace ``{prefix}-{name}`` with only ``lo`` (up)."""
        if not _NAME.fullmatch(name) or name == _SWITCH:
            raise ValueError(f"host name must match {_NAME.pattern} and not be {_SWITCH!r}")
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        host = Host(self, name, self._new_namespace(name))
        self.hosts[name] = host
        return host

    def add_bridge(self, name: str) -> Bridge:
        """A bridge (STP off, so ports forward at once) in the switch namespace, up."""
        _check_ifname(name)
        if name in self.bridges:
            raise ValueError(f"bridge {name!r} already exists")
        sw = self.switch_ns
        _run(["ip", "-n", sw, "link", "add", name, "type", "bridge", "stp_state", "0"], timeout=10)
        _run(["ip", "-n", sw, "link", "set", name, "up"], timeout=10)
        bridge = Bridge(name)
        self.bridges[name] = bridge
        return bridge

    def connect(self, host: Host, bridge: Bridge, ifname: str, cidr: str) -> str:
        """Cable ``host`` to ``bridge``: ``ifname`` in the host gets ``cidr``; returns the address.

        The veth is created directly between the two namespaces, so nothing ever
        appears in the root namespace. The broadcast address is set (``brd +``) so
        directed broadcasts work. No default route is added: on purpose, traffic
        can only reach the lab subnets.
        """
        self._check_open()
        _check_ifname(ifname)
        iface = ipaddress.ip_interface(cidr)
        if iface.version != 4:
            raise ValueError(f"only IPv4 is supported: {cidr!r}")
        self._veths += 1
        peer = f"v{self._veths}"
        sw = self.switch_ns
        _run(
            ["ip", "-n", sw, "link", "add", peer, "type", "veth",
             "peer", "name", ifname, "netns", host.ns],
            timeout=10,
        )  # fmt: skip
        _run(["ip", "-n", sw, "link", "set", peer, "master", bridge.name, "up"], timeout=10)
        bridge.ports.append(peer)
        brd = ["broadcast", "+"] if iface.network.prefixlen <= 30 else []
        _run(["ip", "-n", host.ns, "addr", "add", cidr, *brd, "dev", ifname], timeout=10)
        _run(["ip", "-n", host.ns, "link", "set", ifname, "up"], timeout=10)
        if bridge.loss:
            self.set_loss(bridge, bridge.loss)  # the new port must drop frames too
        return str(iface.ip)

    def set_loss(self, bridge: Bridge, percent: int) -> str:
        """Drop ``percent``% of the frames ``bridge`` forwards (either way); return the method.

        netem on each port's egress when the kernel has it ("netem"); otherwise an
        nftables bridge-family table matching the bridge's ports ("nftables"). The
        choice is made once per lab. Each forwarded copy of a frame is dropped
        independently, so a broadcast may reach some hosts and not others, as on Wi-Fi.
        """
        if not 0 <= percent <= 100:
            raise ValueError(f"loss percent must be 0..100: {percent!r}")
        self._check_open()
        if percent == 0:
            self.clear_loss(bridge)
            return bridge.loss_method or ("netem" if self._netem else "nftables")
        if self._netem is not False and self._try_netem(bridge, percent):
            method = "netem"
        else:
            self._nft_loss(bridge, percent)
            method = "nftables"
        bridge.loss, bridge.loss_method = percent, method
        return method

    def _try_netem(self, bridge: Bridge, percent: int) -> bool:
        """Apply netem to every port; False (and remember it) if this kernel has no netem."""
        for port in bridge.ports:
            argv = [_tool("tc"), "qdisc", "replace", "dev", port, "root", "netem", "loss",
                    f"{percent}%"]
            try:
                result = _run(["ip", "netns", "exec", self.switch_ns, *argv], check=False)
            except FileNotFoundError:
                self._netem = False
                return False
            if result.returncode != 0:
                if self._netem is None and _lacks_netem(result.stderr):
                    self._netem = False
                    return False
                raise CommandError(argv, result.returncode, result.stdout, result.stderr)
            self._netem = True
        # A bridge without ports yet: nothing to do now; connect() re-applies the loss.
        return self._netem is not False

    def _nft_loss(self, bridge: Bridge, percent: int) -> None:
        # Bridge-family forward hook sees every frame the bridge forwards, once per copy.
        # Frames are matched by ingress port: `meta ibrname` needs a module many
        # kernels lack. Declaring, deleting and re-adding the table in one script is
        # an atomic replace that also works when the table does not exist yet.
        table = _nft_table(bridge)
        rule = ""
        if bridge.ports:
            ports = ", ".join(f'"{p}"' for p in bridge.ports)
            rule = f"iifname {{ {ports} }} numgen random mod 100 < {percent} drop"
        script = (
            f"table bridge {table} {{}}\n"
            f"delete table bridge {table}\n"
            f"table bridge {table} {{\n"
            f"  chain lossy {{\n"
            f"    type filter hook forward priority 0; policy accept;\n"
            f"    {rule}\n"
            f"  }}\n"
            f"}}\n"
        )
        _run(["ip", "netns", "exec", self.switch_ns, _tool("nft"), "-f", "-"], input=script,
             timeout=10)

    def clear_loss(self, bridge: Bridge) -> None:
        """Undo :meth:`set_loss` on ``bridge`` (a no-op if no loss is set)."""
        self._check_open()
        if bridge.loss_method == "netem":
            for port in bridge.ports:
                _run(
                    ["ip", "netns", "exec", self.switch_ns, _tool("tc"), "qdisc", "del", "dev",
                     port, "root"],
                    check=False,
                    timeout=10,
                )  # fmt: skip
        elif bridge.loss_method == "nftables":
            table = _nft_table(bridge)
            _run(
                ["ip", "netns", "exec", self.switch_ns, _tool("nft"), "delete", "table", "bridge",
                 table],
                timeout=10,
            )
        bridge.loss, bridge.loss_method = 0, None

    def close(self) -> None:
        """Stop spawned processes (SIGTERM, then SIGKILL), kill stragglers, delete namespaces.

        Idempotent. Raises :class:`NetlabError` if some namespace survived.
        """
        if self._closed:
            return
        self._closed = True
        try:
            stop_all(self._procs)
        finally:
            self._finalizer()  # kills anything left in our namespaces, deletes them
        left = [ns for ns in list_namespaces() if _owned(self.prefix, ns)]
        if left:
            raise NetlabError(f"namespaces survived lab close: {left}")


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAME_MAX or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"bad interface name (1..{IFNAME_MAX} chars of [A-Za-z0-9_.-]): {name!r}")


def _nft_table(bridge: Bridge) -> str:
    return "loss_" + re.sub(r"[^A-Za-z0-9_]", "_", bridge.name)


def _lacks_netem(stderr: str) -> bool:
    text = stderr.lower()
    return "unknown" in text or "not supported" in text or "no such file" in text
