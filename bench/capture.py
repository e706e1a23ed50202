"""Count the bytes crossing one interface, from inside its namespace.

    ip netns exec NS python -m bench.capture IFACE OUT.json

Counts every frame seen on IFACE (both directions, Ethernet headers included)
until SIGTERM/SIGINT, then writes {"bytes": n, "packets": n, "tcp_payload": n}
to OUT.json. A packet socket sees only its own namespace's interfaces.
"""

from __future__ import annotations

import json
import signal
import socket
import sys

ETH_P_ALL = 0x0003


def main() -> None:
    iface, out = sys.argv[1], sys.argv[2]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    sock.settimeout(0.2)
    stats = {"bytes": 0, "packets": 0, "tcp_payload": 0}
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(out + ".ready", "w") as f:
        f.write("1")
    while running:
        try:
            frame = sock.recv(70000)
        except (TimeoutError, InterruptedError):
            continue
        stats["bytes"] += len(frame)
        stats["packets"] += 1
        ip = frame[14:]
        if len(ip) >= 20 and ip[0] >> 4 == 4 and ip[9] == socket.IPPROTO_TCP:
            ihl = (ip[0] & 0x0F) * 4
            total = int.from_bytes(ip[2:4], "big")
            tcp = ip[ihl:total]
            if len(tcp) >= 20:
                stats["tcp_payload"] += len(tcp) - (tcp[12] >> 4) * 4
    with open(out, "w") as f:
        json.dump(stats, f)


if __name__ == "__main__":
    main()
