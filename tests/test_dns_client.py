"""The stub resolver (hs100local.dns.client) against dnsmasq, and against liars."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from dnslib import CNAME, QTYPE, RR, A, DNSRecord

from hs100local.dns.client import LookupTimeout, lookup_a, parse_reply


@pytest.fixture
def dnsmasq(tmp_path):
    from servicekit import start_dnsmasq, stop_process

    proc, port = start_dnsmasq(["--address=/fwd.test/198.18.7.7",
                                "--cname=n-devs.cloud.test,n-eu-devs.cloud.test",
                                "--host-record=n-eu-devs.cloud.test,198.18.7.8",
                                "--address=/gone.test/"], workdir=tmp_path)
    yield port
    stop_process(proc)


def test_answers_nxdomain_and_cname_chains_from_dnsmasq(dnsmasq):
    async def main():
        server = ("127.0.0.1", dnsmasq)
        return await asyncio.gather(
            lookup_a(server, "host.fwd.test"), lookup_a(server, "x.gone.test"),
            lookup_a(server, "N-Devs.Cloud.Test."))

    plain, gone, chained = asyncio.run(main())
    assert (plain.rcode, plain.addresses) == ("NOERROR", ("198.18.7.7",))
    assert (gone.rcode, gone.addresses) == ("NXDOMAIN", ())
    assert chained.cnames == ("n-eu-devs.cloud.test",)
    assert chained.addresses == ("198.18.7.8",)


class _Liar(threading.Thread):
    """A UDP 'server' that first sends wrong replies, then maybe the right one."""

    def __init__(self, right: bool) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.right = right

    def run(self) -> None:
        data, peer = self.sock.recvfrom(4096)
        query = DNSRecord.parse(data)
        wrong_id = query.reply()
        wrong_id.header.id ^= 1
        wrong_id.add_answer(RR(str(query.q.qname), QTYPE.A, rdata=A("6.6.6.6")))
        other_name = DNSRecord.question("evil.test").reply()
        other_name.header.id = query.header.id
        other_name.add_answer(RR("evil.test", QTYPE.A, rdata=A("6.6.6.6")))
        for bogus in (b"\x00garbage", wrong_id.pack(), other_name.pack(), b"\xff" * 5000):
            self.sock.sendto(bogus, peer)
        if self.right:
            good = query.reply()
            good.add_answer(RR(str(query.q.qname), QTYPE.A, rdata=A("198.18.9.9")))
            self.sock.sendto(good.pack(), peer)
        self.sock.close()


@pytest.mark.parametrize("right", [True, False])
def test_wrong_replies_are_ignored(right):
    liar = _Liar(right)
    liar.start()

    async def main():
        return await lookup_a(("127.0.0.1", liar.port), "n-devs.tplinkcloud.com", timeout=1)

    if right:
        assert asyncio.run(main()).addresses == ("198.18.9.9",)
    else:
        with pytest.raises(LookupTimeout):
            asyncio.run(main())
    liar.join(5)


def test_closed_port_fails_fast():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    async def main():
        return await lookup_a(("127.0.0.1", port), "a.test", timeout=5)

    loop_start = asyncio.run(_timed(main))
    assert loop_start < 2  # ICMP port unreachable, not the 5 s timeout


async def _timed(coro_fn):
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(OSError) as caught:
        await coro_fn()
    assert not isinstance(caught.value, LookupTimeout)
    return loop.time() - start


def test_cname_loop_ends():
    query = DNSRecord.question("a.test")
    reply = query.reply()
    reply.add_answer(RR("a.test", QTYPE.CNAME, rdata=CNAME("b.test")))
    reply.add_answer(RR("b.test", QTYPE.CNAME, rdata=CNAME("a.test")))
    found = parse_reply(reply.pack(), "a.test", query.header.id)
    assert found is not None and found.addresses == () and found.cnames == ("b.test", "a.test")
