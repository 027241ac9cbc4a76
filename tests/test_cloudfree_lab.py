"""The whole promise, end to end: plugs run cloud-free, and the user can see it.

Topology (network namespaces this test creates; all in 198.18.0.0/15)::

    wan  198.18.100.10  fake TP-Link cloud (TLS 443 + 50443, a cert from the plugs' CA)
         198.18.100.53  upstream DNS (dnsmasq: cloud names -> the fake cloud,
                        NTP names -> 198.18.100.123)
         198.18.100.123 a public-looking NTP server (its own event database)
          │
    router  wan0 198.18.100.1 · iot0 198.18.1.1 · lan0 198.18.2.1
            runs `hs100local serve` (DNS, NTP, cloud listener, time keeper) and
            `hs100local firewall --apply`
          │                                   │
    plug1..3 198.18.1.11-13                 lan 198.18.2.10 (a LAN client)
    `hs100local emulate --cloud`

plug1 and plug2 use the companion's DNS; plug3 was handed the wan resolver (as if
DHCP gave out a public one): the firewall must redirect its DNS to us.

Phase 1 (isolated): the fake cloud and the wan NTP see nothing, every plug's
cloud attempt reaches our listener and is attributed to it, clocks come from our
NTP and the time keeper, the LAN client still switches a plug, and ``audit`` says
isolated and exits 0. Phase 2 (the test can fail): remove the firewall and point
every plug's DNS upstream; the fake cloud sees every plug and ``audit`` says
leaking and exits 1. Phase 3: ``audit --fix`` (firewall, cloud server pointed at
the companion, a reboot to end the live cloud connections) makes every plug
isolated again, and the fake cloud sees no new registration.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

import netlab
import pytest

REPO = Path(__file__).resolve().parents[1]
CLOUD, UPSTREAM, PUBLIC_NTP = "198.18.100.10", "198.18.100.53", "198.18.100.123"
COMPANION, LAN_CLIENT = "198.18.1.1", "198.18.2.10"
PLUGS = {  # name: (address, model, DNS server it was handed)
    "plug1": ("198.18.1.11", "hs110", COMPANION),
    "plug2": ("198.18.1.12", "hs100", COMPANION),
    "plug3": ("198.18.1.13", "hs105", UPSTREAM),
}
RETRY = 1.5  # seconds between a plug's cloud attempts (real plugs: minutes)


def _wait(what: str, check, timeout: float = 60.0, every: float = 0.2):
    """Poll ``check`` until it returns something truthy (SQLite and log files cannot
    notify another process); fail with ``what`` and the last value at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


def _events(db: Path, kind: str) -> list[tuple[str | None, str | None, dict, int]]:
    """(client, plug MAC, details, count) of every ``kind`` event (read-only, no lock)."""
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            rows = conn.execute("SELECT client, plug, details, count FROM events WHERE kind=?",
                                (kind,)).fetchall()
        except sqlite3.OperationalError:  # the table is not there yet
            return []
    return [(c, p, json.loads(d or "{}"), n) for c, p, d, n in rows]


def _event_ids(db: Path, kind: str) -> list[tuple[int, str | None]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT id, plug FROM events WHERE kind=?", (kind,)).fetchall()


def _cloud_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class CloudFreeLab:
    def __init__(self, lab: netlab.Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.db = tmp / "companion.db"
        self.wan_db = tmp / "wan-ntp.db"
        self.cloud_log = tmp / "fakecloud.jsonl"
        self.config = tmp / "hs100local.toml"
        # every interface of the router (conftest confines other tests to loopback)
        self.env = {"HS100LOCAL_DB": str(self.db), "HS100LOCAL_INTERFACES": "",
                    "PYTHONPATH": str(REPO)}
        wan_br, iot_br, lan_br = (lab.add_bridge(n) for n in ("brw", "bri", "brl"))
        self.wan, self.router = lab.add_host("wan"), lab.add_host("router")
        self.client = lab.add_host("lan")
        lab.connect(self.router, wan_br, "wan0", "198.18.100.1/24")
        lab.connect(self.router, iot_br, "iot0", f"{COMPANION}/24")
        lab.connect(self.router, lan_br, "lan0", "198.18.2.1/24")
        self.router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        lab.connect(self.wan, wan_br, "eth0", f"{CLOUD}/24")
        for extra in (UPSTREAM, PUBLIC_NTP):
            self.wan.run(["ip", "addr", "add", f"{extra}/24", "dev", "eth0"])
        self.wan.run(["ip", "route", "add", "198.18.0.0/15", "via", "198.18.100.1"])
        lab.connect(self.client, lan_br, "eth0", f"{LAN_CLIENT}/24")
        self.client.run(["ip", "route", "add", "default", "via", "198.18.2.1"])
        self.plugs = {}
        for name, (ip, _model, _dns) in PLUGS.items():
            host = lab.add_host(name)
            lab.connect(host, iot_br, "eth0", f"{ip}/24")
            host.run(["ip", "route", "add", "default", "via", COMPANION])
            self.plugs[name] = host
        self.plug_procs: dict[str, netlab.Proc] = {}
        self.macs = {name: f"50:C7:BF:1A:00:{i + 1:02X}" for i, name in enumerate(PLUGS)}

    # ------------------------------------------------------------------ wan side
    def start_wan(self, ca_cert: Path, ca_key: Path) -> None:
        dnsmasq = ["/usr/sbin/dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                   "--no-poll", f"--listen-address={UPSTREAM}", "--bind-interfaces",
                   "--port=53", "--user=root", f"--pid-file={self.tmp}/wan-dnsmasq.pid",
                   "--log-queries", f"--log-facility={self.tmp}/wan-dns.log",
                   f"--address=/tplinkcloud.com/{CLOUD}", f"--address=/tplinkra.com/{CLOUD}"]
        dnsmasq += [f"--address=/{n}/{PUBLIC_NTP}" for n in
                    ("pool.ntp.org", "nist.gov", "time.edu.cn")]
        procs = [
            self.wan.spawn(dnsmasq),
            self.wan.spawn([sys.executable, "-u", str(REPO / "tests" / "fakecloud.py"),
                            "--ca-cert", str(ca_cert), "--ca-key", str(ca_key),
                            "--listen", f"{CLOUD}:443", "--listen", f"{CLOUD}:50443",
                            "--log", str(self.cloud_log)], ready="listening", env=self.env),
            self.wan.spawn([sys.executable, "-u", "-m", "hs100local", "ntp", "--listen",
                            f"{PUBLIC_NTP}:123", "--assume-synced", "--db", str(self.wan_db)],
                           env=self.env),
        ]
        for proc in procs:
            proc.wait_ready(30)
        _wait("the wan resolver", lambda: self.wan.run(
            ["dig", f"@{UPSTREAM}", "+short", "+time=1", "+tries=1", "ready.pool.ntp.org"],
            check=False).stdout.strip() == PUBLIC_NTP)

    # --------------------------------------------------------------- companion
    def write_config(self) -> None:
        self.config.write_text(f"""
dns = ["{COMPANION}:53"]
ntp = ["{COMPANION}:123"]
cloud = ["{COMPANION}:443", "{COMPANION}:50443"]
upstream = ["{UPSTREAM}"]
allow = ["198.18.1.0/24", "198.18.2.0/24", "127.0.0.0/8"]
db = "{self.db}"
assume-synced = true
ntp-rate-limit = 0
time-interval = 1
zone = "Europe/Berlin"
discover-interval = 0
""")

    def hs100local(self, *args: str, host: netlab.Host | None = None, check: bool = True,
                   timeout: float = 60):
        return (host or self.router).run([sys.executable, "-m", "hs100local", *args],
                                         check=check, timeout=timeout, env=self.env)

    def start_serve(self) -> netlab.Proc:
        proc = self.router.spawn([sys.executable, "-u", "-m", "hs100local", "serve",
                                  "--config", str(self.config)], ready="serving",
                                 env=self.env)
        proc.wait_ready(60)
        return proc

    # ------------------------------------------------------------------- plugs
    def start_plug(self, name: str, *, dns: str | None = None, cloud: bool = True,
                   ca_cert: Path | None = None) -> netlab.Proc:
        if name in self.plug_procs:
            self.plug_procs[name].stop()
        _ip, model, handed = PLUGS[name]
        argv = [sys.executable, "-u", "-m", "hs100local", "emulate", "--model", model,
                "--bind", "0.0.0.0", "--mac", self.macs[name], "--alias", f"Lab {name}"]
        if cloud:
            argv += ["--cloud", "--dns", dns or handed, "--cloud-retry", str(RETRY),
                     "--cloud-ca", str(ca_cert)]
        proc = self.plugs[name].spawn(argv, ready="Emulating", env=self.env)
        self.plug_procs[name] = proc
        return proc


@pytest.fixture
def pinned_ca(tmp_path):
    import trustme

    ca = trustme.CA(organization_name="TP-Link emulated root")
    cert, key = tmp_path / "plug-ca.pem", tmp_path / "plug-ca-key.pem"
    ca.cert_pem.write_to_path(str(cert))
    ca.private_key_pem.write_to_path(str(key))
    return cert, key


def test_plugs_run_cloud_free_and_the_audit_proves_it(tmp_path, pinned_ca):
    netlab.require_netns()
    ca_cert, ca_key = pinned_ca
    with netlab.Lab() as lab:
        world = CloudFreeLab(lab, tmp_path)
        world.start_wan(ca_cert, ca_key)
        world.write_config()

        # The companion is installed: discover the plugs (still without cloud
        # behaviour), unplug them, start serve, apply the firewall …
        for proc in [world.start_plug(n, cloud=False) for n in PLUGS]:
            proc.wait_ready(30)
        found = json.loads(world.hs100local("discover", "--json", "--timeout", "2").stdout)
        assert sorted(p["host"] for p in found) == sorted(ip for ip, _m, _d in PLUGS.values())
        netlab.stop_all(world.plug_procs.values())
        serve = world.start_serve()
        world.hs100local("firewall", "--apply", "--config", str(world.config))
        # … then the plugs get their power back: clock at 2000-01-01, straight to the cloud.
        for proc in [world.start_plug(n, ca_cert=ca_cert) for n in PLUGS]:
            proc.wait_ready(30)
        macs = {mac: name for name, mac in world.macs.items()}

        def attributed(kind: str, enough=lambda details: True) -> set[str]:
            return {m for _c, m, d, _n in _events(world.db, kind) if m in macs and enough(d)}

        _wait("a cloud attempt of every plug at our listener",
              lambda: attributed("tls") == set(macs))
        _wait("every plug's NTP request at our NTP server", lambda: attributed("ntp") == set(macs))
        _wait("the time keeper setting every plug's zone",
              lambda: attributed("time", lambda d: d.get("outcome") == "fixed") == set(macs))
        # plug3 asked the wan resolver; the firewall sent its lookups to us
        plug3_names = {d.get("name") for c, _m, d, _n in _events(world.db, "dns")
                       if c == PLUGS["plug3"][0]}
        assert "n-devs.tplinkcloud.com" in plug3_names

        # every attempt was refused by the plug's own pinning, and recorded as such
        outcomes = Counter()
        for _c, mac, details, n in _events(world.db, "tls"):
            assert mac in macs, f"a TLS event not attributed to a plug: {mac}"
            outcomes[details.get("outcome")] += n
        assert set(outcomes) == {"unknown_ca"}, outcomes
        # the clocks are right (plug minus host, in the zone the keeper set)
        for name, (ip, _model, _dns) in PLUGS.items():
            clock = json.loads(world.hs100local("-H", ip, "time", "--json").stdout)
            assert abs(clock["offset_s"]) < 2.0, (name, clock)
            assert clock["tz_index"] == 41, (name, clock)
        # local control from the LAN still works through the firewall
        world.hs100local("-H", PLUGS["plug1"][0], "on", host=world.client)
        state = json.loads(world.hs100local("-H", PLUGS["plug1"][0], "state", "--json",
                                            host=world.client).stdout)
        assert state["state"] == "on"
        # and nothing ever reached the internet side
        assert _cloud_log(world.cloud_log) == []
        assert _events(world.wan_db, "ntp") == []
        assert "tplinkcloud" not in (tmp_path / "wan-dns.log").read_text()

        audit = world.hs100local("audit", "--config", str(world.config), "--json", check=False)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        report = json.loads(audit.stdout)
        assert report["isolated"] is True
        assert {p["mac"] for p in report["plugs"]} == set(macs)
        for row in report["plugs"]:
            assert row["verdict"] == "isolated", row
            assert row["local"] and row["firewall"] and row["attempts"] >= 1, row
            assert abs(row["clock_offset_s"]) < 2.0, row
        assert report["dns"]["status"] == "sinkholed"

        # Every attempt a plug made is recorded and attributed to it: unplug them, then
        # the listener's count per plug must come to what each plug logged (the store
        # commits within a second; an attempt cut short by the unplugging may add one).
        netlab.stop_all(world.plug_procs.values())
        made = {world.macs[n]: p.stderr_text.count("(unknown_ca sent)")
                for n, p in world.plug_procs.items()}
        assert all(made.values()), made

        def recorded() -> dict[str, int]:
            counts = Counter()
            for _c, mac, details, n in _events(world.db, "tls"):
                if details.get("outcome") == "unknown_ca":
                    counts[mac] += n
            return counts

        _wait("every logged attempt in the event store",
              lambda: all(made[m] <= recorded()[m] <= made[m] + 1 for m in made))

        # Phase 2: without the firewall and with every plug's DNS pointed upstream, the
        # fake cloud sees every plug, and the audit must say so.
        world.hs100local("firewall", "--remove")
        for proc in [world.start_plug(n, dns=UPSTREAM, ca_cert=ca_cert) for n in PLUGS]:
            proc.wait_ready(30)
        plug_ips = {ip for ip, _m, _d in PLUGS.values()}
        _wait("every plug registering with the fake cloud", lambda: {
            e["peer"] for e in _cloud_log(world.cloud_log) if e["event"] == "register"
        } >= plug_ips)
        audit = world.hs100local("audit", "--config", str(world.config), "--json", check=False)
        assert audit.returncode == 1, audit.stdout + audit.stderr
        report = json.loads(audit.stdout)
        assert report["isolated"] is False
        assert {p["verdict"] for p in report["plugs"]} == {"leaking"}, report["plugs"]
        assert all(not p["firewall"] for p in report["plugs"])

        # Phase 3: `audit --fix` puts it right: the firewall again, the cloud server
        # pointed at the companion, and a reboot ends the live cloud connections.
        registered = len(_cloud_log(world.cloud_log))
        before_fix = max((e[0] for e in _event_ids(world.db, "tls")), default=0)
        fixed = world.hs100local("audit", "--fix", "--config", str(world.config), "--json",
                                 check=False, timeout=180)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        report = json.loads(fixed.stdout)
        actions = Counter(f["action"] for f in report["fixes"])
        assert actions["set_server_url"] == 3 and actions["reboot"] == 3, report["fixes"]
        assert actions["firewall"] == 1
        assert all(f["result"].startswith(("now", "applied", "done")) for f in report["fixes"]
                   if f["action"] in ("set_server_url", "firewall", "reboot")), report["fixes"]
        assert {p["verdict"] for p in report["plugs"]} == {"isolated"}, report["plugs"]
        # back up, each plug goes for the server it was given: our listener
        _wait("every plug at our listener again", lambda: {
            mac for event_id, mac in _event_ids(world.db, "tls") if event_id > before_fix
        } >= set(macs))
        assert [e for e in _cloud_log(world.cloud_log)[registered:]
                if e["event"] == "register"] == []
        serve.stop()
