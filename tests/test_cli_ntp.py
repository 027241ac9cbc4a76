"""`hs100local ntp` as a real process, and its argument errors through CliRunner."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import ntplib
import prockit
from click.testing import CliRunner

from hs100local.cli import cli
from hs100local.events import EventStore


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_bad_arguments_are_usage_errors():
    for args in (["ntp", "--listen", "not-an-address"], ["ntp", "--ref-id", "TOOLONG"],
                 ["ntp", "--stratum", "16"], ["ntp", "--rate-limit", "-1"]):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)


def test_a_port_in_use_is_exit_3():
    """Even by a socket that allows address reuse: two servers must never share a port."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        result = invoke("ntp", "--listen", f"127.0.0.1:{port}", "--no-events")
    finally:
        taken.close()
    assert result.exit_code == 3 and "cannot listen" in result.stderr


def test_ntp_process_answers_records_and_stops_cleanly_on_sigterm(tmp_path):
    db = tmp_path / "events.db"
    proc = prockit.spawn(
        [sys.executable, "-u", "-m", "hs100local", "ntp", "--listen", "127.0.0.1:0",
         "--assume-synced", "--stratum", "2", "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"NTP on 127\.0\.0\.1:(\d+) \(udp\); stratum 2; ", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert "assumed synchronised" in line
        port = int(match.group(1))
        for version in (3, 4):
            response = ntplib.NTPClient().request("127.0.0.1", version, port, timeout=3)
            assert (response.stratum, response.leap, response.version) == (2, 0, version)
            assert abs(response.offset) < 0.01
    finally:
        _out, err = prockit.finish(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    with EventStore(db) as store:
        got = [(e.client, e.details["version"]) for e in store.events(kind="ntp")]
    assert got == [("127.0.0.1", 3), ("127.0.0.1", 4)]  # flushed on SIGTERM


def test_without_assume_synced_the_banner_and_replies_follow_the_kernel():
    from hs100local.ntp.clock import read_kernel_sync

    proc = prockit.spawn(
        [sys.executable, "-u", "-m", "hs100local", "ntp", "--listen", "127.0.0.1:0",
         "--no-events"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, line
        response = ntplib.NTPClient().request("127.0.0.1", 4, int(match.group(1)), timeout=3)
    finally:
        prockit.finish(proc, signal.SIGTERM)
    if read_kernel_sync().synced:
        assert "host clock synchronised" in line and (response.leap, response.stratum) == (0, 3)
    else:  # this sandbox: no NTP daemon, the kernel says unsynchronised
        assert "NOT synchronised" in line and (response.leap, response.stratum) == (3, 16)
