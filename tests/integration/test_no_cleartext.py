"""What two nodes send each other is never readable on the wire (a raw capture on loopback)."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest

from tazcom.common import rpc
from tests.harness import BULK, BusTap, request, wait_for

ETH_P_ALL = 0x0003
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a raw capture needs root")


class Capture(threading.Thread):
    """TCP payloads on ``lo`` to or from ``ports``."""

    def __init__(self, ports: set[int]) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.payloads: list[bytes] = []
        self.stop_flag = threading.Event()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                frame, (_, _, pkttype, *_rest) = self.sock.recvfrom(70000)
            except TimeoutError:
                continue
            if pkttype == socket.PACKET_OUTGOING:  # each loopback packet shows up twice
                continue
            ip = frame[14:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
                continue
            ihl = (ip[0] & 0x0F) * 4
            total = struct.unpack("!H", ip[2:4])[0]
            tcp = ip[ihl:total]
            sport, dport = struct.unpack("!HH", tcp[:4])
            if sport in self.ports or dport in self.ports:
                offset = (tcp[12] >> 4) * 4
                if tcp[offset:]:
                    self.payloads.append(bytes(tcp[offset:]))

    def close(self) -> bytes:
        self.stop_flag.set()
        self.join(2)
        self.sock.close()
        return b"".join(self.payloads)


def test_payloads_and_nicknames_never_cross_in_clear_text(make_node) -> None:
    a = make_node("alice-secretnick", config=BULK).start().wait_up()  # 50 secrets at once
    b = make_node("bob-secretnick", config=BULK).start()
    ports = {request(a, "gateway", rpc.GetGatewayInfo()).port}
    b.wait_up()
    ports.add(request(b, "gateway", rpc.GetGatewayInfo()).port)
    # restart bob's gateway under capture, so the handshake is captured too
    capture = Capture(ports)
    capture.start()
    try:
        b.ctl("restart", "tazcom:gateway")
        a.wait_peer("bob-secretnick", ("verified",), timeout=20)
        tap = BusTap(b, "link.message")
        secrets = [f"the rendezvous is at dawn, number {i:04d}".encode() for i in range(50)]
        try:
            for body in secrets:
                request(a, "gateway", rpc.SendToPeer(key=b.key, kind="chat", body=body))
            wait_for(lambda: len(tap.of("link.message")) == len(secrets), 10, "50 messages")
        finally:
            tap.close()
    finally:
        seen = capture.close()
    assert len(seen) > sum(map(len, secrets)), "the capture saw the link's traffic"
    for needle in [*secrets, b"rendezvous", b"secretnick", bytes.fromhex(a.key),
                   bytes.fromhex(b.key), a.key.encode(), b"hello", b"chat"]:
        assert needle not in seen, f"{needle!r} crossed the wire in clear text"
