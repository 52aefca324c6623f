"""The street network of a synthetic scene and the drive through it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np


@dataclass
class Street:
    a: np.ndarray  # (2,) world xy of the start node
    b: np.ndarray  # (2,) end node
    half_width: float  # road half width (m)
    sidewalk: Tuple[float, float]  # widths on the left (+n) and right (-n) side; 0 = none
    kind: str  # district kind
    driven: bool = False  # the drive passes along it

    @property
    def length(self) -> float:
        return float(np.linalg.norm(self.b - self.a))

    @property
    def u(self) -> np.ndarray:
        return (self.b - self.a) / max(self.length, 1e-9)

    @property
    def n(self) -> np.ndarray:  # left normal
        return np.array([-self.u[1], self.u[0]])

    def at(self, t: float, offset: float) -> np.ndarray:
        """World xy at ``t`` m along the street, ``offset`` m to the left (negative: right)."""
        return self.a + self.u * t + self.n * offset


def street_graph(rng, drive_length):
    """Nodes of a perturbed rotated grid and the list of edges (i, j)."""
    spacing = rng.uniform(80, 130)
    n = int(np.ceil(np.sqrt(drive_length / (2.0 * spacing)))) + 2
    xs = np.concatenate([[0], np.cumsum(rng.uniform(0.6, 1.4, n - 1) * spacing)])
    ys = np.concatenate([[0], np.cumsum(rng.uniform(0.6, 1.4, n - 1) * spacing)])
    nodes = np.array([[x, y] for x in xs for y in ys]) + rng.normal(0, 6, (n * n, 2))
    theta = rng.uniform(0, np.pi / 2)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    nodes = nodes @ rot.T
    edges = []
    for i in range(n):
        for j in range(n):
            k = i * n + j
            if i + 1 < n:
                edges.append((k, k + n))
            if j + 1 < n:
                edges.append((k, k + 1))
    # drop some streets while the network stays connected
    order = rng.permutation(len(edges))
    alive = set(range(len(edges)))
    for e in order[: int(0.2 * len(edges))]:
        alive.discard(e)
        if not _connected(len(nodes), [edges[k] for k in alive]):
            alive.add(e)
    return nodes, [edges[k] for k in sorted(alive)]


def _connected(num_nodes, edges):
    adj = {i: [] for i in range(num_nodes)}
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    seen, stack = {0}, [0]
    while stack:
        for m in adj[stack.pop()]:
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return len(seen) == num_nodes


def drive(rng, nodes, edges, drive_length):
    """Node sequence of a drive that prefers streets not yet driven."""
    adj: Dict[int, List[Tuple[int, int]]] = {i: [] for i in range(len(nodes))}
    for k, (a, b) in enumerate(edges):
        adj[a].append((b, k))
        adj[b].append((a, k))
    degree = np.array([len(adj[i]) for i in range(len(nodes))])
    cur = int(rng.choice(np.flatnonzero(degree >= 2)))
    path, used, length = [cur], set(), 0.0
    while length < drive_length:
        fresh = [(m, k) for m, k in adj[cur] if k not in used]
        if fresh:
            m, k = fresh[rng.integers(len(fresh))]
            step = [(m, k)]
        else:
            step = _path_to_fresh(adj, cur, used)
            if step is None:
                break
        for m, k in step:
            used.add(k)
            length += float(np.linalg.norm(nodes[m] - nodes[cur]))
            cur = m
            path.append(cur)
    return path, used


def _path_to_fresh(adj, start, used):
    """Shortest (hop) path from start to a node with an undriven street, as [(node, edge)]."""
    parent = {start: None}
    queue = [start]
    while queue:
        nxt = []
        for v in queue:
            if any(k not in used for _, k in adj[v]) and v != start:
                steps = []
                while parent[v] is not None:
                    p, k = parent[v]
                    steps.append((v, k))
                    v = p
                return steps[::-1]
            for m, k in adj[v]:
                if m not in parent:
                    parent[m] = (v, k)
                    nxt.append(m)
        queue = nxt
    return None


def polyline(nodes, path, lane_offset):
    """Samples every metre along the node path, on the right-hand lane."""
    pts = []
    for a, b in zip(path[:-1], path[1:]):
        pa, pb = nodes[a], nodes[b]
        d = pb - pa
        length = float(np.linalg.norm(d))
        u = d / length
        right = np.array([u[1], -u[0]])
        t = np.arange(0.0, length, 1.0)
        pts.append(pa + np.outer(t, u) + right * lane_offset)
    return np.concatenate(pts)
