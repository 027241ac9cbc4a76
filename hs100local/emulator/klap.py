"""An emulated plug whose firmware update closed port 9999 (KLAP firmware).

Such a device no longer speaks the XOR protocol; it answers only the TDP v2
discovery probe on UDP 20002/20004 with its model, MAC and encryption scheme
(KLAP over HTTP port 80, which needs cloud credentials). Discovery must flag it
as not controllable; this double lets the tests and users see that happen. The
answer's shape follows python-kasa's ``discovery_result`` fixtures (e.g. HS100(UK)
hw 4.1 fw 1.1.0). Probes with a bad header, length or CRC are dropped, as the
firmware ignores what it cannot parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from typing import Any

from hs100local import tdp
from hs100local.emulator.models import ModelSpec
from hs100local.errors import ProtocolError

log = logging.getLogger("hs100local.emulator")

#: hardware revisions known to have received KLAP-only firmware (plug-facts)
KLAP_HARDWARE = {"hs100": "4.1", "hs200": "5.0", "hs300": "2.0", "kp303": "2.0"}


class KlapDevice:
    """Sans-I/O: a TDP probe in, the device's answer out (or ``None`` to drop it)."""

    def __init__(self, spec: ModelSpec, mac: str) -> None:
        self.spec = spec
        self.mac = mac.upper().replace("-", ":")
        self.hw_ver = KLAP_HARDWARE.get(spec.key, spec.hw_ver)
        digest = hashlib.sha1(f"klap/{self.mac}".encode()).hexdigest().upper()
        self.device_id = digest[:32]
        self.owner = digest[8:40]

    @property
    def alias(self) -> str:
        return ""

    def result(self, own_ip: str) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "device_model": self.spec.model,
            "device_type": "IOT.SMARTPLUGSWITCH",
            "factory_default": False,
            "hw_ver": self.hw_ver,
            "ip": own_ip,
            "mac": self.mac.replace(":", "-"),
            "mgt_encrypt_schm": {"encrypt_type": "KLAP", "http_port": 80,
                                 "is_support_https": False},
            "owner": self.owner,
        }

    def answer(self, datagram: bytes, own_ip: str) -> bytes | None:
        try:
            probe = tdp.parse_probe(datagram)
        except ProtocolError as exc:
            log.debug("dropping TDP datagram: %s", exc)
            return None
        return tdp.build_answer(self.result(own_ip), probe.serial)


def own_address(bound: str, peer: tuple[str, int]) -> str:
    """The address a reply to ``peer`` leaves from (what the device reports as its IP)."""
    if bound not in ("", "0.0.0.0"):
        return bound
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(peer)  # a route lookup only; nothing is sent
        return probe.getsockname()[0]
    except OSError:
        return "0.0.0.0"
    finally:
        probe.close()


class _TdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, server: KlapServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > tdp.MAX_DATAGRAM:
            return
        self.server.requests += 1
        reply = self.server.device.answer(data, own_address(self.server.host, addr))
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class KlapServer:
    """Serve a :class:`KlapDevice` on UDP ``ports`` (20002 and 20004 by default)."""

    def __init__(self, device: KlapDevice, host: str = "127.0.0.1",
                 ports: tuple[int, ...] = tdp.TDP_PORTS) -> None:
        self.device = device
        self.plug = device
        self.host = host
        self.ports = ports
        self.requests = 0
        self._transports: list[asyncio.DatagramTransport] = []

    @property
    def port(self) -> int:
        return self.ports[0]

    async def start(self) -> KlapServer:
        loop = asyncio.get_running_loop()
        bound: list[int] = []
        try:
            for port in self.ports:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _TdpEndpoint(self), local_addr=(self.host, port)
                )
                self._transports.append(transport)  # type: ignore[arg-type]
                bound.append(transport.get_extra_info("sockname")[1])
        except OSError:
            await self.close()
            raise
        self.ports = tuple(bound)
        log.info("emulating KLAP %s on udp %s:%s", self.device.spec.model, self.host,
                 "/".join(map(str, bound)))
        return self

    async def close(self) -> None:
        for transport in self._transports:
            with contextlib.suppress(Exception):
                transport.close()
        self._transports.clear()
