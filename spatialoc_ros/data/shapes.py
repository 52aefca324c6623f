"""Point samplers for the surfaces of synthetic objects (world coordinates, metres)."""
from __future__ import annotations

import numpy as np

GROUND_SPACING = 0.4  # m; lattice of narrow ground stuff (sidewalks)
STRIP_SPACING = 0.25  # m; walls, fences, guard rails, tunnels (scanned densely, as in KITTI-360)


def lattice(rng, lo, hi, spacing, with_parity=False):
    """A jittered square lattice; optionally also the checkerboard parity of each point."""
    xs = np.arange(lo[0], hi[0], spacing)
    ys = np.arange(lo[1], hi[1], spacing)
    g = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    g = g + rng.uniform(-0.1 * spacing, 0.1 * spacing, size=g.shape)
    if not with_parity:
        return g
    i, j = np.meshgrid(np.arange(len(xs)), np.arange(len(ys)), indexing="ij")
    return g, ((i + j) % 2).ravel()


def box(rng, center_xy, z0, length, width, height, yaw, density, roof=True):
    """Points on the walls (and roof) of an upright box."""
    faces = [(length, height), (length, height), (width, height), (width, height)]
    areas = [a * b for a, b in faces] + ([length * width] if roof else [])
    n = rng.poisson(np.array(areas) * density)
    pts = []
    hl, hw = length / 2, width / 2
    for f, k in enumerate(n):
        if k == 0:
            continue
        r = rng.random((k, 2))
        if f < 2:
            p = np.stack([(r[:, 0] - 0.5) * length, np.full(k, hw if f == 0 else -hw),
                          r[:, 1] * height], 1)
        elif f < 4:
            p = np.stack([np.full(k, hl if f == 2 else -hl), (r[:, 0] - 0.5) * width,
                          r[:, 1] * height], 1)
        else:
            p = np.stack([(r[:, 0] - 0.5) * length, (r[:, 1] - 0.5) * width,
                          np.full(k, height)], 1)
        pts.append(p)
    p = np.concatenate(pts) if pts else np.zeros((0, 3))
    c, s = np.cos(yaw), np.sin(yaw)
    xy = p[:, :2] @ np.array([[c, s], [-s, c]]) + center_xy
    return np.concatenate([xy, p[:, 2:] + z0], 1)


def cylinder(rng, xy, z0, radius, height, n):
    ang = rng.uniform(0, 2 * np.pi, n)
    h = rng.uniform(0, height, n)
    return np.stack([xy[0] + radius * np.cos(ang), xy[1] + radius * np.sin(ang), z0 + h], 1)


def ellipsoid(rng, center, radii, density):
    area = 4 * np.pi * (np.prod(radii) ** (2 / 3))
    n = max(8, rng.poisson(area * density))
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return center + v * radii


def strip(rng, ground, p0, p1, height, z_off=0.0, spacing=STRIP_SPACING):
    """A vertical surface from p0 to p1 (xy), following the ground."""
    length = float(np.linalg.norm(p1 - p0))
    if length < spacing:
        return np.zeros((0, 3))
    g = lattice(rng, (0, 0), (length, height), spacing)
    xy = p0 + np.outer(g[:, 0] / length, p1 - p0)
    return np.concatenate([xy, (ground(xy) + z_off + g[:, 1])[:, None]], 1)


def quads_overlap(p, q) -> bool:
    """Separating-axis test for two convex quadrilaterals."""
    for poly in (p, q):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            a, b = p @ axis, q @ axis
            if a.max() < b.min() or b.max() < a.min():
                return False
    return True


def in_quad(pts, quad):
    """Points inside a convex quadrilateral (corners in order)."""
    inside = np.ones(len(pts), dtype=bool)
    sign = None
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        cross = (b[0] - a[0]) * (pts[:, 1] - a[1]) - (b[1] - a[1]) * (pts[:, 0] - a[0])
        s = np.sign(np.sum(cross)) if sign is None else sign
        sign = s
        inside &= cross * s >= 0
    return inside
