"""Peers from npm that no one here wrote: a simulated plug (tplink-smarthome-simulator).

``tests/npm`` pins the packages (package.json, package-lock.json); ``.ci/run`` installs
them with ``npm ci --prefix tests/npm``. :class:`NpmPlug` runs ``tests/npm/simulator.js``
(one simulated device on 127.0.0.1) and talks to it over its JSON-lines control channel::

    with NpmPlug("hs300", alias="Strip") as plug:
        ...  # drive 127.0.0.1:plug.port with our CLI
        plug.state()["children"][1]["state"]    # what the device now holds
        plug.requests()                         # every request it decoded so far

:func:`npm_unavailable_reason` says why the simulator cannot run here (no node, or
``npm ci`` not run); the ``npm_plug`` fixture skips on it, or fails with
``HS100LOCAL_REQUIRE_NPM=1`` (CI).
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import prockit

NPM_DIR = Path(__file__).resolve().parent / "npm"
SIMULATOR = NPM_DIR / "simulator.js"
REQUIRE_ENV = "HS100LOCAL_REQUIRE_NPM"
PACKAGES = ("tplink-smarthome-simulator", "tplink-smarthome-api")

_EOF = object()


def node_path() -> str | None:
    return shutil.which("node") or shutil.which("nodejs")


def npm_unavailable_reason() -> str | None:
    """Why the npm peers cannot run here, or None when they can."""
    if node_path() is None:
        return "node missing (Debian nodejs; .ci/run installs it)"
    for package in PACKAGES:
        if not (NPM_DIR / "node_modules" / package / "package.json").is_file():
            return (f"{package} not installed in tests/npm/node_modules "
                    "(run: npm ci --prefix tests/npm)")
    return None


class NpmPlugError(AssertionError):
    """The simulator failed; carries its stderr. An AssertionError: a test failure."""


class NpmPlug:
    """One tplink-smarthome-simulator device on 127.0.0.1 in a node child process.

    Started with default signal dispositions (see prockit); :meth:`close` (also on
    ``with`` exit, and on any failure while starting) always ends the process.
    """

    host = "127.0.0.1"

    def __init__(self, model: str = "hs100", *, alias: str | None = None,
                 mac: str | None = None, data: dict[str, Any] | None = None,
                 keep_open: bool = False, timeout: float = 20.0) -> None:
        node = node_path()
        if node is None:
            raise NpmPlugError("node is not installed")
        self.model = model
        self.timeout = timeout
        options: dict[str, Any] = {"model": model}
        if alias is not None:
            options["alias"] = alias
        if mac is not None:
            options["mac"] = mac
        if data:
            options["data"] = data
        if keep_open:  # else the device closes each TCP connection after its answer
            options["keep_open"] = True
        self._lines: queue.Queue[Any] = queue.Queue()
        self._stderr: list[str] = []
        self._lock = threading.Lock()
        self._proc = prockit.spawn(
            [node, str(SIMULATOR), json.dumps(options)], cwd=NPM_DIR,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1)
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()
        try:
            ready = self._next_line("its listening line")
            if ready.get("event") != "listening":
                raise self._error(f"unexpected first line {ready!r}")
        except BaseException:
            self.close()
            raise
        self.port: int = ready["tcp_port"]
        self.udp_port: int | None = ready.get("udp_port")
        self.mac: str = ready["mac"]
        self.alias: str = ready["alias"]
        self.pid = self._proc.pid

    # ------------------------------------------------------------------ plumbing

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        try:
            for line in self._proc.stdout:
                self._lines.put(line)
        except (OSError, ValueError):  # closed under us by close()
            pass
        finally:
            self._lines.put(_EOF)

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        try:
            for line in self._proc.stderr:
                self._stderr.append(line)
        except (OSError, ValueError):
            pass

    def _error(self, what: str) -> NpmPlugError:
        return NpmPlugError(f"npm simulator ({self.model}): {what}\n--- stderr ---\n"
                            + "".join(self._stderr[-50:]))

    def _next_line(self, what: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            raise self._error(f"no {what} within {self.timeout:g} s") from None
        if line is _EOF:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._lines.put(_EOF)  # later calls see the end too
            raise self._error(f"exited ({self._proc.returncode}) before {what}")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise self._error(f"not a JSON line: {line!r}") from None

    def _call(self, cmd: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            if self._proc.stdin is None or self._proc.stdin.closed:
                raise self._error("already closed")
            try:
                self._proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise self._error(f"control channel closed: {exc}") from None
            answer = self._next_line(f"an answer to {cmd!r}")
        if not answer.get("ok"):
            raise self._error(f"{cmd!r} failed: {answer.get('error')}")
        return answer

    # ------------------------------------------------------------------ control

    @property
    def address(self) -> str:
        """``HOST:PORT`` for ``-H``."""
        return f"{self.host}:{self.port}"

    def state(self) -> dict[str, Any]:
        """The device's current data: ``sysinfo`` (relay_state/alias/led_off/children …),
        ``children`` (a strip's outlets), ``timezone``, ``cloud`` (cnCloud info),
        ``schedule`` (rules), ``data`` (everything), ``requests``, ``connections``."""
        return self._call("state")

    def requests(self) -> list[dict[str, Any]]:
        """Every request decoded so far: ``{"protocol", "text", "request", "time"}``."""
        return self.state()["requests"]

    def sent(self) -> list[dict[str, Any]]:
        """Just the decoded request objects (None for text that was not JSON)."""
        return [r["request"] for r in self.requests()]

    def reset_log(self) -> None:
        """Forget the requests (and connections) recorded so far."""
        self._call("reset_log")

    def close(self) -> int | None:
        """End the simulator (stdin EOF, then SIGTERM, then SIGKILL); idempotent."""
        proc = self._proc
        try:
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # the simulator exits on EOF
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        finally:
            code = prockit.stop(proc, close_pipes=False)  # SIGTERM, then SIGKILL
            for thread in self._threads:
                thread.join(5)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        return code

    def __enter__(self) -> NpmPlug:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
