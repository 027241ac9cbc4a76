"""A LAN of emulated plugs in network namespaces, for discovery tests and benchmarks.

Topology (all in 198.18.0.0/15, no default route anywhere)::

    router ── lan0 198.18.0.1/24 ── br0 ── plug01 … plugNN (198.18.0.11 …)
           │                          └── klap01… (198.18.0.200 …, KLAP firmware)
           └─ lan1 198.18.1.1/24 ── br1 ── second01 … (198.18.1.11 …)

Every plug is a real ``hs100local emulate`` process in its own namespace, bound
to 0.0.0.0:9999 like firmware, so it hears broadcasts. Commands under test run
in the router namespace through :meth:`PlugLab.hs100local`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netlab
import prockit

from hs100local.emulator import MODELS

MODEL_CYCLE = ("hs100", "hs105", "hs110", "hs110v2", "hs200", "hs300", "kp303")
OUTLETS = {key: spec.outlets for key, spec in MODELS.items()}


@dataclass
class LabPlug:
    name: str
    host: netlab.Host
    ip: str
    model: str
    mac: str
    alias: str
    interface: str
    protocol: str = "xor"
    proc: netlab.Proc | None = None

    def start(self, *, protocol: str | None = None, sw_ver: str | None = None) -> netlab.Proc:
        """(Re)start the emulator, e.g. with new firmware or KLAP (keeping the MAC)."""
        if self.proc is not None:
            self.proc.stop()
        self.protocol = protocol or self.protocol
        argv = [sys.executable, "-u", "-m", "hs100local", "emulate", "--model", self.model,
                "--bind", "0.0.0.0", "--mac", self.mac, "--alias", self.alias,
                "--protocol", self.protocol]
        if sw_ver:
            argv += ["--sw-ver", sw_ver]
        self.proc = self.host.spawn(argv, ready="Emulating")
        return self.proc


@dataclass
class PlugLab:
    lab: netlab.Lab
    router: netlab.Host
    bridges: dict[str, netlab.Bridge]
    db: Path
    plugs: list[LabPlug] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        # Broadcast on every router interface; the inventory lives in the test's tmp dir.
        return {"HS100LOCAL_DB": str(self.db), "HS100LOCAL_INTERFACES": "",
                "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def hs100local(self, *args: str, check: bool = True,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.router.run([sys.executable, "-m", "hs100local", *args], check=check,
                               timeout=timeout, env=self.env())

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start a CLI command in the router namespace without waiting for it.

        Default signal dispositions; closing the lab kills it if the test did not.
        """
        return prockit.spawn(
            self.router.cmd([sys.executable, "-m", "hs100local", *args]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **self.env()},
        )

    def discover_json(self, *args: str, timeout: float = 60) -> list[dict[str, Any]]:
        return json.loads(self.hs100local("discover", "--json", *args, timeout=timeout).stdout)

    def expected(self, interface: str | None = None) -> dict[str, LabPlug]:
        return {p.ip: p for p in self.plugs if interface in (None, p.interface)}


def build(lab: netlab.Lab, db: Path, *, plugs: int = 10, second: int = 2,
          klap: int = 1) -> PlugLab:
    """Cable the topology and start every emulator (in parallel)."""
    router = lab.add_host("router")
    bridges = {"lan0": lab.add_bridge("br0"), "lan1": lab.add_bridge("br1")}
    lab.connect(router, bridges["lan0"], "lan0", "198.18.0.1/24")
    lab.connect(router, bridges["lan1"], "lan1", "198.18.1.1/24")
    plab = PlugLab(lab, router, bridges, db)

    def add(name: str, iface: str, ip: str, model: str, index: int, protocol: str) -> None:
        host = lab.add_host(name)
        lab.connect(host, bridges[iface], "eth0", f"{ip}/24")
        mac = f"{MODELS[model].mac_prefix}:{18 + (iface == 'lan1'):02X}:00:{index:02X}"
        if protocol == "klap":
            mac = f"CC:32:E5:19:00:{index:02X}"
        plab.plugs.append(LabPlug(name, host, ip, model, mac, f"Lab {name}", iface, protocol))

    for i in range(plugs):
        add(f"plug{i + 1:02d}", "lan0", f"198.18.0.{11 + i}", MODEL_CYCLE[i % 7], i + 1, "xor")
    for i in range(klap):
        add(f"klap{i + 1:02d}", "lan0", f"198.18.0.{200 + i}", ("hs100", "hs300")[i % 2],
            i + 1, "klap")
    for i in range(second):
        add(f"second{i + 1:02d}", "lan1", f"198.18.1.{11 + i}", MODEL_CYCLE[(i + 2) % 7],
            i + 1, "xor")
    procs = [p.start() for p in plab.plugs]
    for proc in procs:
        proc.wait_ready(30)
    return plab
