"""prockit: children get default signal dispositions, are always ended; sbin tools are found."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import prockit
import pytest

#: Signals a test child must be able to get (Python itself ignores SIGPIPE and SIGXFSZ).
STOPPERS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1}

SHOW_MASKS = ("import sys; s = open('/proc/self/status').read(); "
              "print(*[x for x in s.splitlines() if x.startswith(('SigIgn', 'SigBlk'))],"
              " sep='\\n')")


def masks(text: str) -> dict[str, set[int]]:
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        mask = int(value.strip(), 16)
        found[name] = {n + 1 for n in range(mask.bit_length()) if mask >> n & 1}
    return found


@pytest.fixture
def hostile_parent():
    """This process with SIGINT, SIGTERM, SIGHUP, SIGQUIT ignored and SIGUSR1 blocked, as a
    background job of a script (or nohup) leaves it; restored afterwards."""
    ignored = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in ignored}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_children_start_with_default_dispositions(hostile_parent):
    plain = subprocess.run([sys.executable, "-c", SHOW_MASKS], capture_output=True, text=True,
                           check=True)
    inherited = masks(plain.stdout)
    assert signal.SIGINT in inherited["SigIgn"] and signal.SIGUSR1 in inherited["SigBlk"]

    ours = masks(prockit.run([sys.executable, "-c", SHOW_MASKS], capture_output=True,
                             text=True, check=True).stdout)
    assert not ours["SigIgn"] & STOPPERS and not ours["SigBlk"]

    # the same through spawn, and for a non-Python program
    with prockit.running(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"],
                         stdout=subprocess.PIPE, text=True) as proc:
        out, _ = proc.communicate(timeout=10)
    assert masks(out) == {"SigIgn": set(), "SigBlk": set()}


def test_python_children_get_keyboardinterrupt_again(hostile_parent):
    code = ("import signal, sys; print(signal.getsignal(signal.SIGINT) is "
            "signal.default_int_handler)")
    assert prockit.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout == "True\n"


def test_popen_kwargs_adds_the_reset_and_refuses_a_second_one():
    assert prockit.popen_kwargs(text=True) == {"text": True,
                                               "preexec_fn": prockit.default_signals}
    with pytest.raises(TypeError):
        prockit.popen_kwargs(preexec_fn=os.getpid)


STUBBORN = ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\nwhile True:\n    signal.pause()\n")


def test_stop_kills_a_child_that_ignores_sigterm():
    proc = prockit.spawn([sys.executable, "-c", STUBBORN], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert prockit.stop(proc, grace=0.2) == -signal.SIGKILL
        assert proc.stdout.closed and proc.stdin is not None and proc.stdin.closed
        assert prockit.stop(proc) == -signal.SIGKILL  # twice is fine
    finally:
        prockit.stop(proc, signal.SIGKILL)


def test_finish_returns_the_output_or_kills_and_fails():
    polite = ("import sys\ntry:\n    print('ready', flush=True)\n    sys.stdin.read()\n"
              "except KeyboardInterrupt:\n    print('bye')\n")
    done = prockit.spawn([sys.executable, "-c", polite], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert done.stdout is not None and done.stdout.readline() == "ready\n"
        assert prockit.finish(done, signal.SIGINT) == ("bye\n", None)
        assert done.returncode == 0
    finally:
        prockit.stop(done)
    stubborn = prockit.spawn([sys.executable, "-c", STUBBORN], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
        with pytest.raises(AssertionError, match=r"did not exit within 0\.2 s of SIGTERM"):
            prockit.finish(stubborn, timeout=0.2)
        assert stubborn.returncode == -signal.SIGKILL  # not left running
    finally:
        prockit.stop(stubborn, signal.SIGKILL)


def test_running_stops_the_child_when_the_body_fails():
    with pytest.raises(RuntimeError), prockit.running(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE) as proc:
        raise RuntimeError("the test failed")
    assert proc.returncode == -signal.SIGTERM


def test_signal_set_reads_this_process(hostile_parent):
    assert signal.SIGINT in prockit.signal_set("self", "SigIgn")
    assert signal.SIGUSR1 in prockit.signal_set(os.getpid(), "SigBlk")
    with pytest.raises(LookupError):
        prockit.signal_set("self", "NoSuchMask")


# ------------------------------------------------------------------ find_tool


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_find_tool_looks_in_sbin_when_path_lacks_it(tmp_path, monkeypatch):
    user_bin, sbin = tmp_path / "bin", tmp_path / "sbin"
    user_bin.mkdir()
    sbin.mkdir()
    monkeypatch.setenv("PATH", str(user_bin))  # a non-root user's PATH: no sbin
    monkeypatch.setattr(prockit, "SBIN_DIRS", (str(tmp_path / "nowhere"), str(sbin)))
    assert prockit.find_tool("chronyd") is None
    assert prockit.missing_tool_reason("chronyd", "chrony") == (
        f"chronyd (Debian chrony) missing: not on PATH nor in {tmp_path / 'nowhere'}, {sbin}")
    (sbin / "chronyd").write_text("not executable")
    assert prockit.find_tool("chronyd") is None
    executable(sbin / "chronyd")
    assert prockit.find_tool("chronyd") == str(sbin / "chronyd")
    assert prockit.missing_tool_reason("chronyd", "chrony") is None
    executable(user_bin / "chronyd")  # PATH wins
    assert prockit.find_tool("chronyd") == str(user_bin / "chronyd")


@pytest.mark.parametrize("tool", ["chronyd", "dnsmasq", "nft", "iptables-restore"])
def test_find_tool_finds_the_debian_sbin_tools_without_sbin_on_path(tool, monkeypatch):
    installed = [d for d in prockit.SBIN_DIRS if os.access(os.path.join(d, tool), os.X_OK)]
    if not installed:
        pytest.skip(f"{tool} is not installed in {prockit.SBIN_DIRS}")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as a non-root user has it
    found = prockit.find_tool(tool)
    assert found is not None and os.access(found, os.X_OK)
    assert os.path.basename(found) == tool
