"""Child processes for tests (and the benchmarks): default signals, always ended; system tools.

A process started from a non-interactive shell's background job (``bash -c 'pytest &'``)
has SIGINT ignored, and an ignored signal stays ignored across fork and exec: a child
``hs100local watch`` would then never stop on SIGINT (and Python does not even install
its KeyboardInterrupt handler when SIGINT starts ignored). Every child a test starts
therefore goes through :func:`spawn` / :func:`run` (or passes :func:`popen_kwargs`),
which reset every signal to its default disposition and unblock the signal mask in the
child before it executes anything. :func:`stop` / :func:`finish` end a child for sure
(SIGKILL after a grace period) and belong in a ``finally`` or a fixture's teardown.

:func:`find_tool` finds Debian tools that live in /usr/sbin or /sbin (chronyd, dnsmasq,
nft, iptables-restore …), which are not on a non-root user's PATH.

Only the standard library is used: tests/bench imports this module too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

#: Where Debian installs system tools that an unprivileged user's PATH lacks.
SBIN_DIRS: tuple[str, ...] = ("/usr/local/sbin", "/usr/sbin", "/sbin")

_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


def default_signals() -> None:
    """``preexec_fn``: every signal to SIG_DFL, nothing blocked (runs in the child).

    Only "ignored" and the mask survive exec (handlers do not), so this is exactly
    the state of a child started from a fresh login shell.
    """
    for sig in signal.valid_signals():
        if sig in _UNCATCHABLE:
            continue
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def popen_kwargs(**kwargs: Any) -> dict[str, Any]:
    """``kwargs`` plus the ``preexec_fn`` that gives the child default signal dispositions.

    For code that calls subprocess itself: ``subprocess.Popen(argv, **popen_kwargs(text=True))``.
    """
    if "preexec_fn" in kwargs:
        raise TypeError("popen_kwargs() sets preexec_fn itself")
    return {**kwargs, "preexec_fn": default_signals}


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen with default signal dispositions; end it with :func:`stop`."""
    return subprocess.Popen(list(argv), **popen_kwargs(**kwargs))


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """subprocess.run with default signal dispositions (a timeout kills the child)."""
    return subprocess.run(list(argv), **popen_kwargs(**kwargs))


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 5.0, *,
         group: bool = False, close_pipes: bool = True) -> int:
    """End ``proc`` for sure: ``sig``, SIGKILL after ``grace`` seconds; return its exit code.

    A no-op for a child that already exited (it is only reaped). With ``group`` the
    signals go to its process group (start it with ``start_new_session=True``), so
    what it forked ends too. Safe to call twice and from ``finally`` blocks.
    """
    def send(s: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, s)
            else:
                proc.send_signal(s)

    if proc.poll() is None:
        send(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait()
        except BaseException:  # interrupted while waiting: never leave it behind
            send(signal.SIGKILL)
            proc.wait()
            raise
    if close_pipes:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
    return proc.returncode


def finish(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
           timeout: float = 10.0) -> tuple[Any, Any]:
    """Send ``sig`` and collect the rest of the output, like ``communicate()``.

    If the child does not exit within ``timeout`` it is killed (never left running)
    and an AssertionError says so: a child that ignores ``sig`` is a failing test,
    not a leaked process.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(
            f"{proc.args!r} did not exit within {timeout:g} s of {_signal_name(sig)} "
            f"(killed); stderr: {err!r}") from None
    except BaseException:
        stop(proc, signal.SIGKILL)
        raise


@contextlib.contextmanager
def running(argv: Sequence[str], *, stop_signal: int = signal.SIGTERM, grace: float = 5.0,
            **kwargs: Any) -> Iterator[subprocess.Popen[Any]]:
    """``with running([...], stdout=PIPE) as proc:`` a child that is stopped on the way out."""
    proc = spawn(argv, **kwargs)
    try:
        yield proc
    finally:
        stop(proc, stop_signal, grace, group=bool(kwargs.get("start_new_session")))


def signal_set(pid: int | str = "self", field: str = "SigIgn") -> set[int]:
    """The signals in a process's ``SigIgn`` (ignored), ``SigBlk`` (blocked) … mask (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name == field:
                mask = int(value.strip(), 16)
                return {n + 1 for n in range(mask.bit_length()) if mask >> n & 1}
    raise LookupError(f"no {field} in /proc/{pid}/status")


def find_tool(name: str) -> str | None:
    """The path of executable ``name``: PATH first, then /usr/local/sbin, /usr/sbin, /sbin.

    Debian installs chronyd, dnsmasq, nft, iptables-restore … in /usr/sbin, which
    only root's PATH has; a non-root user can still run many of them.
    """
    found = shutil.which(name)
    if found is None and SBIN_DIRS:
        found = shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    return found


def missing_tool_reason(name: str, package: str) -> str | None:
    """None when ``name`` is found (see :func:`find_tool`), else a skip reason."""
    if find_tool(name) is not None:
        return None
    return f"{name} (Debian {package}) missing: not on PATH nor in {', '.join(SBIN_DIRS)}"
