"""Dataset statistics: sizes per scene and split, and how ambiguous the queries are.

The counts (cells, poses, objects, classes) say whether a folder holds what a
split loader expects. The ambiguity figures say how hard retrieval is before
any model runs: which classes dominate the cells and the hints, how crowded
cells are (the models pad or truncate at 16 / 28 objects), how often a hint
was found again in the best cell, and how many cells of the split contain
every (colour, class) pair a query mentions - cells that a bag-of-words
matcher could not tell apart from the right one.

Everything here works on in-memory :class:`~spatialoc_ros.data.schema.Cell`
and :class:`~spatialoc_ros.data.schema.Pose` lists; only :func:`collect_stats`
touches the disk.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .constants import CLASS_NAMES, COLOR_NAMES, DESCRIBE_STRATEGIES, SPLITS
from .schema import Cell, Pose

ALL = "all"  # key of the whole-dataset entry in every per-split section
OTHER_SPLIT = "other"  # split of a scene that is in none of the benchmark's splits
CROWDED_THRESHOLDS = (16, 28)  # object counts the models pad / truncate to
DEFAULT_SAMPLE = 500  # queries sampled per split for the candidate-cell measure

# Distinct colour words in their first-seen order ("gray" is listed twice in COLOR_NAMES).
COLOR_WORDS = list(dict.fromkeys(COLOR_NAMES))


@dataclass
class SceneRecords:
    """The cells and poses of one scene, tagged with the split it belongs to."""

    scene: str  # full drive name
    split: str
    cells: List[Cell] = field(default_factory=list)
    poses: List[Pose] = field(default_factory=list)


def split_of(scene: str) -> str:
    """The benchmark split ('train' / 'val' / 'test') of a full drive name, else 'other'."""
    for split, scenes in SPLITS.items():
        if scene in scenes:
            return split
    return OTHER_SPLIT


def split_order(splits: Iterable[str]) -> List[str]:
    """Splits in benchmark order (train, val, test), then any others alphabetically."""
    present = set(splits)
    known = [s for s in SPLITS if s in present]
    return known + sorted(present - set(SPLITS))


def ordered_counts(counter: Mapping[str, int], vocabulary: Sequence[str]) -> Dict[str, int]:
    """A counter as a plain dict: names of ``vocabulary`` first, in its order, then the rest
    sorted.

    Only names with a non-zero count are kept, so the dict says which names occur.
    """
    out = {name: int(counter[name]) for name in vocabulary if counter.get(name, 0) > 0}
    for name in sorted(set(counter) - set(vocabulary)):
        if counter[name] > 0:
            out[name] = int(counter[name])
    return out


def summary(values: Sequence[float]) -> Dict[str, float]:
    """min / median / mean / max of a list of numbers (zeros when it is empty)."""
    if len(values) == 0:
        return {"min": 0, "median": 0.0, "mean": 0.0, "max": 0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "min": _plain(a.min()),
        "median": float(np.median(a)),
        "mean": float(a.mean()),
        "max": _plain(a.max()),
    }


def _plain(x: float):
    """An integral float as int (so counts print as counts), any other as float."""
    x = float(x)
    return int(x) if x.is_integer() else x


def _fraction(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


# --------------------------------------------------------------------------- counts


def class_counts(cells: Iterable[Cell]) -> Counter:
    """Number of objects per class over all cells (an object in k overlapping cells counts k
    times)."""
    return Counter(obj.label for cell in cells for obj in cell.objects)


def count_block(cells: Sequence[Cell], poses: Sequence[Pose]) -> dict:
    """The size entry of one scene or one group of scenes: cells, poses, objects, classes."""
    return {
        "cells": len(cells),
        "poses": len(poses),
        "objects": sum(len(c.objects) for c in cells),
        "classes": ordered_counts(class_counts(cells), CLASS_NAMES),
    }


def objects_per_cell(cells: Sequence[Cell]) -> dict:
    """Distribution of the number of objects per cell, with the share of crowded cells."""
    counts = [len(c.objects) for c in cells]
    out = summary(counts)
    for t in CROWDED_THRESHOLDS:
        out[f"frac_gt_{t}"] = _fraction(sum(n > t for n in counts), len(counts))
    return out


def hint_stats(poses: Sequence[Pose]) -> dict:
    """What the descriptions mention: classes, colour words, matched share, strategies."""
    hints = [h for p in poses for h in p.hints]
    return {
        "hints": len(hints),
        "hints_per_pose": summary([len(p.hints) for p in poses]),
        "matched_fraction": _fraction(sum(bool(h.is_matched) for h in hints), len(hints)),
        "classes": ordered_counts(Counter(h.object_label for h in hints), CLASS_NAMES),
        "matched_classes": ordered_counts(
            Counter(h.object_label for h in hints if h.is_matched), CLASS_NAMES
        ),
        "colors": ordered_counts(Counter(h.object_color_text for h in hints), COLOR_WORDS),
        "described_by": ordered_counts(Counter(p.described_by for p in poses),
                                       DESCRIBE_STRATEGIES),
    }


# --------------------------------------------------------------------------- ambiguity


class PairIndex:
    """Cells as count vectors over (colour word, class) pairs, for fast containment tests."""

    def __init__(self, cells: Sequence[Cell]):
        self.cell_ids = [c.id for c in cells]
        self._row = {cid: i for i, cid in enumerate(self.cell_ids)}
        pair_counts = [Counter((o.color_text, o.label) for o in c.objects) for c in cells]
        class_counts_ = [Counter(o.label for o in c.objects) for c in cells]
        self._pairs, self.pair_matrix = self._matrix(pair_counts)
        self._classes, self.class_matrix = self._matrix(class_counts_)

    @staticmethod
    def _matrix(counters: List[Counter]) -> Tuple[Dict, np.ndarray]:
        keys = sorted({k for c in counters for k in c}, key=str)
        column = {k: j for j, k in enumerate(keys)}
        m = np.zeros((len(counters), len(keys)), dtype=np.int32)
        for i, counter in enumerate(counters):
            for k, n in counter.items():
                m[i, column[k]] = n
        return column, m

    @staticmethod
    def _containing(column: Dict, matrix: np.ndarray, wanted: Counter) -> np.ndarray:
        """Boolean mask of the rows that hold at least ``wanted[k]`` of every key k."""
        mask = np.ones(matrix.shape[0], dtype=bool)
        for k, n in wanted.items():
            j = column.get(k)
            if j is None:
                return np.zeros(matrix.shape[0], dtype=bool)
            mask &= matrix[:, j] >= n
        return mask

    def cells_with_pairs(self, pose: Pose) -> np.ndarray:
        """Mask of cells containing the multiset of (colour, class) pairs the pose mentions."""
        wanted = Counter((h.object_color_text, h.object_label) for h in pose.hints)
        return self._containing(self._pairs, self.pair_matrix, wanted)

    def cells_with_classes(self, pose: Pose) -> np.ndarray:
        """Mask of cells containing the multiset of classes the pose mentions (colour ignored)."""
        wanted = Counter(h.object_label for h in pose.hints)
        return self._containing(self._classes, self.class_matrix, wanted)

    def row(self, cell_id: str) -> Optional[int]:
        return self._row.get(cell_id)


def sample_poses(poses: Sequence[Pose], sample: int, seed: int) -> List[Pose]:
    """Up to ``sample`` poses drawn without replacement, in a seed-determined order."""
    if sample <= 0 or len(poses) <= sample:
        return list(poses)
    idx = np.random.default_rng(seed).choice(len(poses), size=sample, replace=False)
    return [poses[i] for i in sorted(idx)]


def ambiguity(cells: Sequence[Cell], poses: Sequence[Pose], sample: int = DEFAULT_SAMPLE,
              seed: int = 0) -> dict:
    """How many gallery cells could match each sampled query by the words alone.

    ``candidate_cells`` counts, per query, the cells of ``cells`` (the split's
    gallery) that contain every (colour, class) pair the query mentions, with
    multiplicity; ``class_only_cells`` does the same ignoring colour.
    ``unique_fraction`` is the share of queries for which exactly one cell
    qualifies. ``best_cell_contains_fraction`` is the share of queries whose own
    ground-truth cell qualifies: below 1 because hint colours are taken in the
    pose cell and unmatched hints name objects absent from the best cell.
    """
    index = PairIndex(cells)
    chosen = sample_poses(poses, sample, seed)
    pair_hits, class_hits, best_hits = [], [], 0
    for pose in chosen:
        mask = index.cells_with_pairs(pose)
        pair_hits.append(int(mask.sum()))
        class_hits.append(int(index.cells_with_classes(pose).sum()))
        row = index.row(pose.cell_id)
        best_hits += int(row is not None and bool(mask[row]))
    n_cells = len(index.cell_ids)
    return {
        "sampled_queries": len(chosen),
        "gallery_cells": n_cells,
        "candidate_cells": summary(pair_hits),
        "candidate_fraction_mean": _fraction(float(np.mean(pair_hits)) if pair_hits else 0.0,
                                             n_cells),
        "unique_fraction": _fraction(sum(h == 1 for h in pair_hits), len(chosen)),
        "best_cell_contains_fraction": _fraction(best_hits, len(chosen)),
        "class_only_cells": summary(class_hits),
        "class_only_fraction_mean": _fraction(float(np.mean(class_hits)) if class_hits else 0.0,
                                              n_cells),
    }


# --------------------------------------------------------------------------- assembly


def compute_stats(records: Sequence[SceneRecords], sample: int = DEFAULT_SAMPLE,
                  seed: int = 0) -> dict:
    """All statistics of a set of scenes, as one JSON-ready dict.

    Sections ``totals``, ``objects_per_cell``, ``hints`` and ``ambiguity`` are
    keyed by split (benchmark order) and ``"all"``; the candidate-cell measure
    uses each split's own cells as the gallery, as evaluation does.
    """
    groups: Dict[str, List[SceneRecords]] = {}
    for r in records:
        groups.setdefault(r.split, []).append(r)
    splits = split_order(groups)
    groups[ALL] = list(records)

    def cells_of(key):
        return [c for r in groups[key] for c in r.cells]

    def poses_of(key):
        return [p for r in groups[key] for p in r.poses]

    keys = splits + [ALL]
    stats = {
        "scenes": {r.scene: {"split": r.split, **count_block(r.cells, r.poses)} for r in records},
        "totals": {k: {"scenes": len(groups[k]), **count_block(cells_of(k), poses_of(k))}
                   for k in keys},
        "objects_per_cell": {k: objects_per_cell(cells_of(k)) for k in keys},
        "hints": {k: hint_stats(poses_of(k)) for k in keys},
        "ambiguity": {s: ambiguity(cells_of(s), poses_of(s), sample, seed) for s in splits},
    }
    return stats


def require_dataset_dir(root) -> None:
    """Raise DataError unless ``root`` is an existing folder (checked before any file is
    opened)."""
    from ..errors import DataError

    if not os.path.exists(root):
        raise DataError(f"{root}: no such dataset folder")
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder (expected a KITTI360Pose folder with cells/ and "
                        "poses/)")


def collect_stats(root, split: Optional[str] = None, sample: int = DEFAULT_SAMPLE,
                  seed: int = 0) -> dict:
    """Load the scenes of a KITTI360Pose folder (all present ones, or one split's) and compute
    stats.

    With ``split`` every scene of that split must be present, as a split loader
    requires; without it, whatever scenes the folder holds are counted.
    Raises :class:`~spatialoc_ros.errors.DataError` for a missing or bad folder.
    """
    from . import kitti360pose
    from ..errors import DataError

    require_dataset_dir(root)
    if split is not None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        scenes = list(SPLITS[split])
    else:
        scenes = list(kitti360pose.available_scenes(root))
        if not scenes:
            raise DataError(f"{root}: no KITTI360Pose scenes found (expected cells/<scene>.pkl "
                            "and poses/<scene>.pkl)")
    records = []
    for scene in scenes:
        data = kitti360pose.load_scene(root, scene)
        records.append(SceneRecords(scene, split_of(scene), list(data.cells), list(data.poses)))
    out = {"root": str(root)}
    out.update(compute_stats(records, sample=sample, seed=seed))
    return out


# --------------------------------------------------------------------------- human output


def format_table(headers: Sequence[str], rows: Sequence[Sequence],
                 title: Optional[str] = None) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[_cell_text(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]

    def line(values):
        parts = [values[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(values[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line([str(h) for h in headers]))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _cell_text(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _size_table(stats: dict) -> str:
    rows = []
    for scene, s in stats["scenes"].items():
        rows.append([scene, s["split"], s["cells"], s["poses"], s["objects"], len(s["classes"])])
    for key, t in stats["totals"].items():
        n = t["scenes"]
        rows.append([f"total {key} ({n} scene{'s' if n != 1 else ''})", key if key != ALL else "",
                     t["cells"], t["poses"], t["objects"], len(t["classes"])])
    return format_table(["scene", "split", "cells", "poses", "objects", "classes"], rows, "Sizes")


def _objects_per_cell_table(stats: dict) -> str:
    rows = []
    for key, o in stats["objects_per_cell"].items():
        rows.append([key, o["min"], o["median"], o["mean"], o["max"]]
                    + [_pct(o[f"frac_gt_{t}"]) for t in CROWDED_THRESHOLDS])
    headers = ["split", "min", "median", "mean", "max"] + [f"> {t}" for t in CROWDED_THRESHOLDS]
    return format_table(headers, rows, "Objects per cell")


def _class_table(stats: dict) -> str:
    objects = stats["totals"][ALL]["classes"]
    hints = stats["hints"][ALL]
    n_obj = max(1, sum(objects.values()))
    n_hint = max(1, hints["hints"])
    names = list(objects) + [n for n in hints["classes"] if n not in objects]
    rows = []
    for name in names:
        o, h = objects.get(name, 0), hints["classes"].get(name, 0)
        m = hints["matched_classes"].get(name, 0)
        rows.append([name, o, _pct(o / n_obj), h, _pct(h / n_hint), _pct(m / h) if h else "-"])
    headers = ["class", "objects", "obj share", "hints", "hint share", "matched"]
    return format_table(headers, rows, "Classes (all splits)")


def _hint_table(stats: dict) -> str:
    rows = []
    for key, h in stats["hints"].items():
        by = h["described_by"]
        rows.append([key, h["hints"], h["hints_per_pose"]["mean"], _pct(h["matched_fraction"])]
                    + [by.get(s, 0) for s in DESCRIBE_STRATEGIES])
    headers = ["split", "hints", "per pose", "matched"] + [f"by {s}" for s in DESCRIBE_STRATEGIES]
    return format_table(headers, rows, "Hints")


def _color_table(stats: dict) -> str:
    colors = stats["hints"][ALL]["colors"]
    total = max(1, sum(colors.values()))
    rows = [[word, n, _pct(n / total)] for word, n in colors.items()]
    return format_table(["colour word", "hints", "share"], rows, "Hint colour words (all splits)")


def _ambiguity_table(stats: dict) -> str:
    rows = []
    for key, a in stats["ambiguity"].items():
        c = a["candidate_cells"]
        rows.append([key, a["sampled_queries"], a["gallery_cells"], c["median"], c["mean"],
                     c["max"], _pct(a["candidate_fraction_mean"]), _pct(a["unique_fraction"]),
                     _pct(a["best_cell_contains_fraction"]), a["class_only_cells"]["median"]])
    headers = ["split", "queries", "gallery", "cand median", "cand mean", "cand max",
               "cand share", "unique", "best ok", "class-only median"]
    note = ("Ambiguity: cells of the split holding every (colour, class) pair a query mentions\n"
            "(cand share = mean share of the gallery; best ok = the ground-truth cell qualifies)")
    return format_table(headers, rows, note)


def format_stats(stats: dict) -> str:
    """The statistics as readable, aligned text tables."""
    parts = []
    if "root" in stats:
        parts.append(f"Dataset {stats['root']}: {len(stats['scenes'])} scenes")
    parts += [_size_table(stats), _objects_per_cell_table(stats), _class_table(stats),
              _hint_table(stats), _color_table(stats)]
    if stats["ambiguity"]:
        parts.append(_ambiguity_table(stats))
    return "\n\n".join(parts)
