"""`hs100local firewall --apply/--remove` with real traffic, in network namespaces.

A router namespace joins three segments: the plugs (198.18.1.0/24), the LAN
(198.18.2.0/24) and a stand-in for the internet (198.18.100.0/24). Tiny responders
answer with their host's name, so a probe tells not only whether it got through but
who answered: a DNS query to the "internet" that comes back from the router was
redirected. Each backend (nft, iptables) is applied inside the router namespace on
top of unrelated rules of someone else's, and removing must give back the ruleset
exactly as it was. Needs root (skips without, fails with HS100LOCAL_REQUIRE_NETNS=1).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import netlab
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(REPO)}
ROUTER, PLUG, CLIENT, WAN = "198.18.1.1", "198.18.1.50", "198.18.2.10", "198.18.100.100"
ROUTER6, PLUG6 = "2001:db8:1::1", "2001:db8:1::50"
LAN = "198.18.2.0/24"
PROBE_TIMEOUT = 3.0  # a refusal takes milliseconds; a drop would take this long

#: answers every TCP connection with its name and every datagram with "name:" + data
RESPONDER = r"""
import socket, sys, threading
name = sys.argv[1].encode()
def tcp(sock):
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(name)
def udp(sock):
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(name + b":" + data, peer)
for spec in sys.argv[2:]:
    proto, address, port = spec.split("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, int(port)))
    if proto == "tcp":
        sock.listen(16)
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(sock,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

#: one attempt per "proto/address/port" argument; prints a JSON list of outcomes
PROBE = r"""
import json, socket, sys, time
results = []
for spec in sys.argv[2:]:
    proto, address, port = spec.split("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    start = time.monotonic()
    try:
        if proto == "tcp":
            with socket.create_connection((address, int(port)), timeout=float(sys.argv[1])) as s:
                data = s.recv(100)
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(float(sys.argv[1]))
                s.connect((address, int(port)))
                s.send(b"q")
                data = s.recv(100)
        outcome = data.decode()
    except OSError as exc:
        outcome = type(exc).__name__
    results.append({"spec": spec, "outcome": outcome, "elapsed": time.monotonic() - start})
print(json.dumps(results))
"""

#: someone else's rules, which applying and removing ours must leave exactly as they are
UNRELATED_NFT = """table inet unrelated {
	set watched {
		type ipv4_addr
		elements = { 198.19.255.9 }
	}
	chain input {
		type filter hook input priority 10; policy accept;
		ip saddr @watched tcp dport 2022 accept comment "not ours"
	}
	chain forward {
		type filter hook forward priority 10; policy accept;
		ct state invalid drop comment "not ours: a router tracks connections"
	}
}
"""
UNRELATED_IPTABLES = [
    ["iptables", "-A", "INPUT", "-s", "198.19.255.1", "-j", "ACCEPT"],
    ["iptables", "-A", "FORWARD", "-s", "198.19.255.2", "-j", "DROP"],
    ["iptables", "-t", "nat", "-A", "PREROUTING", "-s", "198.19.255.3", "-j", "RETURN"],
    ["ip6tables", "-A", "INPUT", "-s", "2001:db8:ffff::1", "-j", "ACCEPT"],
    ["ip6tables", "-A", "FORWARD", "-s", "2001:db8:ffff::2", "-j", "DROP"],
]

INSTALLED = ("import json\nfrom hs100local.firewall import installed\n"
             "state = installed()\n"
             "print(json.dumps(state.rules.as_dict() if state.rules else state.unreadable))\n")


@dataclass
class Net:
    lab: netlab.Lab
    router: netlab.Host
    plug: netlab.Host
    client: netlab.Host
    wan: netlab.Host
    plug_mac: str
    config: Path


def _mac(host: netlab.Host, ifname: str) -> str:
    links = json.loads(host.run(["ip", "-j", "link", "show", ifname]).stdout)
    return str(links[0]["address"]).upper()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    netlab.require_netns()
    config = tmp_path_factory.mktemp("fw") / "hs100local.toml"
    # standard ports, addresses moved by --companion: independent of any /etc/hs100local
    config.write_text('dns = "0.0.0.0:53"\nntp = "0.0.0.0:123"\n'
                      'cloud = ["0.0.0.0:443", "0.0.0.0:50443"]\n')
    with netlab.Lab(prefix=f"hsfwn{os.getpid() % 10000}") as lab:
        segments = {name: lab.add_bridge(name) for name in ("brplug", "brlan", "brwan")}
        router, plug = lab.add_host("router"), lab.add_host("plug")
        client, wan = lab.add_host("client"), lab.add_host("wan")
        lab.connect(router, segments["brplug"], "eth0", f"{ROUTER}/24")
        lab.connect(router, segments["brlan"], "eth1", "198.18.2.1/24")
        lab.connect(router, segments["brwan"], "eth2", "198.18.100.1/24")
        lab.connect(plug, segments["brplug"], "eth0", f"{PLUG}/24")
        lab.connect(client, segments["brlan"], "eth0", f"{CLIENT}/24")
        lab.connect(wan, segments["brwan"], "eth0", f"{WAN}/24")
        for host, gateway, networks in (
                (plug, ROUTER, ("198.18.2.0/24", "198.18.100.0/24")),
                (client, "198.18.2.1", ("198.18.1.0/24", "198.18.100.0/24")),
                (wan, "198.18.100.1", ("198.18.1.0/24", "198.18.2.0/24"))):
            for network in networks:
                host.run(["ip", "route", "add", network, "via", gateway])
        router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for host, address in ((router, ROUTER6), (plug, PLUG6)):  # nodad: usable at once
            host.run(["ip", "-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad"])
        router.run(["nft", "-f", "-"], input=UNRELATED_NFT)
        for argv in UNRELATED_IPTABLES:
            router.run(argv)
        servers = [
            router.spawn([sys.executable, "-c", RESPONDER, "router", f"tcp/{ROUTER}/53",
                          f"udp/{ROUTER}/53", f"udp/{ROUTER}/123", f"tcp/{ROUTER}/443",
                          f"tcp/{ROUTER}/2222", f"tcp/{ROUTER6}/2222"], ready="ready"),
            wan.spawn([sys.executable, "-c", RESPONDER, "wan", f"tcp/{WAN}/80",
                       f"udp/{WAN}/5000", f"udp/{WAN}/53", f"tcp/{WAN}/53", f"udp/{WAN}/123",
                       f"tcp/{WAN}/443"], ready="ready"),
            client.spawn([sys.executable, "-c", RESPONDER, "client", f"tcp/{CLIENT}/7000"],
                         ready="ready"),
            plug.spawn([sys.executable, "-c", RESPONDER, "plug", f"tcp/{PLUG}/9999",
                        f"udp/{PLUG}/9999", f"tcp/{PLUG}/8081"], ready="ready"),
        ]
        for server in servers:
            server.wait_ready()
        yield Net(lab, router, plug, client, wan, _mac(plug, "eth0"), config)


def probe(host: netlab.Host, *specs: str) -> dict[str, tuple[str, float]]:
    """{spec: (what answered or the error's name, seconds)}, one fresh socket each."""
    out = host.run([sys.executable, "-c", PROBE, str(PROBE_TIMEOUT), *specs]).stdout
    return {r["spec"]: (r["outcome"], r["elapsed"]) for r in json.loads(out)}


def outcomes(host: netlab.Host, *specs: str) -> dict[str, str]:
    return {spec: outcome for spec, (outcome, _) in probe(host, *specs).items()}


def firewall(net: Net, *args: str, code: int = 0) -> str:
    result = net.router.run([sys.executable, "-m", "hs100local", "firewall", *args],
                            check=False, env=ENV)
    assert result.returncode == code, (result.stdout, result.stderr)
    return result.stdout


def ruleset(net: Net) -> str:
    return net.router.run(["nft", "list", "ruleset"]).stdout


def installed(net: Net) -> dict | bool:
    """The rules' coverage as a dict, else whether nothing could be read."""
    return json.loads(net.router.run([sys.executable, "-c", INSTALLED], env=ENV).stdout)


def refused_fast(results: dict[str, tuple[str, float]], spec: str, error: str) -> None:
    outcome, elapsed = results[spec]
    assert outcome == error, (spec, results)
    assert elapsed < 1.0, (spec, elapsed)  # a reset or an ICMP error, not a timeout


WAN_TCP, WAN_UDP = f"tcp/{WAN}/80", f"udp/{WAN}/5000"
WAN_DNS, WAN_DNS_TCP = f"udp/{WAN}/53", f"tcp/{WAN}/53"
WAN_NTP, WAN_CLOUD = f"udp/{WAN}/123", f"tcp/{WAN}/443"
ROUTER_DNS, ROUTER_OTHER = f"udp/{ROUTER}/53", f"tcp/{ROUTER}/2222"
ROUTER_V6 = f"tcp/{ROUTER6}/2222"
TO_CLIENT = f"tcp/{CLIENT}/7000"
PLUG_CONTROL, PLUG_CONTROL_UDP, PLUG_OTHER = (f"tcp/{PLUG}/9999", f"udp/{PLUG}/9999",
                                              f"tcp/{PLUG}/8081")


def apply_args(net: Net, backend: str, *plugs: str) -> list[str]:
    return ["--format", backend, "--config", str(net.config), "--companion", ROUTER,
            "--lan", LAN, *plugs, "--apply"]


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_apply_isolates_the_plug_and_remove_restores_the_exact_ruleset(net, backend):
    before = ruleset(net)
    assert "unrelated" in before and "198.19.255.3" in before  # something to keep
    assert outcomes(net.plug, WAN_TCP, WAN_UDP, WAN_DNS, WAN_CLOUD, TO_CLIENT, ROUTER_OTHER,
                    ROUTER_V6) == {
        WAN_TCP: "wan", WAN_UDP: "wan:q", WAN_DNS: "wan:q", WAN_CLOUD: "wan",
        TO_CLIENT: "client", ROUTER_OTHER: "router", ROUTER_V6: "router"}
    assert outcomes(net.client, PLUG_CONTROL, PLUG_OTHER) == {PLUG_CONTROL: "plug",
                                                              PLUG_OTHER: "plug"}
    assert installed(net) is False  # no rules, and it could look

    args = apply_args(net, backend, "--mac", net.plug_mac, "--ip", PLUG)
    try:
        assert firewall(net, *args).startswith("applied ")
        once = ruleset(net)
        firewall(net, *args)  # again: replaced, not duplicated
        assert ruleset(net) == once
        assert once.lower().count("hs100local") > 10 and "unrelated" in once

        results = probe(net.plug, WAN_TCP, WAN_UDP, WAN_DNS, WAN_DNS_TCP, WAN_NTP, WAN_CLOUD,
                        ROUTER_DNS, ROUTER_OTHER, ROUTER_V6, TO_CLIENT)
        refused_fast(results, WAN_TCP, "ConnectionRefusedError")
        refused_fast(results, WAN_UDP, "OSError")  # ICMP admin-prohibited: EHOSTUNREACH
        assert results[WAN_DNS][0] == "router:q"  # the companion's DNS answered
        assert results[WAN_DNS_TCP][0] == "router"
        assert results[WAN_NTP][0] == "router:q"
        assert results[WAN_CLOUD][0] == "router"  # to the cloud listener, recorded there
        assert results[ROUTER_DNS][0] == "router:q"
        refused_fast(results, ROUTER_OTHER, "ConnectionRefusedError")
        refused_fast(results, ROUTER_V6, "ConnectionRefusedError")  # IPv6 from its MAC
        refused_fast(results, TO_CLIENT, "ConnectionRefusedError")

        lan = probe(net.client, PLUG_CONTROL, PLUG_CONTROL_UDP, PLUG_OTHER)
        assert lan[PLUG_CONTROL][0] == "plug" and lan[PLUG_CONTROL_UDP][0] == "plug:q"
        refused_fast(lan, PLUG_OTHER, "ConnectionRefusedError")
        refused_fast(probe(net.wan, PLUG_CONTROL), PLUG_CONTROL, "ConnectionRefusedError")

        where = ("table inet hs100local" if backend == "nft"
                 else "HS100LOCAL chains in iptables")
        assert installed(net) == {"backend": backend, "where": where, "macs": [net.plug_mac],
                                  "ipv4": [PLUG], "lan": [LAN]}
    finally:
        removed = firewall(net, "--remove")
    assert removed.startswith("removed ")
    assert ruleset(net) == before  # exactly, someone else's rules included
    assert installed(net) is False
    assert firewall(net, "--remove") == "nothing to remove: no hs100local rules are installed\n"
    assert outcomes(net.plug, WAN_TCP, ROUTER_V6) == {WAN_TCP: "wan", ROUTER_V6: "router"}


@pytest.mark.parametrize(("backend", "selector"), [("nft", "--mac"), ("iptables", "--ip")])
def test_one_selector_alone_is_enough(net, backend, selector):
    before = ruleset(net)
    value = net.plug_mac if selector == "--mac" else PLUG
    try:
        firewall(net, *apply_args(net, backend, selector, value))
        results = probe(net.plug, WAN_TCP, WAN_DNS, ROUTER_V6)
        refused_fast(results, WAN_TCP, "ConnectionRefusedError")
        assert results[WAN_DNS][0] == "router:q"
        # IPv6 is refused by MAC only: an IPv4 address says nothing about it
        assert results[ROUTER_V6][0] == ("ConnectionRefusedError" if selector == "--mac"
                                         else "router")
        if selector == "--ip":  # traffic *to* a plug is matched by its address
            refused_fast(probe(net.client, PLUG_OTHER), PLUG_OTHER, "ConnectionRefusedError")
        found = installed(net)
        assert found and found["backend"] == backend
        assert (found["macs"], found["ipv4"]) == (([net.plug_mac], []) if selector == "--mac"
                                                 else ([], [PLUG]))
    finally:
        firewall(net, "--remove", "--format", backend)
    assert ruleset(net) == before


ECHO = r"""
import socket, sys, threading
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
def echo(conn):
    with conn:
        while data := conn.recv(100):
            conn.sendall(data)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""
#: connect, prove the connection works, then wait for the go (a line on a FIFO) and try
#: again on the same connection: what a plug's long-lived cloud connection does
LONG_CLIENT = r"""
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
conn.sendall(b"1"); assert conn.recv(1) == b"1"
print("connected", flush=True)
open(sys.argv[3]).read()
try:
    conn.sendall(b"2")
    print("echo" if conn.recv(1) == b"2" else "closed", flush=True)
except OSError as exc:
    print(type(exc).__name__, flush=True)
"""


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_a_connection_opened_before_the_rules_dies_with_them(net, backend, tmp_path):
    """A plug keeps its cloud connection open for days: applying the rules must end it,
    not let it live on as 'established'."""
    port = 8000 + (backend == "iptables")
    server = net.wan.spawn([sys.executable, "-c", ECHO, WAN, str(port)], ready="ready")
    server.wait_ready()
    go = tmp_path / f"go-{backend}"
    os.mkfifo(go)
    client = net.plug.spawn([sys.executable, "-c", LONG_CLIENT, WAN, str(port), str(go)],
                            ready="connected")
    client.wait_ready()
    try:
        firewall(net, *apply_args(net, backend, "--mac", net.plug_mac, "--ip", PLUG))
        go.write_text("go\n")
        assert client.wait(10) == 0
        assert client.stdout_text.split() == ["connected", "ConnectionResetError"]
    finally:
        firewall(net, "--remove", "--format", backend)
        server.stop()
