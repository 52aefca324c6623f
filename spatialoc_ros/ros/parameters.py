"""Every parameter of the localizer node, declared once: name, default, description.

The node declares exactly this table (with a ParameterDescriptor each) and
``config/localize.yaml`` lists exactly these names; a test keeps the two in
step. The table imports nothing from ROS, so tools and tests can read it
without a ROS graph. Parameters are read when the node is configured; change
them, then clean up and configure again (``autostart`` and
``diagnostics_period_s`` are read at start-up).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Tuple, Union

from ..core.query_text import DEFAULT_MAX_CHARS, DEFAULT_MAX_HINTS

Value = Union[bool, int, float, str, List[str]]


@dataclass(frozen=True)
class Parameter:
    """One node parameter. ``range`` bounds numbers (inclusive); ``choices`` lists allowed
    strings."""

    name: str
    default: Value
    description: str
    range: Optional[Tuple[float, float]] = None
    choices: Tuple[str, ...] = ()


PARAMETERS: Tuple[Parameter, ...] = (
    Parameter("autostart", True,
              "walk to the active state by itself at start-up (false: wait for a lifecycle "
              "manager)"),
    Parameter("map_path", "data/demo_map",
              "KITTI360Pose map folder (cells/ and poses/); relative paths start in the working "
              "directory"),
    Parameter("scenes", [],
              "scenes of the map to load, full or 4-digit short names; empty: all scenes of the "
              "folder"),
    Parameter("weights_dir", "models",
              "folder with the trained weights (pointnet, coarse, fine .safetensors + .json)"),
    Parameter("cache_dir", "",
              "folder for the cached gallery of the map; empty: the default next to the map"),
    Parameter("device", "auto", "where the model runs: auto (cuda when available), cpu or cuda",
              choices=("auto", "cpu", "cuda")),
    Parameter("top_k", 10, "hypotheses (retrieved cells, each refined) per query", range=(1, 100)),
    Parameter("retriever", "auto",
              "two-stage: faiss shortlist by the global descriptor, exact fused rerank (any map "
              "size); exhaustive: the fused score of every cell (the reference); auto: "
              "exhaustive up to 2,048 cells, two-stage above",
              choices=("auto", "two-stage", "exhaustive")),
    Parameter("shortlist", 256, "two-stage retriever: cells reranked exactly per query",
              range=(1, 100_000)),
    Parameter("cell_rows", "auto",
              "where the encoded cells are read from: memory; store (memory-mapped, built in the "
              "cache the first time); auto: memory up to 20,000 cells, the store above",
              choices=("auto", "memory", "store")),
    Parameter("frame_id", "map",
              "frame of the published poses, results and markers (REP-105 map frame)"),
    Parameter("yaw_variance", math.pi ** 2,
              "yaw variance (rad^2) in the pose covariance: text carries no heading",
              range=(0.0, 1e9)),
    Parameter("low_confidence_sigma_m", 20.0,
              "1-sigma radius (m) above which a localized query is reported as LOW_CONFIDENCE",
              range=(0.0, 1e9)),
    Parameter("min_understood", 0.5,
              "share of the query the language front end must understand (0..1); below it the "
              "result is LOW_CONFIDENCE", range=(0.0, 1.0)),
    Parameter("min_probability", 0.5,
              "probability (0..1) that the answer is within 10 m below which the result is "
              "LOW_CONFIDENCE (used when the weights carry a fitted probability model)",
              range=(0.0, 1.0)),
    Parameter("publish_low_confidence_pose", True,
              "also publish the pose of LOW_CONFIDENCE results (its covariance shows the doubt)"),
    Parameter("max_query_chars", DEFAULT_MAX_CHARS,
              "longest accepted query in characters; longer ones get QUERY_TOO_LONG",
              range=(1, 1_000_000)),
    Parameter("max_hints", DEFAULT_MAX_HINTS,
              "most sentences per query; with accumulate, a query closes when this many have "
              "arrived",
              range=(1, 1000)),
    Parameter("queue_size", 10,
              "queries waiting for the model; when full the oldest is dropped (DROPPED result)",
              range=(1, 10_000)),
    Parameter("accumulate", False,
              "join the sentences of consecutive query messages (one utterance per message) into "
              "one query"),
    Parameter("silence_timeout_s", 1.5,
              "with accumulate: seconds without a new message that close the query",
              range=(0.01, 3600.0)),
    Parameter("publish_markers", True,
              "publish RViz markers (cells, best position and ellipse, hinted objects)"),
    Parameter("publish_map_cloud", True,
              "publish the map's object points, coloured by class, once (latched)"),
    Parameter("map_cloud_max_points", 200_000, "most points in the map cloud (evenly subsampled)",
              range=(1, 100_000_000)),
    Parameter("diagnostics_period_s", 1.0, "seconds between two messages on /diagnostics",
              range=(0.05, 3600.0)),
)

PARAMETERS_BY_NAME: Dict[str, Parameter] = {p.name: p for p in PARAMETERS}


@dataclass(frozen=True)
class Settings:
    """The parameter values the node works with between one configure and the next cleanup."""

    autostart: bool
    map_path: str
    scenes: List[str]
    weights_dir: str
    cache_dir: str
    device: str
    top_k: int
    retriever: str
    shortlist: int
    cell_rows: str
    frame_id: str
    yaw_variance: float
    low_confidence_sigma_m: float
    min_understood: float
    min_probability: float
    publish_low_confidence_pose: bool
    max_query_chars: int
    max_hints: int
    queue_size: int
    accumulate: bool
    silence_timeout_s: float
    publish_markers: bool
    publish_map_cloud: bool
    map_cloud_max_points: int
    diagnostics_period_s: float

    @classmethod
    def from_values(cls, values: Dict[str, Value]) -> "Settings":
        """Settings from {name: value}; names not given take the table's default."""
        unknown = set(values) - set(PARAMETERS_BY_NAME)
        if unknown:
            raise KeyError(f"unknown parameters: {', '.join(sorted(unknown))}")
        merged = {p.name: values.get(p.name, p.default) for p in PARAMETERS}
        return cls(**{n: list(v) if isinstance(v, (list, tuple)) else v
                      for n, v in merged.items()})


assert ([f.name for f in fields(Settings)]
        == [p.name for p in PARAMETERS]), "Settings and PARAMETERS differ"
