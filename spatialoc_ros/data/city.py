"""A procedural city: streets, a drive through them, and object point clouds.

This stands in for the KITTI-360 scans where the real dataset is not
available. The city is built like a European suburb seen from a car:

* a perturbed, rotated street grid with some streets removed;
* a drive that walks the streets (preferring ones not yet driven) on the
  right-hand lane, sampled every metre;
* ground ("stuff") rasterised around the drive: road, sidewalks, and behind
  them parcels of terrain, parking and vegetation; trees, hedges, walls,
  fences, guard rails, and rare bridges and tunnels;
* instances: buildings and garages on the parcels, and street furniture along
  the kerbs (poles, small poles, lamps, traffic signs and lights, stop signs,
  trash bins, vending machines, boxes).

Districts (urban, suburban, industrial, rural) make classes and colours recur
in similar proportions everywhere, so no cell is told apart by one rare object.
Every object gets a base colour drawn from a class palette over the dataset's
colour centres, with per-point noise and slow spatial shading.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from scipy.spatial import cKDTree

from . import constants as C
from .cells import SceneObject
from .objects import (
    add_building,
    bridge_and_tunnel,
    bush,
    intersections,
    street_furniture,
    tree,
)
from .shapes import GROUND_SPACING, in_quad, lattice, quads_overlap, strip
from .streets import Street, drive, polyline, street_graph

# Wide ground classes keep one lattice point in two (a checkerboard, 0.57 m apart), which
# DBSCAN (eps 0.75 m, 5 points) still sees as one connected surface.
THINNED = ("road", "parking", "terrain", "vegetation", "bridge")
WINDOW_M = 250.0  # m of drive per map chunk (window), as KITTI-360 ships its point clouds
REACH = 47.0  # m; ground is generated this far from the drive (cells reach 45 m)

# Class -> {colour index in COLOR_NAMES: weight}. Mostly grey, as in the real scans.
PALETTES: Dict[str, Dict[int, float]] = {
    "road": {5: 0.45, 0: 0.3, 2: 0.15, 4: 0.1},
    "sidewalk": {4: 0.35, 2: 0.25, 1: 0.2, 0: 0.15, 3: 0.05},
    "parking": {4: 0.3, 2: 0.3, 5: 0.2, 0: 0.2},
    "bridge": {4: 0.4, 1: 0.3, 2: 0.3},
    "tunnel": {4: 0.4, 5: 0.3, 2: 0.3},
    "terrain": {6: 0.35, 2: 0.3, 0: 0.2, 4: 0.1, 7: 0.05},
    "vegetation": {0: 0.45, 6: 0.3, 2: 0.15, 5: 0.1},
    "wall": {1: 0.3, 3: 0.2, 7: 0.2, 4: 0.2, 2: 0.1},
    "fence": {0: 0.3, 2: 0.3, 4: 0.2, 5: 0.1, 1: 0.1},
    "guard rail": {1: 0.4, 3: 0.3, 4: 0.3},
    "building": {1: 0.3, 3: 0.2, 7: 0.2, 4: 0.15, 2: 0.15},
    "garage": {1: 0.35, 7: 0.25, 3: 0.2, 4: 0.2},
    "pole": {4: 0.35, 2: 0.25, 0: 0.2, 1: 0.2},
    "smallpole": {4: 0.3, 2: 0.3, 0: 0.2, 1: 0.2},
    "lamp": {4: 0.35, 2: 0.3, 0: 0.2, 1: 0.15},
    "traffic sign": {2: 0.3, 4: 0.3, 1: 0.2, 0: 0.2},
    "traffic light": {0: 0.35, 2: 0.3, 5: 0.2, 4: 0.15},
    "stop": {2: 0.4, 4: 0.3, 1: 0.3},
    "trash bin": {0: 0.3, 2: 0.3, 4: 0.2, 5: 0.2},
    "vending machine": {1: 0.3, 3: 0.3, 4: 0.2, 7: 0.2},
    "box": {4: 0.3, 1: 0.3, 2: 0.2, 3: 0.2},
}

# District kinds: weights of the parcel types found along their streets.
PARCELS = {
    "urban": {"block": 0.65, "house": 0.1, "parking": 0.1, "park": 0.15},
    "suburban": {"house": 0.65, "block": 0.1, "park": 0.1, "parking": 0.05, "field": 0.1},
    "industrial": {"works": 0.55, "parking": 0.2, "field": 0.15, "block": 0.1},
    "rural": {"field": 0.35, "forest": 0.35, "house": 0.2, "park": 0.1},
}


@dataclass
class City:
    objects: List[SceneObject]  # in scene order
    trajectory: np.ndarray  # [T, 3] the drive, one sample per metre
    streets: List[Street]


class _Builder:
    """Accumulates objects with running instance ids."""

    def __init__(self, rng: np.random.Generator, ground):
        self.rng = rng
        self.ground = ground
        self.objects: List[SceneObject] = []
        self._shade = rng.uniform(0, 2 * np.pi, size=4)

    def color(self, label: str) -> np.ndarray:
        pal = PALETTES[label]
        idx = self.rng.choice(list(pal), p=np.array(list(pal.values())) / sum(pal.values()))
        return C.COLOR_CENTERS[idx]

    def add(self, label: str, xyz: np.ndarray, base=None, noise: float = 0.05) -> None:
        """Add one scene object; like the original extraction, drop it below its class minimum."""
        if len(xyz) < C.CLASSES[label][1]:
            return
        base = self.color(label) if base is None else base
        s = self._shade
        shade = 1.0 + 0.12 * np.sin(xyz[:, 0] / 9.0 + s[0]) * np.cos(xyz[:, 1] / 11.0 + s[1])
        rgb = base[None, :] * shade[:, None] + self.rng.normal(0, noise, size=(len(xyz), 3))
        rgb = np.clip(rgb, 0, 1).astype(np.float32)
        self.objects.append(SceneObject(len(self.objects) + 1, label, xyz.astype(np.float64), rgb))


def generate_city(rng: np.random.Generator, drive_length: float,
                  district_weights: Dict[str, float]) -> City:
    """Build one scene: streets, a drive of about ``drive_length`` metres, and its objects."""
    slope = rng.uniform(-0.01, 0.01, 2)
    amp, wl = rng.uniform(0.5, 3.0), rng.uniform(150, 400, 2)
    phase = rng.uniform(0, 2 * np.pi, 2)

    def ground(xy):
        xy = np.atleast_2d(xy)
        return (xy @ slope
                + amp * np.sin(xy[:, 0] / wl[0] + phase[0]) * np.cos(xy[:, 1] / wl[1] + phase[1]))

    nodes, edges = street_graph(rng, drive_length)
    path, used = drive(rng, nodes, edges, drive_length)
    # samples are 1 m apart
    traj_xy = polyline(nodes, path, lane_offset=2.0)[: int(drive_length) + 1]
    trajectory = np.concatenate([traj_xy, (ground(traj_xy) + C.POSE_HEIGHT)[:, None]], 1)

    # districts: each street takes the kind of the nearest district centre
    kinds = list(district_weights)
    w = np.array([district_weights[k] for k in kinds], dtype=float)
    centres = traj_xy[rng.integers(0, len(traj_xy), size=max(3, len(traj_xy) // 600))]
    centre_kind = rng.choice(len(kinds), size=len(centres), p=w / w.sum())
    traj_tree = cKDTree(traj_xy[::2])
    streets: List[Street] = []
    for e, (a, b) in enumerate(edges):
        mid = np.linspace(nodes[a], nodes[b], 20)
        if traj_tree.query(mid)[0].min() > 60.0:
            continue
        kind = kinds[centre_kind[np.argmin(np.linalg.norm(centres - (nodes[a] + nodes[b]) / 2,
                                                          axis=1))]]
        hw = float(rng.choice([3.0, 3.5, 4.0, 5.0] if kind != "rural" else [3.0, 3.5]))
        if kind == "urban":
            sw = tuple(rng.uniform(2.5, 4.0, 2))
        elif kind == "rural":
            sw = tuple(np.where(rng.random(2) < 0.25, rng.uniform(1.2, 2.0, 2), 0.0))
        else:
            sw = tuple(np.where(rng.random(2) < 0.85, rng.uniform(1.5, 3.0, 2), 0.0))
        streets.append(Street(nodes[a].copy(), nodes[b].copy(), hw, sw, kind, driven=e in used))

    builder = _Builder(rng, ground)
    footprints = _parcels_and_buildings(rng, builder, streets, traj_tree)
    _ground(rng, builder, streets, traj_tree, footprints)
    street_furniture(rng, builder, streets, traj_tree)
    intersections(rng, builder, streets, traj_tree)
    bridge_and_tunnel(rng, builder, streets)
    # street furniture of side streets can lie far from the drive: no cell can see it
    objects = [o for o in builder.objects
               if _near_drive(traj_tree, o.xyz[::10, :2], REACH + 5).any()]
    return City(_scene_order(objects, trajectory), trajectory, streets)


def _near_drive(traj_tree, xy, dist=REACH):
    return traj_tree.query(np.atleast_2d(xy))[0] <= dist


# Parcels: each side of each street is cut into lots of 15-40 m; a lot's type decides its
# ground cover, buildings, trees, hedges and fences. The ground raster looks parcels up again.


@dataclass
class _Parcel:
    street: int
    side: int  # +1 left, -1 right
    t0: float
    t1: float
    kind: str
    ground: str  # ground class right behind the sidewalk
    back: str  # ground class further back
    instance: Tuple[int, int]  # (index into builder-time stuff ids) filled later


def _lots(rng, street: Street):
    t = 0.0
    while t < street.length:
        span = rng.uniform(10, 30)
        yield t, min(t + span, street.length)
        t += span


def _parcels_and_buildings(rng, builder, streets, traj_tree):
    """Lay out parcels; add buildings, garages, trees, bushes, hedges, walls and fences.

    Returns the building footprints (no ground is generated under them)."""
    footprints: List[np.ndarray] = []  # oriented rectangles as 4x2 corner arrays
    street_pts = np.concatenate([np.linspace(s.a, s.b, max(2, int(s.length))) for s in streets])
    street_idx = np.concatenate([np.full(max(2, int(s.length)), i) for i, s in enumerate(streets)])
    street_tree = cKDTree(street_pts)
    builder.parcels = []

    def clear_of_streets(corners):
        """No part of the footprint (edges sampled) lies on a road or sidewalk."""
        edges = [np.linspace(corners[i], corners[(i + 1) % 4], 6) for i in range(4)]
        d, i = street_tree.query(np.concatenate(edges + [corners.mean(0, keepdims=True)]))
        margin = np.array([streets[k].half_width + min(streets[k].sidewalk) + 0.2
                           for k in street_idx[i]])
        return np.all(d > margin)

    def overlaps(corners):
        return any(quads_overlap(corners, f) for f in footprints)

    for si, s in enumerate(streets):
        for side in (1, -1):
            kerb = s.half_width + s.sidewalk[0 if side == 1 else 1]
            for t0, t1 in _lots(rng, s):
                kind = _choice(rng, PARCELS[s.kind])
                ground, back = _parcel_ground(rng, kind)
                builder.parcels.append(_Parcel(si, side, t0, t1, kind, ground, back, (0, 0)))
                mid = s.at((t0 + t1) / 2, side * (kerb + 10))
                if not _near_drive(traj_tree, mid, REACH + 25):
                    continue
                for rect, label, height in _parcel_structures(rng, s, side, kerb, t0, t1, kind):
                    if clear_of_streets(rect) and not overlaps(rect):
                        footprints.append(rect)
                        add_building(rng, builder, rect, label, height)
                _parcel_green(rng, builder, s, side, kerb, t0, t1, kind)
    return footprints


def _choice(rng, weights: Dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def _parcel_ground(rng, kind):
    table = {
        "block": ("sidewalk_ext", "terrain"),
        "house": ("terrain", _choice(rng, {"terrain": 0.6, "vegetation": 0.4})),
        "parking": ("parking", "terrain"),
        "park": ("terrain", _choice(rng, {"terrain": 0.5, "vegetation": 0.5})),
        "works": (_choice(rng, {"parking": 0.6, "terrain": 0.4}), "terrain"),
        "field": ("terrain", "terrain"),
        "forest": ("vegetation", "vegetation"),
    }
    return table[kind]


def _rect(s: Street, side, t0, t1, q0, q1):
    """Corners of the lot area between t0..t1 along the street and depth q0..q1 behind the kerb."""
    return np.array([s.at(t0, side * q0), s.at(t1, side * q0), s.at(t1, side * q1),
                     s.at(t0, side * q1)])


def _parcel_structures(rng, s, side, kerb, t0, t1, kind):
    """Buildings and garages of one lot, as (corners, label, height)."""
    span = t1 - t0
    out = []
    if kind == "block" and span > 10:
        q0 = kerb + rng.uniform(0.3, 2.0)
        out.append((_rect(s, side, t0 + 0.5, t1 - 0.5, q0, q0 + rng.uniform(10, 18)), "building",
                    rng.uniform(10, 24)))
    elif kind == "house" and span > 12:
        q0 = kerb + rng.uniform(4, 9)
        w = min(span - 4, rng.uniform(8, 14))
        tc = t0 + rng.uniform(2 + w / 2, span - 2 - w / 2) if span - 4 > w else (t0 + t1) / 2
        out.append((_rect(s, side, tc - w / 2, tc + w / 2, q0, q0 + rng.uniform(8, 12)),
                    "building", rng.uniform(6, 11)))
        if rng.random() < 0.35:
            g0 = min(t1 - 4, tc + w / 2 + 1.5)
            out.append((_rect(s, side, g0, g0 + 3.2, q0 + 1, q0 + 7), "garage",
                        rng.uniform(2.4, 3.0)))
    elif kind == "works" and span > 14:
        q0 = kerb + rng.uniform(8, 15)
        out.append((_rect(s, side, t0 + 1, t1 - 1, q0, q0 + rng.uniform(15, 25)), "building",
                    rng.uniform(6, 12)))
        for k in range(rng.integers(0, 3)):
            g0 = t0 + 1 + k * 4
            if g0 + 3.5 < t1:
                out.append((_rect(s, side, g0, g0 + 3.5, kerb + 2, kerb + 7.5), "garage",
                            rng.uniform(2.5, 3.2)))
    elif kind == "park" and rng.random() < 0.1:
        out.append((_rect(s, side, t0 + 3, t0 + 8, kerb + 6, kerb + 10), "building",
                    rng.uniform(3, 5)))
    return out


def _parcel_green(rng, builder, s, side, kerb, t0, t1, kind):
    """Trees, bushes, hedges, walls and fences of one lot."""
    trees = {"park": 1.5, "forest": 2.5, "house": 0.6, "field": 0.2, "works": 0.1, "block": 0.05,
             "parking": 0.2}[kind]
    for _ in range(rng.poisson(trees * (t1 - t0) / 25)):
        tree(rng, builder, s.at(rng.uniform(t0, t1), side * (kerb + rng.uniform(3, 30))))
    bushes = {"park": 1.5, "forest": 1.0, "house": 1.2, "field": 0.3, "works": 0.3, "block": 0.2,
              "parking": 0.4}[kind]
    for _ in range(rng.poisson(bushes * (t1 - t0) / 25)):
        bush(rng, builder, s.at(rng.uniform(t0, t1), side * (kerb + rng.uniform(1.5, 20))))
    front = kerb + 0.3
    gap = rng.uniform(3, 5)
    if kind == "house":
        r = rng.random()
        if r < 0.3:  # hedge
            p0, p1 = s.at(t0 + 0.5, side * front), s.at(t1 - gap, side * front)
            builder.add("vegetation", strip(rng, builder.ground, p0, p1, rng.uniform(0.8, 1.6),
                                            spacing=0.45))
        elif r < 0.65:
            label = "fence" if rng.random() < 0.6 else "wall"
            p0, p1 = s.at(t0 + 0.5, side * front), s.at(t1 - gap, side * front)
            builder.add(label, strip(rng, builder.ground, p0, p1, rng.uniform(1.0, 1.8)))
    elif kind in ("works", "parking") and rng.random() < 0.6:
        label = "fence" if rng.random() < 0.55 else "wall"
        p0, p1 = s.at(t0 + 0.5, side * front), s.at(t1 - gap, side * front)
        builder.add(label, strip(rng, builder.ground, p0, p1, rng.uniform(1.5, 2.5)))
    elif kind == "park" and rng.random() < 0.3:
        p0, p1 = s.at(t0 + 1, side * (kerb + 2)), s.at(t1 - 1, side * (kerb + 2))
        builder.add("vegetation", strip(rng, builder.ground, p0, p1, rng.uniform(0.6, 1.2),
                                        spacing=0.45))


def _ground(rng, builder, streets, traj_tree, footprints):
    """Rasterise the ground around the drive into road, sidewalk and parcel stuff objects."""
    data = traj_tree.data
    lo, hi = data.min(0) - REACH, data.max(0) + REACH
    grid, parity = lattice(rng, lo, hi, GROUND_SPACING, with_parity=True)
    near_drive = _near_drive(traj_tree, grid)
    grid, parity = grid[near_drive], parity[near_drive]
    samples, owner, along = [], [], []
    for i, s in enumerate(streets):
        t = np.arange(0, s.length + 0.5, 0.5)
        samples.append(s.a + np.outer(t, s.u))
        owner.append(np.full(len(t), i))
        along.append(t)
    samples, owner, along = np.concatenate(samples), np.concatenate(owner), np.concatenate(along)
    d, k = cKDTree(samples).query(grid)
    sid, t = owner[k], along[k]
    a = np.array([s.a for s in streets])[sid]
    u = np.array([s.u for s in streets])[sid]
    side = np.where((u[:, 0] * (grid[:, 1] - a[:, 1]) - u[:, 1] * (grid[:, 0] - a[:, 0])) >= 0,
                    1, -1)
    hw = np.array([s.half_width for s in streets])[sid]
    sw = np.where(side == 1, np.array([s.sidewalk[0] for s in streets])[sid],
                  np.array([s.sidewalk[1] for s in streets])[sid])
    keys = np.full(len(grid), -1, dtype=np.int64)
    labels: List[str] = []
    key_of: Dict[tuple, int] = {}

    def key(name, *ident):
        k = key_of.setdefault((name,) + ident, len(labels))
        if k == len(labels):
            labels.append(name)
        return k

    road = d < hw
    walk = ~road & (d < hw + sw)
    for i in range(len(streets)):
        keys[road & (sid == i)] = key("road", i)
        for sd in (1, -1):
            keys[walk & (sid == i) & (side == sd)] = key("sidewalk", i, sd)
    # parcels
    rest = np.flatnonzero(keys < 0)
    parcels = builder.parcels
    by_street: Dict[Tuple[int, int], List[int]] = {}
    for pi, p in enumerate(parcels):
        by_street.setdefault((p.street, p.side), []).append(pi)
    depth = d - hw - sw
    for (si, sd), plist in by_street.items():
        sel = rest[(sid[rest] == si) & (side[rest] == sd)]
        if len(sel) == 0:
            continue
        starts = np.array([parcels[pi].t0 for pi in plist])
        which = np.clip(np.searchsorted(starts, t[sel], side="right") - 1, 0, len(plist) - 1)
        for j, pi in enumerate(plist):
            p = parcels[pi]
            m = sel[which == j]
            if len(m) == 0:
                continue
            near = depth[m] < 25
            # city blocks pave the strip up to the facade: it is part of the street's sidewalk
            keys[m[near]] = (key("sidewalk", si, sd) if p.ground == "sidewalk_ext"
                             else key(p.ground, "parcel", pi))
            keys[m[~near]] = key(p.back, "back", pi)
    # no ground under buildings
    if footprints:
        keep = np.ones(len(grid), dtype=bool)
        tree = cKDTree(grid)
        for rect in footprints:
            c = rect.mean(0)
            idx = np.asarray(tree.query_ball_point(c, np.linalg.norm(rect - c, axis=1).max()),
                             dtype=int)
            if len(idx):
                keep[idx[in_quad(grid[idx], rect)]] = False
        grid, keys, parity = grid[keep], keys[keep], parity[keep]
    thinned = np.array([labels[k] in THINNED for k in range(len(labels))] + [False])
    keep = ~(thinned[keys] & (parity == 1))
    grid, keys = grid[keep], keys[keep]
    z = builder.ground(grid)
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(len(labels) + 1))
    for k in range(len(labels)):
        idx = order[bounds[k]:bounds[k + 1]]
        lift = 0.4 if labels[k] == "vegetation" else 0.0  # low bushes
        builder.add(labels[k], np.concatenate([grid[idx], (z[idx] + lift)[:, None]], 1),
                    noise=0.04)


def drive_windows(objects: List[SceneObject], trajectory: np.ndarray) -> List[int]:
    """Per object, the map chunk ("window") of the drive it belongs to: the 250 m stretch of
    drive whose sample is nearest to the object's mean position."""
    arclen = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(trajectory, axis=0), axis=1))])
    tree = cKDTree(trajectory[:, :2])
    return [int(arclen[tree.query(o.xyz[:, :2].mean(0))[1]] // WINDOW_M) for o in objects]


def window_samples(trajectory: np.ndarray, window: int) -> Tuple[int, int]:
    """First and last drive sample of a window."""
    arclen = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(trajectory, axis=0), axis=1))])
    inside = np.flatnonzero(arclen // WINDOW_M == window)
    return int(inside[0]), int(inside[-1])


def _scene_order(objects: List[SceneObject], trajectory: np.ndarray) -> List[SceneObject]:
    """Order as the original generator meets objects: by map chunk along the drive, then class
    order."""
    chunk = drive_windows(objects, trajectory)
    cls = [C.CLASS_TO_INDEX[o.label] for o in objects]
    order = sorted(range(len(objects)), key=lambda i: (chunk[i], cls[i], objects[i].instance_id))
    return [objects[i] for i in order]
