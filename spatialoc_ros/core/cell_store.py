"""Encoded cells on disk, memory-mapped: galleries larger than memory.

A :class:`~.gallery.Gallery` and its :class:`~.cell_bank.CellBank` live in RAM
as float32 (about 57 KB of instance features per cell). A city of a million
cells does not fit, so a :class:`CellStore` keeps the same per-cell arrays in
one folder of ``.npy`` files, read through ``numpy.memmap``: only the rows a
query touches (the retriever's shortlist and the fine stage's top k) are paged
in. The instance-level descriptors and the PointNet++ features are stored as
float16 (their values are L2-normalised or bounded activations; float16 keeps
about three decimal digits, which moves a set similarity by less than 1e-3),
the global descriptors as float32 (the approximate index keeps its own copy).

Folder layout (``store.json`` says how many rows are complete, so a store
that is still being written, or whose writer was stopped, opens with the rows
it has)::

    store.json        {"format", "rows", "capacity", "slots", "dim", "point_dim",
                       "key", "scenes", "ids"}
    p_glo.npy         [R, D]     float32   global descriptors
    p_obj.npy         [R, N, D]  float16   F_Object_P
    p_rel.npy         [R, N, D]  float16   F_Relation_P
    p_mask.npy        [R, N]     bool      valid object slots
    point_features.npy[R, N, F]  float16   frozen PointNet++ features (fine stage)
    colors.npy, centers.npy [R, N, 3] float32; counts.npy [R, N] int32
    cell_size.npy [R] float64; origin.npy [R, 2] float64 (world x, y of the cell's corner);
    scene.npy [R] int32 (index into "scenes")
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..networks.outputs import CoarseOutputs

STORE_FORMAT = 1

# name -> (dtype, shape after the row axis as a function of (slots, dim, point_dim))
_ARRAYS = {
    "p_glo": (np.float32, lambda n, d, f: (d,)),
    "p_obj": (np.float16, lambda n, d, f: (n, d)),
    "p_rel": (np.float16, lambda n, d, f: (n, d)),
    "p_mask": (np.bool_, lambda n, d, f: (n,)),
    "point_features": (np.float16, lambda n, d, f: (n, f)),
    "colors": (np.float32, lambda n, d, f: (n, 3)),
    "centers": (np.float32, lambda n, d, f: (n, 3)),
    "counts": (np.int32, lambda n, d, f: (n,)),
    "cell_size": (np.float64, lambda n, d, f: ()),
    "origin": (np.float64, lambda n, d, f: (2,)),
    "scene": (np.int32, lambda n, d, f: ()),
}


def _sorted_rows(rows: torch.Tensor):
    """(unique sorted rows as numpy, inverse index): reads in file order, each row once."""
    uniq, inverse = torch.unique(rows.reshape(-1), return_inverse=True)
    return uniq.numpy(), inverse


class CellStore:
    """A memory-mapped store of encoded cells (see the module docstring); ``CellStore(folder)``
    opens it read-only."""

    def __init__(self, folder):
        from ..errors import DataError

        self.folder = Path(folder)
        meta_path = self.folder / "store.json"
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.folder}: not a cell store ({exc})") from None
        if self.meta.get("format") != STORE_FORMAT:
            raise DataError(f"{self.folder}: cell store format {self.meta.get('format')}, "
                            f"expected {STORE_FORMAT}; build it again")
        self.rows = int(self.meta["rows"])
        self.ids: List[str] = list(self.meta["ids"][:self.rows])
        self.scenes: List[str] = list(self.meta["scenes"])
        self.arrays = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r")
                       for name in _ARRAYS}

    def __len__(self) -> int:
        return self.rows

    def head(self, rows: int) -> "CellStore":
        """The same store limited to its first ``rows`` rows."""
        import copy

        view = copy.copy(self)
        view.rows = min(int(rows), self.rows)
        view.ids = self.ids[:view.rows]
        return view

    def scene_names(self) -> List[str]:
        """The scene name of every row."""
        return [self.scenes[i] for i in self.column("scene").tolist()]

    @property
    def key(self) -> str:
        return str(self.meta.get("key", ""))

    def column(self, name: str) -> np.ndarray:
        """One array's complete rows (a memory map; copy what you keep)."""
        return self.arrays[name][:self.rows]

    def global_descriptors(self) -> torch.Tensor:
        """P_glo [R, D] float32, read into memory."""
        return torch.from_numpy(np.array(self.column("p_glo")))

    def _take(self, name: str, uniq: np.ndarray, inverse: torch.Tensor) -> torch.Tensor:
        """Rows ``uniq`` (sorted, read once each) of one array, put back in the asked order;
        float16 as float32."""
        part = torch.from_numpy(np.ascontiguousarray(self.arrays[name][uniq]))[inverse]
        return part.float() if part.dtype == torch.float16 else part

    def instance(self, rows: torch.Tensor) -> CoarseOutputs:
        """p_obj, p_rel [M, N, D] float32 and p_mask [M, N] of ``rows`` [M] (any order)."""
        uniq, inverse = _sorted_rows(rows)
        return CoarseOutputs(**{name: self._take(name, uniq, inverse)
                                for name in ("p_obj", "p_rel", "p_mask")})

    def bank_batch(self, rows: torch.Tensor) -> dict:
        """The fine stage's cell inputs of ``rows`` [M], as :meth:`.cell_bank.CellBank.batch`."""
        uniq, inverse = _sorted_rows(rows)
        mask = self._take("p_mask", uniq, inverse)
        n = max(1, int(mask.sum(1).max()))
        return dict(mask=mask[:, :n], counts=self._take("counts", uniq, inverse)[:, :n].long(),
                    **{name: self._take(name, uniq, inverse)[:, :n]
                       for name in ("point_features", "colors", "centers")})


class CellStoreWriter:
    """Appends encoded cells to a store folder, ``capacity`` rows at most.

    Rows become visible to readers when :meth:`flush` records them in ``store.json``
    (after every :meth:`append`); reopening an existing folder with the same key
    continues after its last complete row.
    """

    def __init__(self, folder, capacity: int, slots: int, dim: int, point_dim: int,
                 key: str = ""):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / "store.json"
        previous = None
        if meta_path.is_file():
            try:
                previous = json.loads(meta_path.read_text())
            except ValueError:
                previous = None
        shape_args = (slots, dim, point_dim)
        resume = (previous is not None and previous.get("format") == STORE_FORMAT
                  and previous.get("key") == key and previous.get("capacity") == capacity
                  and [previous.get("slots"), previous.get("dim"), previous.get("point_dim")]
                  == list(shape_args))
        mode = "r+" if resume else "w+"
        self.arrays = {}
        for name, (dtype, shape) in _ARRAYS.items():
            path = self.folder / f"{name}.npy"
            if mode == "r+":
                self.arrays[name] = np.load(path, mmap_mode="r+")
            else:
                self.arrays[name] = np.lib.format.open_memmap(
                    path, mode="w+", dtype=dtype, shape=(capacity, *shape(*shape_args)))
        self.meta = previous if resume else {
            "format": STORE_FORMAT, "rows": 0, "capacity": capacity, "slots": slots, "dim": dim,
            "point_dim": point_dim, "key": key, "scenes": [], "ids": []}
        if not resume:
            self.flush()

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    @property
    def capacity(self) -> int:
        return int(self.meta["capacity"])

    @property
    def full(self) -> bool:
        return self.rows >= self.capacity

    def append(self, ids: Sequence[str], scene: str, descriptors: CoarseOutputs, bank: dict,
               cell_size: np.ndarray, origin: np.ndarray) -> int:
        """Write cells (their coarse ``descriptors``, ``bank`` arrays as CellBank fields, world
        cell size [M] and corner [M, 2]); returns how many fitted."""
        start = self.rows
        m = min(len(ids), self.capacity - start)
        if m <= 0:
            return 0
        if scene not in self.meta["scenes"]:
            self.meta["scenes"].append(scene)
        values: Dict[str, np.ndarray] = {
            "p_glo": descriptors.p_glo, "p_obj": descriptors.p_obj, "p_rel": descriptors.p_rel,
            "p_mask": descriptors.p_mask, "point_features": bank["point_features"],
            "colors": bank["colors"], "centers": bank["centers"], "counts": bank["counts"],
            "cell_size": np.asarray(cell_size), "origin": np.asarray(origin),
            "scene": np.full(len(ids), self.meta["scenes"].index(scene))}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.numpy()
            target = self.arrays[name]
            value = value[:m]
            if value.ndim >= 2 and target.ndim >= 2 and value.shape[1] < target.shape[1]:
                target[start:start + m] = 0  # fewer slots than the store: pad
                target[start:start + m, :value.shape[1]] = value
            else:
                target[start:start + m] = value
        self.meta["ids"].extend(list(ids)[:m])
        self.meta["rows"] = start + m
        self.flush()
        return m

    def flush(self) -> None:
        for array in self.arrays.values():
            array.flush()
        tmp = self.folder / "store.json.tmp"
        tmp.write_text(json.dumps(self.meta))
        os.replace(tmp, self.folder / "store.json")


def open_store(folder) -> Optional[CellStore]:
    """The store in ``folder``, or None when there is none."""
    return CellStore(folder) if (Path(folder) / "store.json").is_file() else None
