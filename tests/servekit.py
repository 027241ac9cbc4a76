"""A running `hs100local serve` subprocess for tests, and a config with a real upstream.

:class:`Serve` starts ``python -m hs100local serve --config FILE`` on loopback
high ports (port 0 in the config: the kernel picks, the "serving:" line says
which), collects its stderr in a thread so tests can wait for a log line
instead of sleeping, and stops it with a signal.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import dns.message
import dns.query
import prockit

REPO = Path(__file__).resolve().parents[1]


class Serve:
    """A running `serve` with its stderr collected by a thread (it logs a lot)."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = prockit.spawn(  # default signal dispositions
            [sys.executable, "-u", "-m", "hs100local", "serve", "--config", str(config),
             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.lines: list[str] = []
        self.grew = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        line = self.proc.stdout.readline()
        assert line.startswith("serving: "), (line, self.stop())
        self.ports = {name.lower(): int(port) for name, port in
                      re.findall(r"(DNS|NTP|CLOUD) on 127\.0\.0\.1:(\d+)", line)}
        web = re.search(r"dashboard on http://127\.0\.0\.1:(\d+)/", line)
        if web is not None:
            self.ports["web"] = int(web.group(1))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.grew:
                self.lines.append(line)
                self.grew.notify_all()

    def wait_log(self, pattern: str, timeout: float = 10) -> str:
        with self.grew:
            found: list[str] = []

            def seen() -> bool:
                found[:] = [x for x in self.lines if re.search(pattern, x)]
                return bool(found)

            assert self.grew.wait_for(seen, timeout), (pattern, "".join(self.lines[-20:]))
            return found[0]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit code; SIGKILL if it is not gone in 15 s."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            code = self.proc.wait(15)
        finally:  # never left running, even when waiting failed
            prockit.stop(self.proc, signal.SIGKILL, close_pipes=False)
            self.reader.join(5)
        return code


def ask(port: int, name: str, qtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, qtype), "127.0.0.1", port=port, timeout=3)


def answers(reply: dns.message.Message) -> list[str]:
    return [item.to_text() for rrset in reply.answer for item in rrset]


def write_config(path: Path, upstream_port: int, db: Path, extra: str = "") -> Path:
    """A serve config on free loopback ports with a real upstream, no periodic tasks
    (discovery would broadcast on this machine's interfaces)."""
    path.write_text(f"""
dns = "127.0.0.1:0"
ntp = "127.0.0.1:0"
cloud = "127.0.0.1:0"
upstream = "127.0.0.1:{upstream_port}"
db = "{db}"
assume-synced = true
time-interval = 0
discover-interval = 0
{extra}
""")
    return path
