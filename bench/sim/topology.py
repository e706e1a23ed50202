"""Topologies for the mesh simulator: lists of undirected edges between node indexes.

Every builder returns a connected graph (it retries or adds bridges) and is
deterministic for a given ``rng``.
"""

from __future__ import annotations

import math
import random
from collections import deque

Edges = set[tuple[int, int]]


def _edge(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def adjacency(n: int, edges: Edges) -> list[set[int]]:
    adj: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    return adj


def bfs(adj: list[set[int]] | dict[int, set[int]], start: int,
        alive: set[int] | None = None) -> dict[int, int]:
    dist = {start: 0}
    queue = deque([start])
    while queue:
        x = queue.popleft()
        for y in adj[x]:
            if y not in dist and (alive is None or y in alive):
                dist[y] = dist[x] + 1
                queue.append(y)
    return dist


def _connect(n: int, edges: Edges, rng: random.Random, near=None) -> Edges:
    """Join the components with one edge each (to the nearest node when ``near`` is given)."""
    adj = adjacency(n, edges)
    seen: set[int] = set()
    comps = []
    for i in range(n):
        if i not in seen:
            comp = set(bfs(adj, i))
            seen |= comp
            comps.append(sorted(comp))
    for comp in comps[1:]:
        if near is None:
            edges.add(_edge(rng.choice(comp), rng.choice(comps[0])))
        else:
            a, b = min(((a, b) for a in comp for b in comps[0]), key=lambda p: near(*p))
            edges.add(_edge(a, b))
        comps[0] = comps[0] + comp
    return edges


def random_graph(n: int, degree: float, rng: random.Random) -> Edges:
    """Erdos-Renyi with mean ``degree``, made connected: like a random overlay mesh."""
    edges: Edges = set()
    want = int(n * degree / 2)
    while len(edges) < want:
        a, b = rng.randrange(n), rng.randrange(n)
        if a != b:
            edges.add(_edge(a, b))
    return _connect(n, edges, rng)


def geometric(n: int, degree: float, rng: random.Random) -> Edges:
    """Random geometric graph in the unit square: nodes in radio range link (Wi-Fi-like)."""
    radius = math.sqrt(degree / (math.pi * n))
    pts = [(rng.random(), rng.random()) for _ in range(n)]
    cell = radius
    grid: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(pts):
        grid.setdefault((int(x / cell), int(y / cell)), []).append(i)
    edges: Edges = set()
    for i, (x, y) in enumerate(pts):
        cx, cy = int(x / cell), int(y / cell)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in grid.get((cx + dx, cy + dy), ()):
                    if j > i and math.dist(pts[i], pts[j]) <= radius:
                        edges.add((i, j))
    return _connect(n, edges, rng, near=lambda a, b: math.dist(pts[a], pts[b]))


def line(n: int) -> Edges:
    return {(i, i + 1) for i in range(n - 1)}


def grid(n: int) -> Edges:
    side = math.ceil(math.sqrt(n))
    edges: Edges = set()
    for i in range(n):
        c = i % side
        if c + 1 < side and i + 1 < n:
            edges.add((i, i + 1))
        if i + side < n:
            edges.add((i, i + side))
    return edges


def clusters(n: int, rng: random.Random, size: int = 20, degree: float = 6,
             bridges: int = 2) -> Edges:
    """Dense clusters of about ``size`` nodes, neighbouring clusters joined by a few links."""
    k = max(1, n // size)
    groups = [list(range(i, n, k)) for i in range(k)]
    edges: Edges = set()
    for g in groups:
        sub = random_graph(len(g), min(degree, len(g) - 1), rng) if len(g) > 1 else set()
        edges |= {_edge(g[a], g[b]) for a, b in sub}
    for i in range(k - 1):
        for _ in range(bridges):
            edges.add(_edge(rng.choice(groups[i]), rng.choice(groups[i + 1])))
    return edges


def segment_membership(n: int, seed: int = 7) -> list[list[int]]:
    """The LAN segments each host of ``bench.mesh flood`` is on: one or two each, every
    segment with members, the whole connected."""
    rng = random.Random(seed)
    nbridges = max(4, n // 3)
    on: list[list[int]] = []
    for i in range(n):
        first = i % nbridges
        on.append(sorted({first, (first + 1) % nbridges} if i < nbridges else
                         {first, rng.randrange(nbridges)}))
    return on


def segments(n: int, seed: int = 7) -> Edges:
    """The links of ``bench.mesh flood``: all hosts of a segment are linked pairwise (a
    LAN), so the same topology runs real and simulated."""
    on = segment_membership(n, seed)
    members: dict[int, list[int]] = {}
    for h, segs in enumerate(on):
        for b in segs:
            members.setdefault(b, []).append(h)
    return {_edge(x, y) for m in members.values() for x in m for y in m if x != y}


def build(kind: str, n: int, degree: float, rng: random.Random) -> Edges:
    if kind == "random":
        return random_graph(n, degree, rng)
    if kind == "geometric":
        return geometric(n, degree, rng)
    if kind == "line":
        return line(n)
    if kind == "grid":
        return grid(n)
    if kind == "clusters":
        return clusters(n, rng, degree=degree)
    if kind == "segments":
        return segments(n)
    raise ValueError(f"unknown topology {kind!r}")


TOPOLOGIES = ("random", "geometric", "line", "grid", "clusters", "segments")
