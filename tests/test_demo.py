"""`hs100local demo` end to end: the real command as a process (the companion and three
emulated plugs on loopback, the commands it shows), what it prints, and what it leaves
behind: no bound port, no temporary database; with --db, a database that ``report``
reads. Ctrl-C and a bad --db are checked too, the interrupted command in-process.

Everything stays on loopback: the tests run with HS100LOCAL_INTERFACES=lo, and the
demo discovers its plugs by unicast only. Nothing sleeps: the processes are awaited
(with a generous bound) and their output read as it comes.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import prockit
import pytest

from hs100local.demo import PLUGS, run_demo
from hs100local.errors import TargetError

REPO = Path(__file__).resolve().parents[1]
ALIASES = [alias for alias, _model, _host in PLUGS]
TIMEOUT = 60.0


def start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    # Default signal dispositions: a test runner may ignore SIGINT, and that is inherited.
    return prockit.spawn([sys.executable, "-m", "hs100local", *args], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(tmp_path: Path, *args: str) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of one hs100local command as a process."""
    started = time.monotonic()
    proc = start(tmp_path, *args)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err, time.monotonic() - started


def printed_ports(out: str) -> list[tuple[str, int, tuple[int, ...]]]:
    """(address, port, socket types) of every service the demo said it ran."""
    tcp, udp = socket.SOCK_STREAM, socket.SOCK_DGRAM
    ports = []
    for label, kinds in (("DNS", (tcp, udp)), ("NTP", (udp,)), ("cloud listener", (tcp,))):
        for host, port in re.findall(rf"{label} (127\.0\.0\.1):(\d+)", out):
            ports.append((host, int(port), kinds))
    for alias in ALIASES:
        for host, port in re.findall(rf"^  {alias}\s+\S+\s+(127\.0\.0\.\d+):(\d+)", out, re.M):
            ports.append((host, int(port), (tcp, udp)))
    return ports


def assert_free(ports: list[tuple[str, int, tuple[int, ...]]]) -> None:
    """Each port can be bound again (TCP as a server would: SO_REUSEADDR, which a
    connection in TIME_WAIT allows and a listening socket does not)."""
    for host, port, kinds in ports:
        for kind in kinds:
            with socket.socket(socket.AF_INET, kind) as sock:
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                if kind == socket.SOCK_STREAM:
                    sock.listen()


def section(out: str, command: str, until: str = "\n\n") -> str:
    """The output of one shown command: from its ``$ hs100local …`` line to ``until``."""
    head = out.index(f"$ {command}\n") + len(f"$ {command}\n")
    return out[head:out.index(until, head)]


def report_blocks(text: str) -> dict[str, str]:
    """The report's text per plug alias."""
    blocks = {}
    for block in text.split("\n\n")[1:]:
        for alias in ALIASES:
            if block.startswith(f"{alias}  "):
                blocks[alias] = block
    return blocks


def check_story(out: str, err: str, db_prefix: str) -> None:
    assert "Traceback" not in err and "error" not in err.lower(), err
    assert "Every plug got its time from the companion and tried the cloud" in out, out
    ports = printed_ports(out)
    assert len(ports) == 3 + len(ALIASES), out
    assert len({host for host, _p, _k in ports}) == 1 + len(ALIASES)  # one address each

    # the switch, by alias and by outlet
    assert section(out, f"hs100local {db_prefix}-H 'Desk lamp' on").strip() == "Power ON"
    assert section(out, f"hs100local {db_prefix}-H 'Power strip' -c 2 on").strip() == "Power ON"
    inventory = section(out, f"hs100local {db_prefix}plugs")
    for alias, _model, host in PLUGS:
        assert re.search(rf"^{alias}\s+\S+\s+{re.escape(host)}:\d+\s", inventory, re.M), inventory

    # what the companion recorded, attributed to each plug by its own address
    events = section(out, f"hs100local {db_prefix}events --since 5m")
    for alias, _model, host in PLUGS:
        who = re.escape(f"{host} ({alias})")
        assert re.search(rf"dns\s+{who}  0\.pool\.ntp\.org A -> ntp", events), events
        assert re.search(rf"dns\s+{who}  n-devs\.tplinkcloud\.com A -> redirect", events)
        assert re.search(rf"ntp\s+{who}  NTPv4 mode 3, clock lost \(read 2000-01-01\)",
                         events), events  # as after a power cut
        assert re.search(rf"tls\s+{who}  port \d+ unknown_ca: sni - ", events), events

    # the report: attempts refused by the plug's own CA pinning, clock served, verdict
    blocks = report_blocks(section(out, f"hs100local {db_prefix}report", "\nNext, with"))
    assert sorted(blocks) == sorted(ALIASES), out
    for block in blocks.values():
        attempts = int(re.search(r"cloud attempts: (\d+) ", block).group(1))
        assert attempts >= 2, block
        assert re.search(rf"verdict: isolated: {attempts} cloud connection attempts, every "
                         rf"\d+ s, all reached only us and were refused by the plug's own CA "
                         rf"pinning$", block, re.M), block
        assert f"outcomes: unknown_ca {attempts}\n" in block, block
        served, latest = map(int, re.search(
            r"NTP served: (\d+), its clock ([+-]\d+) ms \(furthest off: clock lost \(read "
            r"2000-01-01\)\)", block).groups())  # it had read 2000-01-01
        assert served >= 2 and abs(latest) < 2000, block  # the first answer set the clock
    assert "hs100local discover" in out and "hs100local serve --config" in out


def test_demo_shows_the_whole_story_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env_db = Path(os.environ["HS100LOCAL_DB"])
    code, out, err, elapsed = run(tmp_path, "demo")
    print(f"\ndemo: {elapsed:.1f} s")
    assert code == 0, (out, err)
    check_story(out, err, "")
    assert_free(printed_ports(out))
    db = Path(re.search(r"database (\S+) \(a temporary folder", out).group(1))
    assert db.parent.parent == tmp_path / "tmp"  # TMPDIR
    assert not db.parent.exists() and list((tmp_path / "tmp").iterdir()) == []
    assert f"removed {db.parent}" in out.splitlines()[-1]
    assert not env_db.exists()  # the demo has its own database, never HS100LOCAL_DB


def test_demo_with_db_keeps_what_it_recorded(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    db = keep / "demo.db"
    code, out, err, elapsed = run(tmp_path, "demo", "--db", str(db))
    print(f"\ndemo --db: {elapsed:.1f} s")
    assert code == 0, (out, err)
    check_story(out, err, f"--db {db} ")
    assert_free(printed_ports(out))
    assert f"hs100local --db {db} report" in out.split("What this demo recorded")[1]
    assert db.exists() and (keep / "tls" / "cloud-cert.pem").exists()
    assert list((tmp_path / "tmp").iterdir()) == []

    code, out, err, _ = run(tmp_path, "--db", str(db), "report", "--json")
    assert code == 0, err
    plugs = {p["alias"]: p for p in json.loads(out)["plugs"]}
    assert sorted(plugs) == sorted(ALIASES)
    for plug in plugs.values():
        assert plug["cloud"]["count"] >= 2
        assert plug["cloud"]["outcomes"] == {"unknown_ca": plug["cloud"]["count"]}
        assert plug["ntp_requests"] >= 2 and abs(plug["clock_offset_ms"]) < 2000
        assert plug["verdict"].startswith("isolated: ")
        assert plug["verdict"].endswith("refused by the plug's own CA pinning")


def test_ctrl_c_while_waiting_stops_everything(tmp_path: Path) -> None:
    proc = start(tmp_path, "demo")
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while not seen or not seen[-1].startswith("Waiting for each plug"):
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "".join(seen)
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(TIMEOUT)
    out = "".join(seen)
    assert code != 0
    assert_free(printed_ports(out))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_ctrl_c_in_a_command_stops_the_demo(tmp_path: Path) -> None:
    """In-process: the CLI turns Ctrl-C inside a command into an exit code ("interrupted");
    the demo must stop there, not go on to the next command."""
    echoed: list[str] = []
    commands: list[list[str]] = []

    def command(args: list[str]) -> int:
        commands.append(args)
        if "plugs" not in args:
            return 0
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:  # what the CLI makes of it: "interrupted", exit 130
            return 130
        raise AssertionError("SIGINT did not interrupt")

    with pytest.raises(KeyboardInterrupt):
        run_demo(db=tmp_path / "demo.db", echo=echoed.append, command=command)
    assert [args[2:] for args in commands][-1] == ["plugs"]  # no command after it
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert_free(printed_ports("\n".join(echoed)))
    assert not any(t.name in ("hs100local-demo", "hs100local-events")
                   for t in threading.enumerate())


def test_a_db_in_a_missing_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    echoed: list[str] = []

    def command(args: list[str]) -> Any:
        raise AssertionError("no command may run")

    db = tmp_path / "missing" / "demo.db"
    with pytest.raises(TargetError, match=r"the folder .* does not exist") as raised:
        run_demo(db=db, echo=echoed.append, command=command)
    assert raised.value.exit_code == 2 and echoed == []
    assert not db.parent.exists()
    result = prockit.run([sys.executable, "-m", "hs100local", "demo", "--db", str(db)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"hs100local: error: --db {db}: the folder {db.parent} does not "
                             f"exist; see 'hs100local demo --help'\n")


def test_a_failure_to_start_stops_what_had_started(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery finds nothing: one DemoError line; the plugs already listening are
    closed, the loop and its thread ended, the temporary folder removed."""
    import tempfile

    from hs100local import discovery
    from hs100local.demo import DemoError

    probed: list[tuple[str, int]] = []

    async def finds_nothing(*, targets: Any, broadcast: bool, **_kw: Any) -> Any:
        assert broadcast is False
        probed.extend(targets)
        return discovery.DiscoveryResult(plugs=[], elapsed=0.0)

    monkeypatch.setattr(discovery, "discover", finds_nothing)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(DemoError, match="discovery found 0 of the 3 emulated plugs"):
        run_demo(db=None, echo=print, command=lambda args: 0)
    assert [host for host, _port in probed] == [host for _a, _m, host in PLUGS]
    assert_free([(host, port, (socket.SOCK_STREAM, socket.SOCK_DGRAM)) for host, port in probed])
    assert not any(t.name == "hs100local-demo" for t in threading.enumerate())
    assert list(tmp_path.iterdir()) == []
