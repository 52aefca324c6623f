"""Localization -> ROS messages: the pose as AMCL publishes it, and the full result.

Pose conventions (those of nav2 AMCL's ``amcl_pose``; README.md, "The ROS 2
node"): identity quaternion
(text carries no heading); covariance row-major 6x6 over (x, y, z, roll,
pitch, yaw) in m² and rad², with the x/y block from the model, z/roll/pitch 0
(RViz then draws a flat ellipse) and yaw a configured variance. Every entry is
finite and within [0, 1e9], the bounds nav2 validates: an unusable block
becomes the largest allowed variance, and a negative x/y correlation (which
nav2 rejects) is replaced by the smallest axis-aligned ellipse that contains
the original one, so the published doubt never shrinks.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
from geometry_msgs.msg import PoseWithCovariance, PoseWithCovarianceStamped

from spatialoc_ros.msg import Hypothesis, LocalizationResult, UnderstoodClause

MAX_COVARIANCE = 1e9  # nav2::validateMsg's bound on every covariance entry

# Row-major indices in the 6x6 covariance.
XX, XY, YX, YY, ZZ, ROLL, PITCH, YAW = 0, 1, 6, 7, 14, 21, 28, 35


def safe_covariance_xy(cov_xy) -> np.ndarray:
    """The 2x2 x/y covariance as published: symmetric, PSD, finite, entries in [0, 1e9]."""
    c = np.asarray(cov_xy, dtype=np.float64).reshape(2, 2)
    if not np.isfinite(c).all():
        return np.diag([MAX_COVARIANCE, MAX_COVARIANCE])
    a, d = (float(np.clip(v, 0.0, MAX_COVARIANCE)) for v in (c[0, 0], c[1, 1]))
    b = 0.5 * float(c[0, 1] + c[1, 0])
    bound = math.sqrt(a * d)
    b = max(-bound, min(bound, b))  # |b| <= sqrt(ad): positive semi-definite
    if b < 0:
        # diag(a + u, d + v) contains the ellipse iff u v >= b²; the least area is
        # at u = |b| sqrt(a/d), v = |b| sqrt(d/a) (a, d > 0 here since b != 0).
        a, d, b = a - b * math.sqrt(a / d), d - b * math.sqrt(d / a), 0.0
        a, d = min(a, MAX_COVARIANCE), min(d, MAX_COVARIANCE)
    return np.array([[a, b], [b, d]])


def pose_covariance(cov_xy, yaw_variance: float) -> List[float]:
    """The 36 row-major entries of a PoseWithCovariance covariance (see module docstring)."""
    c = safe_covariance_xy(cov_xy)
    yaw = float(yaw_variance)
    yaw = MAX_COVARIANCE if not math.isfinite(yaw) else min(max(yaw, 0.0), MAX_COVARIANCE)
    out = [0.0] * 36
    out[XX], out[XY] = float(c[0, 0]), float(c[0, 1])
    out[YX], out[YY] = float(c[1, 0]), float(c[1, 1])
    out[YAW] = yaw
    return out


def pose_with_covariance(position, cov_xy, yaw_variance: float) -> PoseWithCovariance:
    """Position (x, y, z in metres) with the identity orientation and the covariance above."""
    msg = PoseWithCovariance()
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v)
                                                                     for v in position[:3])
    msg.pose.orientation.w = 1.0
    msg.covariance = pose_covariance(cov_xy, yaw_variance)
    return msg


def pose_stamped(localization, header, yaw_variance: float) -> PoseWithCovarianceStamped:
    """The best hypothesis with the published covariance (fine variance + retrieval doubt)."""
    msg = PoseWithCovarianceStamped(header=header)
    msg.pose = pose_with_covariance(localization.best.position, localization.covariance_xy,
                                    yaw_variance)
    return msg


def hypothesis_msg(hyp, yaw_variance: float) -> Hypothesis:
    """One hypothesis with its own covariance; a missing precision (model without λ head) is 0."""
    precision = hyp.precision if math.isfinite(hyp.precision) else 0.0
    return Hypothesis(cell_id=hyp.cell_id, rank=int(hyp.rank), score=float(hyp.score),
                      precision=float(precision), probability=float(hyp.probability),
                      pose=pose_with_covariance(hyp.position, hyp.covariance_xy, yaw_variance))


def result_msg(header, query: str, status: int, reason: str = "", localization=None,
               yaw_variance: float = 0.0, latency_ms: float = 0.0) -> LocalizationResult:
    """A LocalizationResult; ``localization`` (None for rejected queries) fills the hypotheses."""
    msg = LocalizationResult(header=header, query=query, status=int(status), reason=reason,
                             latency_ms=float(latency_ms))
    if localization is not None:
        msg.hypotheses = [hypothesis_msg(h, yaw_variance) for h in localization.hypotheses]
        msg.understood_share = float(localization.understood)
        msg.probability = float(localization.probability)
        if localization.understanding is not None:
            msg.understood = [clause_msg(c) for c in localization.understanding.clauses]
    return msg


def clause_msg(clause) -> UnderstoodClause:
    """One clause of :class:`~spatialoc_ros.core.language.Understanding` as a message."""
    return UnderstoodClause(text=clause.text, used=clause.hint is not None,
                            hint=clause.hint or "", direction=clause.direction or "",
                            colour=clause.colour or "", label=clause.label or "",
                            confidence=float(clause.confidence), reason=clause.reason)


def status_code(name: str) -> int:
    """``"EMPTY_QUERY"`` -> LocalizationResult.STATUS_EMPTY_QUERY; unknown names are
    INTERNAL_ERROR."""
    return int(getattr(LocalizationResult, f"STATUS_{name}",
                       LocalizationResult.STATUS_INTERNAL_ERROR))


def confidence(localization, max_sigma_m: float, min_understood: float = 0.5,
               min_probability: float = 0.5) -> Optional[str]:
    """Why a localization is low-confidence (one line), or None when it is not."""
    if localization.recognised_hints == 0:
        return "nothing in the query names a direction and a class the map knows; the position " \
               "is a guess"
    understood = localization.understood
    if understood < min_understood:
        u = localization.understanding
        used = f"{len(u.used)} of {len(u.clauses)} clauses" if u is not None else "part"
        return (f"understood {used} (share {understood:.2f} < min_understood "
                f"{min_understood:g}); the position may be wrong")
    p = localization.probability
    if math.isfinite(p) and p < min_probability:
        return (f"probability {p:.2f} that the answer is within 10 m is below min_probability "
                f"{min_probability:g}; other places look alike")
    sigma = localization.sigma_m
    if not math.isfinite(sigma) or sigma > max_sigma_m:
        return f"1-sigma radius {sigma:.1f} m exceeds low_confidence_sigma_m ({max_sigma_m:g} m)"
    return None
