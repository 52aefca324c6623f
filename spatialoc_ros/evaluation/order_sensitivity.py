"""How much the fine stage's answer depends on the order of a cell's objects (ideally not at all).

The hints name objects, never their list position, so a permutation of a cell's
valid objects should leave the position and the precision unchanged. Mamba
scans the objects in order, so some sensitivity remains; this measures it on
validation queries in their ground-truth cells: how far the predicted position
moves under random orders, against how far it moves when the same text is read
in another cell (the scale of a real change), and the factor by which lambda
changes.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch


def _stats(values: np.ndarray) -> Dict[str, float]:
    return {"median": float(np.median(values)), "mean": float(values.mean()),
            "p95": float(np.quantile(values, 0.95))}


def measure_order_sensitivity(data: str, weights: str, queries: int = 600, orders: int = 3,
                              seed: int = 0, cache=None,
                              progress: bool = False) -> Dict[str, object]:
    """The ``order_sensitivity`` object of ``spatialoc eval --order-sensitivity N`` (validation
    split)."""
    from ..core.cell_bank import permute_objects
    from ..core.encoding import predict_fine as predict
    from ..core.frozen_inputs import cache_dir, load_banks, load_text_cache
    from ..core.weights import load_fine_model
    from ..data.kitti360pose import load_split
    from ..networks.checkpoint import load_config

    coarse_config = load_config(f"{weights}/coarse")
    model, config = load_fine_model(weights, coarse_config)
    model = model.float()
    val = load_split(data, "val")
    rng = np.random.default_rng(seed)
    ids = np.arange(len(val.poses))
    if queries:
        ids = np.sort(rng.choice(ids, min(queries, len(ids)), replace=False))
    hints = [[h.text for h in val.poses[i].hints] for i in ids]
    root = cache_dir(data, cache)
    banks, _ = load_banks(root, f"{weights}/pointnet", {"val": val.cells}, model.cfg.max_objects,
                          seed, progress)
    bank = banks["val"]
    text = load_text_cache(root, config["text_encoder"], sorted({s for h in hints for s in h}))
    rows = bank.rows([val.poses[i].cell_id for i in ids]).numpy()
    sizes = np.array([val.cells_by_id[val.poses[i].cell_id].cell_size for i in ids])

    class Permuted:  # the bank, each batch's valid objects in a fresh random order
        def __init__(self, rng):
            self.rng = rng

        def batch(self, index):
            return permute_objects(bank.batch(index), self.rng)

    with torch.inference_mode():
        base, lam = predict(model, text, bank, hints, rows, "cpu")
        moves, factors = [], []
        rng = np.random.default_rng(seed + 1)
        for _ in range(orders):
            offset, lam_p = predict(model, text, Permuted(rng), hints, rows, "cpu")
            moves.append(np.linalg.norm(offset - base, axis=1) * sizes)
            if lam is not None:
                factors.append(np.maximum(lam_p / lam, lam / lam_p))
        other, _ = predict(model, text, bank, hints, np.roll(rows, 1), "cpu")
    out = {"queries": int(len(rows)), "orders": int(orders),
           "permuted_move_m": _stats(np.concatenate(moves)),
           "other_cell_move_m": _stats(np.linalg.norm(other - base, axis=1) * sizes)}
    if factors:
        out["precision_factor"] = _stats(np.concatenate(factors))
    return out


def format_order_sensitivity(r: dict) -> str:
    m, o = r["permuted_move_m"], r["other_cell_move_m"]
    text = (f"object order ({r['queries']} val queries x {r['orders']} orders): the position "
            f"moves by a median {m['median']:.2f} m (mean {m['mean']:.2f}, 95th percentile "
            f"{m['p95']:.2f} m), against {o['median']:.2f} m for the same text in another cell")
    if "precision_factor" in r:
        text += f"; lambda by a median factor of {r['precision_factor']['median']:.3f}"
    return text
