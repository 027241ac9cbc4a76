"""The namespace lab helper itself: LAN basics, frame loss, cleanup, availability.

Every test that builds a lab needs root; without it they skip (or fail when
HS100LOCAL_REQUIRE_NETNS=1). Traffic stays inside the lab on 198.18.0.0/24.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from collections.abc import Iterator

import netlab
import prockit
import pytest

PORT = 9999

# Echo one datagram back, then exit.
ECHO_SERVER = textwrap.dedent(
    f"""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", {PORT}))
    s.settimeout(10)
    print("ready", flush=True)
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
    print("got", data.decode(), "from", peer[0], flush=True)
    """
)

# Count datagrams until the sender has been quiet for a moment (a socket timeout,
# not a sleep), then print the count. A large buffer so a burst is never dropped
# here, which would be counted as link loss.
COUNTER = textwrap.dedent(
    f"""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (we are root)
    s.bind(("0.0.0.0", {PORT}))
    s.settimeout(10)
    print("ready", flush=True)
    seen = set()
    try:
        while True:
            data = s.recv(64)
            seen.add(data)
            s.settimeout(0.3)
    except TimeoutError:
        pass
    print(len(seen), flush=True)
    """
)

SENDER = textwrap.dedent(
    f"""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(int(sys.argv[2])):
        s.sendto(str(i).encode(), (sys.argv[1], {PORT}))
    """
)


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    netlab.require_netns()
    with netlab.Lab() as lab:
        yield lab


@pytest.fixture
def pair(lab: netlab.Lab) -> tuple[netlab.Host, netlab.Host, netlab.Bridge]:
    """Hosts a (198.18.0.11) and b (198.18.0.12) on one bridge."""
    br = lab.add_bridge("br0")
    a, b = lab.add_host("a"), lab.add_host("b")
    assert lab.connect(a, br, "eth0", "198.18.0.11/24") == "198.18.0.11"
    assert lab.connect(b, br, "eth0", "198.18.0.12/24") == "198.18.0.12"
    return a, b, br


def test_udp_echo_between_hosts(pair) -> None:
    a, b, _ = pair
    assert a.addresses() == ["198.18.0.11"]
    server = b.spawn([sys.executable, "-c", ECHO_SERVER], ready="ready")
    server.wait_ready()
    client = textwrap.dedent(
        f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(b"hello", ("198.18.0.12", {PORT}))
        print(s.recvfrom(2048)[0].decode())
        """
    )
    assert a.run([sys.executable, "-c", client], timeout=15).stdout.strip() == "hello"
    assert server.wait(5) == 0
    assert "got hello from 198.18.0.11" in server.stdout_text


def test_directed_broadcast_without_default_route(pair) -> None:
    a, b, _ = pair
    assert a.run(["ip", "route", "show", "default"]).stdout.strip() == ""
    listener = textwrap.dedent(
        f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", {PORT}))
        s.settimeout(10)
        print("ready", flush=True)
        data, peer = s.recvfrom(2048)
        print(data.decode(), peer[0], flush=True)
        """
    )
    server = b.spawn([sys.executable, "-c", listener], ready="ready")
    server.wait_ready()
    sender = textwrap.dedent(
        f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(b"discover", ("198.18.0.255", {PORT}))
        """
    )
    a.run([sys.executable, "-c", sender])
    assert server.wait(10) == 0
    assert server.stdout_text.splitlines()[-1] == "discover 198.18.0.11"


def _send_and_count(a: netlab.Host, b: netlab.Host, count: int) -> int:
    counter = b.spawn([sys.executable, "-c", COUNTER], ready="ready")
    counter.wait_ready()
    a.run([sys.executable, "-c", SENDER, "198.18.0.12", str(count)])
    assert counter.wait(15) == 0, counter.stderr_text
    return int(counter.stdout_text.splitlines()[-1])


def test_loss_and_clear_loss(lab: netlab.Lab, pair) -> None:
    a, b, br = pair
    # Pin b's MAC in a: traffic is one-way, and a lost ARP exchange would otherwise
    # drop whole bursts and skew the per-frame loss we measure.
    link = json.loads(b.run(["ip", "-j", "link", "show", "dev", "eth0"]).stdout)[0]
    a.run(["ip", "neigh", "replace", "198.18.0.12", "lladdr", link["address"],
           "dev", "eth0", "nud", "permanent"])  # fmt: skip

    assert lab.set_loss(br, 30) in ("netem", "nftables")
    received = _send_and_count(a, b, 400)
    assert 400 * 0.55 <= received <= 400 * 0.85, f"{400 - received}/400 lost at 30% loss"

    lab.clear_loss(br)
    received = _send_and_count(a, b, 400)
    assert received >= 396, f"{400 - received}/400 lost without loss"


def test_close_removes_namespaces_and_processes() -> None:
    netlab.require_netns()
    lab = netlab.Lab(prefix="hsltclose")
    host = lab.add_host("a")
    lab.connect(host, lab.add_bridge("br0"), "eth0", "198.18.0.11/24")
    sleeper = host.spawn(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        ready="ready",
    )
    assert sleeper.wait_ready() == "ready"
    assert {"hsltclose-a", "hsltclose-sw"} <= set(netlab.list_namespaces())
    lab.close()
    assert sleeper.popen.poll() is not None
    assert not [ns for ns in netlab.list_namespaces() if ns.startswith("hsltclose")]
    lab.close()  # idempotent


def test_new_lab_removes_namespaces_of_a_crashed_run() -> None:
    netlab.require_netns()
    prefix = "hsltcrash"
    unrelated = f"{prefix}-x-y"  # not "{prefix}-{name}": must survive
    for ns in (f"{prefix}-a", f"{prefix}-sw", unrelated):
        prockit.run(["ip", "netns", "add", ns], check=True)
    # A process the crashed run left running inside one of its namespaces.
    orphan = prockit.spawn(["ip", "netns", "exec", f"{prefix}-a", "sleep", "60"])
    try:
        with netlab.Lab(prefix=prefix):
            names = set(netlab.list_namespaces())
            assert f"{prefix}-a" not in names
            assert f"{prefix}-sw" not in names
            assert unrelated in names
            assert orphan.wait(5) != 0
    finally:
        prockit.stop(orphan, signal.SIGKILL)
        prockit.run(["ip", "netns", "del", unrelated], check=False)


def test_same_prefix_twice_is_refused(lab: netlab.Lab) -> None:
    with pytest.raises(netlab.NetlabError, match="already open"):
        netlab.Lab(prefix=lab.prefix)


def test_wait_ready_reports_early_exit_and_timeout(lab: netlab.Lab) -> None:
    host = lab.add_host("a")
    dying = host.spawn([sys.executable, "-c", "import sys; sys.exit('boom')"], ready="ready")
    silent = host.spawn([sys.executable, "-c", "import time; time.sleep(60)"], ready="ready")
    with pytest.raises(netlab.NetlabError, match=r"(?s)before printing.*boom"):
        dying.wait_ready()
    with pytest.raises(netlab.NetlabError, match=r"within 0\.2 s"):
        silent.wait_ready(timeout=0.2)
    assert silent.stop() != 0


def test_run_failure_shows_argv_code_and_output(lab: netlab.Lab) -> None:
    host = lab.add_host("a")
    with pytest.raises(netlab.CommandError) as info:
        host.run([sys.executable, "-c", "import sys; print('out'); sys.exit('err')"])
    err = info.value
    assert err.returncode == 1
    assert "out" in str(err) and "err" in str(err) and sys.executable in str(err)


def test_unavailable_without_root(monkeypatch) -> None:
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    reason = netlab.netns_unavailable_reason()
    assert isinstance(reason, str) and "root" in reason


def test_require_netns_fails_when_required(monkeypatch) -> None:
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    monkeypatch.setenv(netlab.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="root"):
        netlab.require_netns()
    monkeypatch.setenv(netlab.REQUIRE_ENV, "0")
    with pytest.raises(pytest.skip.Exception, match="root"):
        netlab.require_netns()
