"""`hs100local serve` as a real process on loopback high ports, driven by real clients."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import ntplib
import prockit
import pytest
from servekit import REPO, Serve, answers, ask, write_config

from hs100local.events import EventStore


@pytest.fixture
def config(tmp_path, dnsmasq_upstream) -> Path:
    return write_config(tmp_path / "serve.toml", dnsmasq_upstream, tmp_path / "serve.db",
                        'sinkhole = ["blocked.test=nxdomain"]')


def test_serve_answers_dns_and_ntp_records_events_reloads_and_flushes(config, tmp_path):
    serve = Serve(config)
    try:
        dns_port, ntp_port = serve.ports["dns"], serve.ports["ntp"]
        assert answers(ask(dns_port, "n-devs.tplinkcloud.com")) == ["127.0.0.1"]
        assert answers(ask(dns_port, "a.fwd.test")) == ["198.18.7.7"]
        assert ask(dns_port, "x.blocked.test").rcode() == dns.rcode.NXDOMAIN
        assert answers(ask(dns_port, "pool.ntp.org")) == ["127.0.0.1"]  # -> our NTP
        response = ntplib.NTPClient().request("127.0.0.1", 4, ntp_port, timeout=3)
        assert response.stratum == 3 and abs(response.offset) < 0.01
        serve.wait_log(r"hs100local\.dns: 127\.0\.0\.1 name=n-devs\.tplinkcloud\.com")
        serve.wait_log(r"hs100local\.ntp: 127\.0\.0\.1 version=4")
        # a plug-like client at the cloud listener: TLS 1.0, one old suite, no SNI
        hello = prockit.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{serve.ports['cloud']}", "-tls1",
             "-cipher", "AES128-SHA@SECLEVEL=0"], input="", capture_output=True, text=True,
            timeout=20)
        assert "AES128-SHA" in hello.stdout, hello.stdout + hello.stderr
        serve.wait_log(r"hs100local\.tls: 127\.0\.0\.1 .*ja3_hash=f969abe9c9672188c1c4f850d20c48bd")

        # SIGHUP: a new rule applies without a restart; a broken file is refused.
        config.write_text(config.read_text().replace("blocked.test=nxdomain",
                                                     "later.test=null"))
        serve.proc.send_signal(signal.SIGHUP)
        serve.wait_log(r"SIGHUP: reloaded")
        assert answers(ask(dns_port, "x.later.test")) == ["0.0.0.0"]
        # forwarded now: the upstream's own answer (dnsmasq without upstreams: REFUSED)
        assert ask(dns_port, "x.blocked.test").rcode() == dns.rcode.REFUSED
        good = config.read_text()
        config.write_text(good + "\nttl = -1\n")
        serve.proc.send_signal(signal.SIGHUP)
        serve.wait_log(r"SIGHUP: config refused.*key 'ttl'")
        assert answers(ask(dns_port, "x.later.test")) == ["0.0.0.0"]  # still running as was
    finally:
        code = serve.stop()
    assert code == 0, "".join(serve.lines[-20:])
    with EventStore(tmp_path / "serve.db") as store:
        names = {e.details["name"] for e in store.events(kind="dns")}
        ntp = store.events(kind="ntp")
        tls = store.events(kind="tls")
    assert {"n-devs.tplinkcloud.com", "x.blocked.test", "pool.ntp.org",
            "x.later.test"} <= names
    assert [e.details["version"] for e in ntp] == [4]
    assert [(e.details["ja4"], e.details["outcome"]) for e in tls] == [
        ("t10i020300_a5878986a7c9_23f7d3b00788", "completed")]
    assert (tmp_path / "tls").is_dir()  # the certificate, generated beside the database


def test_serve_refuses_a_port_in_use_with_exit_3(config, tmp_path):
    import socket

    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        result = prockit.run(
            [sys.executable, "-m", "hs100local", "serve", "--config", str(config),
             "--ntp", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30,
            cwd=REPO, env={**os.environ})
    finally:
        taken.close()
    assert result.returncode == 3, result.stderr
    assert "cannot listen" in result.stderr and f"127.0.0.1:{port}" in result.stderr


def test_events_and_report_attribute_each_attempt_to_the_right_plug(tmp_path,
                                                                    dnsmasq_upstream):
    """Two emulated plugs on their own loopback addresses, discovered into the
    inventory; each talks to serve from its address; `events --json` and `report`
    name the right plug for every attempt, and a non-plug client is nobody."""
    import json
    import socket
    import ssl

    import trustme
    from tlskit import pinned_context

    from hs100local.emulator import MODELS, EmulatedPlug
    from hs100local.emulator.server import EmulatorThread

    db = tmp_path / "serve.db"
    lamp = EmulatorThread(EmulatedPlug(MODELS["hs100"], alias="Lamp"), host="127.0.0.2")
    heater = EmulatorThread(EmulatedPlug(MODELS["hs110"], alias="Heater"), host="127.0.0.3")
    with lamp, heater:
        found = prockit.run(
            [sys.executable, "-m", "hs100local", "--db", str(db), "discover", "--no-broadcast",
             "--target", f"127.0.0.2:{lamp.port}", "--target", f"127.0.0.3:{heater.port}",
             "--expect", "2", "--json"], capture_output=True, text=True, timeout=30, cwd=REPO)
        assert found.returncode == 0, found.stderr
    config = write_config(tmp_path / "serve.toml", dnsmasq_upstream, db)
    serve = Serve(config)
    try:
        def ask_from(source: str, name: str) -> None:
            query = dns.message.make_query(name, "A")
            reply = dns.query.udp(query, "127.0.0.1", port=serve.ports["dns"], timeout=3,
                                  source=source)
            assert answers(reply) == ["127.0.0.1"]

        dig = prockit.run(  # the lamp asks with dig, from its own address
            ["dig", "@127.0.0.1", "-p", str(serve.ports["dns"]), "-b", "127.0.0.2", "+short",
             "+tries=1", "+time=3", "n-devs.tplinkcloud.com", "A"],
            capture_output=True, text=True, timeout=20)
        assert dig.stdout.split() == ["127.0.0.1"], dig.stdout + dig.stderr
        ask_from("127.0.0.3", "devs.tplinkcloud.com")
        ask_from("127.0.0.1", "n-deventry.tplinkcloud.com")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ntp:  # the lamp's NTP
            ntp.bind(("127.0.0.2", 0))
            ntp.settimeout(3)
            ntp.sendto(b"\x23" + bytes(39) + (3_900_000_000).to_bytes(4, "big") + bytes(4),
                       ("127.0.0.1", serve.ports["ntp"]))
            assert len(ntp.recv(512)) == 48
        # the heater connects to the "cloud" like a plug: no SNI, pinned to its own CA
        context = pinned_context(trustme.CA(key_type=trustme.KeyType.RSA).cert_pem.bytes())
        context.check_hostname = False
        raw = socket.create_connection(("127.0.0.1", serve.ports["cloud"]), timeout=5,
                                       source_address=("127.0.0.3", 0))
        with raw, pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw)
        serve.wait_log(r"hs100local\.tls: 127\.0\.0\.3 \(Heater\) .*outcome=unknown_ca")
        serve.wait_log(r"hs100local\.dns: 127\.0\.0\.2 \(Lamp\) name=n-devs")
    finally:
        assert serve.stop() == 0, "".join(serve.lines[-20:])

    def cli(*args: str) -> object:
        result = prockit.run([sys.executable, "-m", "hs100local", "--db", str(db), *args],
                             capture_output=True, text=True, timeout=30, cwd=REPO)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    listed = cli("events", "--json")
    seen = {(e["kind"], e["client"], e["plug"]) for e in listed}
    assert {("dns", "127.0.0.2", "Lamp"), ("ntp", "127.0.0.2", "Lamp"),
            ("dns", "127.0.0.3", "Heater"), ("tls", "127.0.0.3", "Heater"),
            ("dns", "127.0.0.1", None)} <= seen
    for event in listed:
        assert event["time"].endswith("Z") and isinstance(event["details"], dict)
    [tls] = cli("events", "--json", "--kind", "tls", "--plug", "Heater", "--since", "1h")
    assert tls["details"]["outcome"] == "unknown_ca" and tls["details"]["sni"] is None
    assert tls["details"]["ja3_hash"] and tls["details"]["ja3"] and tls["details"]["ja4"]
    assert cli("events", "--json", "--kind", "tls", "--plug", "Lamp") == []

    report = cli("report", "--json")
    plugs = {p["alias"]: p for p in report["plugs"]}
    assert plugs["Heater"]["cloud"]["count"] == 1
    assert plugs["Heater"]["cloud"]["outcomes"] == {"unknown_ca": 1}
    assert plugs["Heater"]["cloud"]["ja3"] == {tls["details"]["ja3_hash"]: 1}
    assert plugs["Heater"]["verdict"].startswith("isolated: 1 cloud connection attempt")
    assert plugs["Lamp"]["names"] == {"n-devs.tplinkcloud.com": 1}
    assert plugs["Lamp"]["ntp_requests"] == 1 and plugs["Lamp"]["cloud"]["count"] == 0
    assert [o["client"] for o in report["other_clients"]] == ["127.0.0.1"]
