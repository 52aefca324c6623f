"""Objects placed by the city generator: buildings, trees, street furniture, bridges, tunnels.

Every function takes the random generator and a builder (``add(label, xyz)``
and ``ground(xy)``) and adds complete objects to it.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from .shapes import GROUND_SPACING, STRIP_SPACING, box, cylinder, ellipsoid, lattice, strip
from .streets import Street


def add_building(rng, builder, rect, label, height):
    c = rect.mean(0)
    length = float(np.linalg.norm(rect[1] - rect[0]))
    width = float(np.linalg.norm(rect[3] - rect[0]))
    d = rect[1] - rect[0]
    yaw = float(np.arctan2(d[1], d[0]))
    z0 = float(builder.ground(rect).min())
    density = 1.2 if label == "building" else 4.0
    pts = box(rng, c, z0, length, width, height, yaw, density)
    if len(pts) > 6000:
        pts = pts[rng.choice(len(pts), 6000, replace=False)]
    builder.add(label, pts)


def tree(rng, builder, xy):
    """A canopy (ellipsoid shell) on a trunk; both are vegetation, as in KITTI-360."""
    z = float(builder.ground(xy)[0])
    r = rng.uniform(2.0, 4.0)
    rz = r * rng.uniform(0.7, 1.1)
    trunk_h = rng.uniform(1.5, 3.0)
    canopy = ellipsoid(rng, np.array([xy[0], xy[1], z + trunk_h + rz]), np.array([r, r, rz]), 6.0)
    trunk = cylinder(rng, xy, z, 0.25, trunk_h, 40)
    builder.add("vegetation", np.concatenate([canopy, trunk]))


def bush(rng, builder, xy):
    z = float(builder.ground(xy)[0])
    r = rng.uniform(1.4, 2.2)
    builder.add("vegetation", ellipsoid(rng, np.array([xy[0], xy[1], z + 0.6 * r]),
                                        np.array([r, r, 0.6 * r]), 12.0))


def street_furniture(rng, builder, streets, traj_tree):
    """Poles, lamps, signs, bins, boxes and avenue trees along the kerbs."""
    # mean spacing (m) of each kind of furniture along one side of a street
    spec = {
        "urban": dict(lamp=15, pole=35, sign=28, bin=30, box=55, vend=500, small=45,
                      tree=(0.3, 16)),
        "suburban": dict(lamp=20, pole=28, sign=45, bin=70, box=85, vend=1200, small=90,
                         tree=(0.35, 18)),
        "industrial": dict(lamp=25, pole=22, sign=38, bin=120, box=45, vend=400, small=40,
                           tree=(0.15, 20)),
        "rural": dict(lamp=55, pole=25, sign=50, bin=250, box=150, vend=3000, small=80,
                      tree=(0.4, 16)),
    }
    for s in streets:
        sp = spec[s.kind]
        for side in (1, -1):
            walk = s.sidewalk[0 if side == 1 else 1]
            kerb = s.half_width + 0.4
            outer = s.half_width + max(walk, 0.8) - 0.4

            def spots(every):
                n = rng.poisson(s.length / every)
                return np.sort(rng.uniform(0, s.length, n))

            for t in spots(sp["lamp"]):
                lamp(rng, builder, s.at(t, side * kerb))
            for t in spots(sp["pole"]):
                pole(rng, builder, "pole", s.at(t, side * kerb), rng.uniform(4, 8), 0.12)
            for t in spots(sp["small"]):
                for j in range(rng.integers(1, 4)):
                    pole(rng, builder, "smallpole", s.at(t + 1.5 * j, side * kerb),
                         rng.uniform(0.9, 2.2), 0.06)
            for t in spots(sp["sign"]):
                sign(rng, builder, "traffic sign", s.at(t, side * kerb))
            for t in spots(sp["bin"]):
                small_box(rng, builder, "trash bin", s.at(t, side * outer), (0.6, 0.6, 1.0))
            for t in spots(sp["box"]):
                small_box(rng, builder, "box", s.at(t, side * outer),
                          tuple(rng.uniform(0.6, 1.8, 3)))
            for t in spots(sp["vend"]):
                small_box(rng, builder, "vending machine", s.at(t, side * outer), (1.0, 0.8, 1.8))
            p, every = sp["tree"]
            if rng.random() < p:
                for t in np.arange(rng.uniform(0, every), s.length, every):
                    tree(rng, builder, s.at(t, side * (outer + 0.6)))


def pole(rng, builder, label, xy, height, radius):
    z = float(builder.ground(xy)[0])
    n = int(max(30, height * 20 * rng.uniform(0.8, 1.5)))
    builder.add(label, cylinder(rng, xy, z, radius, height, n))


def lamp(rng, builder, xy):
    z = float(builder.ground(xy)[0])
    h = rng.uniform(5, 9)
    post = cylinder(rng, xy, z, 0.1, h, int(h * 14))
    head = box(rng, xy, z + h, 0.8, 0.4, 0.3, rng.uniform(0, np.pi), 80)
    builder.add("lamp", np.concatenate([post, head]))


def sign(rng, builder, label, xy, plate=0.7):
    z = float(builder.ground(xy)[0])
    h = rng.uniform(2.2, 3.2)
    post = cylinder(rng, xy, z, 0.05, h, int(h * 12))
    board = box(rng, xy, z + h, plate, 0.05, plate, rng.uniform(0, np.pi), 120, roof=False)
    builder.add(label, np.concatenate([post, board]))


def small_box(rng, builder, label, xy, size):
    z = float(builder.ground(xy)[0])
    area = 2 * (size[0] + size[1]) * size[2] + size[0] * size[1]
    density = max(40.0, 60.0 / area)  # enough points to pass the class minimum
    builder.add(label, box(rng, xy, z, size[0], size[1], size[2], rng.uniform(0, np.pi), density))


def intersections(rng, builder, streets, traj_tree):
    """Traffic lights and stop signs at some crossings."""
    ends: Dict[tuple, List[Tuple[Street, float]]] = {}
    for s in streets:
        ends.setdefault(tuple(np.round(s.a, 3)), []).append((s, 0.0))
        ends.setdefault(tuple(np.round(s.b, 3)), []).append((s, s.length))
    for node, arms in ends.items():
        if len(arms) < 3:
            continue
        r = rng.random()
        for s, t in arms:
            inward = 1.0 if t == 0 else -1.0
            spot = s.at(t + inward * (s.half_width + 4), -inward * (s.half_width + 0.6))
            if r < 0.35:
                traffic_light(rng, builder, spot)
            elif r < 0.55 and rng.random() < 0.5:
                sign(rng, builder, "stop", spot, plate=0.75)


def traffic_light(rng, builder, xy):
    z = float(builder.ground(xy)[0])
    h = rng.uniform(3.0, 4.5)
    post = cylinder(rng, xy, z, 0.08, h, int(h * 15))
    head = box(rng, xy, z + h - 0.2, 0.35, 0.3, 1.0, rng.uniform(0, np.pi), 150)
    builder.add("traffic light", np.concatenate([post, head]))


def bridge_and_tunnel(rng, builder, streets):
    """A short bridge with guard rails and, in some scenes, a tunnel over a driven street."""
    driven = [s for s in streets if s.driven and s.length > 60]
    if not driven:
        return
    if rng.random() < 0.6:
        s = driven[rng.integers(len(driven))]
        t0 = rng.uniform(10, s.length - 45)
        t1 = t0 + rng.uniform(25, 40)
        g, parity = lattice(rng, (t0, -s.half_width - 0.5), (t1, s.half_width + 0.5),
                            GROUND_SPACING, True)
        g = g[parity == 0]
        xy = s.a + np.outer(g[:, 0], s.u) + np.outer(g[:, 1], s.n)
        builder.add("bridge", np.concatenate([xy, (builder.ground(xy) + 0.05)[:, None]], 1))
        for side in (1, -1):
            rail = strip(rng, builder.ground, s.at(t0, side * (s.half_width + 0.6)),
                         s.at(t1, side * (s.half_width + 0.6)), 0.8, 0.2)
            builder.add("guard rail", rail)
    if rng.random() < 0.35:
        s = driven[rng.integers(len(driven))]
        t0 = rng.uniform(10, s.length - 45)
        t1 = t0 + rng.uniform(20, 35)
        ang = np.linspace(0, np.pi, int(np.pi * (s.half_width + 1) / STRIP_SPACING))
        ts = np.arange(t0, t1, STRIP_SPACING)
        T, A = np.meshgrid(ts, ang, indexing="ij")
        r = s.half_width + 1.0
        xy = s.a + np.outer(T.ravel(), s.u) + np.outer(r * np.cos(A.ravel()), s.n)
        z = builder.ground(xy) + r * np.sin(A.ravel()) * 0.8
        builder.add("tunnel", np.concatenate([xy, z[:, None]], 1))
    # guard rails along some rural streets
    for s in streets:
        if s.kind in ("rural", "industrial") and rng.random() < 0.4:
            side = rng.choice([1, -1])
            t0 = rng.uniform(0, s.length / 2)
            t1 = min(s.length, t0 + rng.uniform(20, 60))
            builder.add("guard rail", strip(rng, builder.ground,
                                            s.at(t0, side * (s.half_width + 0.5)),
                                            s.at(t1, side * (s.half_width + 0.5)), 0.7, 0.2))
