"""LAN topologies for many-node tests and benchmarks (pure: no namespaces here).

A topology maps each host to the LAN segments (bridges) it is plugged into,
the shape ``tests.netns.Lan`` builds. Every host on a segment links to every
other host on it (they find each other with mDNS), so hop distances are
shortest paths over "shares a segment".
"""

from __future__ import annotations

from collections import deque

Topology = dict[str, list[int]]


def chain(nodes: int, diameter: int) -> Topology:
    """``diameter`` segments in a row, consecutive ones joined by one host on both.

    The other hosts are spread over the segments, the two end segments first (so
    the ends are ``diameter`` hops apart), then the rest in turn. Names are
    ``n00``, ``n01``, ... in segment order.
    """
    if diameter < 1 or nodes < diameter + 1:
        raise ValueError(f"{nodes} nodes cannot span {diameter} hops")
    bridges = diameter - 1
    counts = [0] * diameter
    order = [0, diameter - 1, *range(1, diameter - 1)] if diameter > 1 else [0]
    for i in range(nodes - bridges):
        counts[order[i % len(order)]] += 1
    hosts: list[list[int]] = []
    for seg in range(diameter):
        hosts += [[seg]] * counts[seg]
        if seg < diameter - 1:
            hosts.append([seg, seg + 1])
    return {f"n{i:02d}": segs for i, segs in enumerate(hosts)}


def line(nodes: int) -> Topology:
    """Hosts in a row, each segment holding two neighbours: ``nodes - 1`` hops end to end."""
    return chain(nodes, nodes - 1)


def neighbours(topo: Topology) -> dict[str, set[str]]:
    by_segment: dict[int, set[str]] = {}
    for host, segs in topo.items():
        for seg in segs:
            by_segment.setdefault(seg, set()).add(host)
    return {h: set().union(*(by_segment[s] for s in segs)) - {h} for h, segs in topo.items()}


def distances(topo: Topology, source: str) -> dict[str, int]:
    """Hops from ``source`` to every host."""
    near = neighbours(topo)
    dist = {source: 0}
    queue = deque([source])
    while queue:
        host = queue.popleft()
        for other in near[host]:
            if other not in dist:
                dist[other] = dist[host] + 1
                queue.append(other)
    return dist


def ends(topo: Topology) -> tuple[str, str]:
    """Two hosts as far apart as any (the first host and the one farthest from it)."""
    first = next(iter(topo))
    dist = distances(topo, first)
    far = max(dist, key=lambda h: (dist[h], h))
    back = distances(topo, far)
    return max(back, key=lambda h: (back[h], h)), far


def diameter(topo: Topology) -> int:
    a, b = ends(topo)
    return distances(topo, a)[b]
