"""``spatialoc train fine``: train the fine stage (UGFL, arXiv 2601.03579) on a KITTI360Pose
folder.

One sample = a training query's hints and its ground-truth cell; the target
is the pose's xy in that cell's normalised frame (``Cell.to_cell``, the frame
of the object centres) minus the centre (0.5, 0.5). Augmentations: hints are
shuffled, the valid objects of each cell are randomly permuted (padding stays
at the end), and with PMC (prototype-based map cloning) the cell is, with probability
``pmc_prob``, swapped for an eligible neighbouring cell, the target following
it. Adam at ``warmup_lr`` for ``warmup_epochs`` epochs, then ``lr`` constant
(the reference code re-creates Adam at the switch; here only the rate
changes, which a resumed run reproduces exactly).

After every epoch the validation queries are located in their ground-truth
cells: mean and median error in metres (normalised error times the cell's
size), recall within 5/10/15 m and, with the lambda head, how often the error
falls within 1 and 2 sigma, sigma^2 = 1/lambda. The epoch with the lowest mean
error is written to ``OUT/fine.safetensors`` + ``OUT/fine.json`` (parameters in
float16, as the coarse stage ships); ``OUT/fine_last.pt`` holds what a resumed
run needs, so the coarse stage may share OUT.

The cell bank (frozen PointNet++ features) and the text cache are those of the
coarse trainer, built with the same arguments, so both stages share one cache.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from ..errors import SpatialocError
from ..networks.ugfl import FineConfig, FineModel
from .fine_losses import fine_loss
from .language_aug import LanguageAugmentation
from .queries import augment, size_grouped_batches
from .loop import fit
from .runtime import copy_pointnet, start_run
from ..core.cell_bank import permute_objects
from ..core.encoding import predict_fine
from ..core.text_cache import text_batch

RECALL_THRESHOLDS_M = (5, 10, 15)  # the papers' localization recall thresholds (metres)


@dataclass
class FineTrainConfig:
    data: str
    out: str
    epochs: int = 32
    batch_size: int = 32
    lr: float = 3e-4
    warmup_epochs: int = 2  # epochs at warmup_lr before lr (the reference code's schedule)
    warmup_lr: float = 1e-5
    pmc_prob: float = 0.5  # probability of swapping in a neighbouring cell (PMC)
    pmc_threshold: float = 0.4  # the pose must lie this close (L-inf, cell widths) to its centre
    shuffle_objects: bool = True
    seed: int = 0
    device: str = "auto"
    text_encoder: str = "minilm"
    pointnet: str = "models/pointnet"
    cache: Optional[str] = None
    max_train_queries: int = 0  # 0 = all; otherwise a fixed random subset (quick runs, tests)
    max_val_queries: int = 0
    # share of training queries said again in other words (training/language_aug.py)
    language_aug: float = 0.5
    init: Optional[str] = None  # a weights folder whose fine.* the model starts from
    model: FineConfig = field(default_factory=FineConfig)

    def check(self) -> None:
        """Raise a one-line SpatialocError for settings that cannot train."""
        problems = [
            (self.epochs < 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size < 2, f"--batch-size must be at least 2, got {self.batch_size}"),
            (not self.lr > 0 or not self.warmup_lr > 0, "learning rates must be positive"),
            (self.warmup_epochs < 0,
             f"--warmup-epochs must be at least 0, got {self.warmup_epochs}"),
            (not 0 <= self.pmc_prob <= 1, f"--pmc-prob must be in [0, 1], got {self.pmc_prob}"),
            (self.model.d < 16 or self.model.d % 16,
             f"--dim must be a positive multiple of 16, got {self.model.d}"),
            (self.max_train_queries < 0 or self.max_val_queries < 0,
             "query limits must be at least 0"),
        ]
        for bad, message in problems:
            if bad:
                raise SpatialocError(message)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of epoch ``epoch`` (1-based)."""
        return self.warmup_lr if epoch <= self.warmup_epochs else self.lr


def cell_target(cell, pose_w) -> np.ndarray:
    """Offset of the pose from the cell centre, cell-normalised: ``cell.to_cell(xy) - 0.5``."""
    return (cell.to_cell(np.asarray(pose_w, dtype=np.float64)[:2]) - 0.5).astype(np.float32)


class NeighbourCells:
    """PMC: the neighbouring cells a training query may be moved to, found lazily.

    A neighbour (from the split's direction map, or the one its cells imply)
    is eligible when the pose lies within ``threshold`` cell widths (L-inf) of
    its centre and at most ``max_missing`` hints cannot be re-found there: no
    object of the hint's label whose closest point has the hint's offset
    (offsets are cell-normalised differences, the same in every cell). One is
    drawn with probability proportional to 1 / (distance to its centre)^2.
    """

    def __init__(self, split, threshold: float = 0.4, max_missing: int = 1,
                 tolerance: float = 1e-6):
        from ..data.kitti360pose import neighbour_map

        self.split = split
        self.directions = split.directions or neighbour_map(split.cells)
        self.threshold, self.max_missing, self.tolerance = threshold, max_missing, tolerance
        self._memo: Dict[int, tuple] = {}

    def _refound(self, cell, p, hint) -> bool:
        for obj in cell.objects:
            if obj.label == hint.object_label:
                offset = p[:2] - obj.closest_point(p)[:2]
                if np.abs(offset - hint.offset_closest).max() <= self.tolerance:
                    return True
        return False

    def candidates(self, i: int):
        """(eligible cell ids, their draw probabilities) of query ``i``."""
        if i not in self._memo:
            pose = self.split.poses[i]
            ids, weights = [], []
            for cid in self.directions.get(pose.cell_id, {}).values():
                cell = self.split.cells_by_id.get(cid) if cid else None
                if cell is None:
                    continue
                p = cell.to_cell(pose.pose_w)
                if np.abs(p[:2] - 0.5).max() > self.threshold:
                    continue
                missing = sum(not self._refound(cell, p, h) for h in pose.hints)
                if missing <= self.max_missing:
                    ids.append(cid)
                    weights.append(1.0 / max(float(np.sum((p[:2] - 0.5) ** 2)), 1e-12))
            probs = np.asarray(weights) / np.sum(weights) if ids else np.zeros(0)
            self._memo[i] = (ids, probs)
        return self._memo[i]

    def draw(self, i: int, rng: np.random.Generator) -> str:
        """A neighbour of query ``i`` drawn as PMC does, or its own cell when none is eligible."""
        ids, probs = self.candidates(i)
        if not ids:
            return self.split.poses[i].cell_id
        return ids[int(rng.choice(len(ids), p=probs))]


def fine_metrics(offsets: np.ndarray, targets: np.ndarray, cell_sizes: np.ndarray,
                 precision: Optional[np.ndarray] = None) -> dict:
    """Errors in metres of predicted offsets [M, 2] against targets [M, 2] (cell-normalised).

    With ``precision`` (lambda [M]) also the share of queries whose normalised
    error is within 1 and 2 sigma, sigma = lambda^(-1/2), and the Spearman
    correlation of sigma with the error (does lambda rank the errors?).
    """
    err_n = np.linalg.norm(offsets - targets, axis=1)
    err_m = err_n * cell_sizes
    out = {"mean_error_m": float(err_m.mean()), "median_error_m": float(np.median(err_m)),
           "recall": {str(t): float((err_m <= t).mean()) for t in RECALL_THRESHOLDS_M}}
    if precision is not None:
        sigma = precision ** -0.5
        out["coverage_1sigma"] = float((err_n <= sigma).mean())
        out["coverage_2sigma"] = float((err_n <= 2 * sigma).mean())
        out["sigma_error_spearman"] = _spearman(sigma, err_n)
        out["mean_precision"] = float(precision.mean())
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    c = np.corrcoef(ra, rb)[0, 1]
    return float(c) if np.isfinite(c) else float("nan")


def train_fine(cfg: FineTrainConfig, progress: bool = True) -> Dict:
    """Train, validate every epoch, keep the best (:func:`.loop.fit`); returns the run state."""
    from tqdm import tqdm

    from ..networks.checkpoint import load_checkpoint, save_checkpoint
    from .run_data import load_run_data, standardise_counts

    cfg.check()
    rng, dist, out = start_run(cfg.seed, cfg.device, cfg.out)
    device = dist.device

    run = load_run_data(cfg.data, cfg.cache, cfg.pointnet, cfg.text_encoder, cfg.model.max_objects,
                        cfg.seed, rng, cfg.max_train_queries, cfg.max_val_queries,
                        lambda hints: LanguageAugmentation.sentences(), progress=progress)
    train, val, train_hints, val_hints = run.train, run.val, run.train_hints, run.val_hints
    train_ids, val_ids, banks, cache = run.train_ids, run.val_ids, run.banks, run.text
    pointnet_info = run.pointnet_info
    cfg.model.token_dim = cache.hidden_size
    cfg.model.point_dim = int(banks["train"].point_features.shape[-1])
    copy_pointnet(cfg.pointnet, out)  # OUT becomes a complete weights folder for inference

    train_row = {cid: i for i, cid in enumerate(banks["train"].ids)}
    gt_rows = np.array([train_row[p.cell_id] for p in train.poses], dtype=np.int64)
    sizes = banks["train"].mask.sum(1).numpy()[gt_rows]
    val_rows = banks["val"].rows([val.poses[i].cell_id for i in val_ids]).numpy()
    val_cells = [val.cells_by_id[val.poses[i].cell_id] for i in val_ids]
    val_targets = np.stack([cell_target(c, val.poses[i].pose_w)
                            for c, i in zip(val_cells, val_ids)])
    val_sizes = np.array([c.cell_size for c in val_cells], dtype=np.float64)
    val_query_hints = [val_hints[i] for i in val_ids]
    pmc = NeighbourCells(train, cfg.pmc_threshold) if cfg.pmc_prob > 0 else None

    model = FineModel(cfg.model)
    standardise_counts(model, banks["train"])
    if cfg.init:
        load_checkpoint(model, Path(cfg.init) / "fine")
        model.train()
    reword = LanguageAugmentation(train.poses, cache.encoder, cfg.language_aug)
    model = model.to(device)
    ddp = dist.wrap(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr_at(1))

    def begin(state):
        nonlocal rng
        if state["epoch"]:  # resumed: a generator of its own for the epochs to come
            rng = np.random.default_rng([cfg.seed, state["epoch"]])
        elif dist.main:
            base = state["centre_baseline"]
            print(f"cell-centre baseline on val: mean error {base['mean_error_m']:.2f} m, "
                  f"median {base['median_error_m']:.2f} m")

    def train_epoch(epoch):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        batches = size_grouped_batches(sizes[train_ids], cfg.batch_size, rng)
        batches = dist.shard([train_ids[b] for b in batches if len(b) > 1])
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not (progress and dist.main))
        t0, running, moved = time.perf_counter(), [], 0
        for ids in bar:
            cell_ids = [train.poses[i].cell_id for i in ids]
            if pmc is not None:
                swap = rng.random(len(ids)) < cfg.pmc_prob
                cell_ids = [pmc.draw(i, rng) if s else c for i, s, c in zip(ids, swap, cell_ids)]
                moved += sum(c != train.poses[i].cell_id for i, c in zip(ids, cell_ids))
            target = np.stack([cell_target(train.cells_by_id[c], train.poses[i].pose_w)
                               for i, c in zip(ids, cell_ids)])
            target = torch.from_numpy(target).to(device)
            hints = [augment(h, rng, False, False)
                     for h in reword(ids, [train_hints[i] for i in ids], rng)]
            text = {k: v.to(device) for k, v in text_batch(cache, hints).items()}
            cells = banks["train"].batch(torch.tensor([train_row[c] for c in cell_ids]))
            if cfg.shuffle_objects:
                cells = permute_objects(cells, rng)
            cells = {k: v.to(device) for k, v in cells.items()}
            pred = ddp(text, cells)
            loss = fine_loss(pred.offset, pred.precision, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(running[-50:]):.3f}")
        return {"epoch": epoch, "lr": cfg.lr_at(epoch),
                "loss": float(np.mean(running)) if running else float("nan"),
                "pmc_moved": moved / max(1, sum(len(b) for b in batches)),
                "train_s": time.perf_counter() - t0}

    def validate(record):
        offsets, precision = predict_fine(model, cache, banks["val"], val_query_hints, val_rows,
                                          device)
        record["val"] = fine_metrics(offsets, val_targets, val_sizes, precision)
        print(_summary(record))
        return record["val"]["mean_error_m"]

    def save_best(record, history):
        save_checkpoint(model, out / "fine",
                        _checkpoint_config(cfg, record, pointnet_info, history),
                        dtype=torch.float16)  # shipped size; fine_last.pt keeps float32

    baseline = fine_metrics(np.zeros_like(val_targets), val_targets, val_sizes)
    return fit("fine", out, dist, model, opt, cfg.epochs, train_epoch, validate, save_best,
               minimise=True, fresh={"centre_baseline": baseline}, begin=begin,
               best_format="best val mean error {:.2f} m")


def _summary(record: dict) -> str:
    v = record["val"]
    text = (f"epoch {record['epoch']}: loss {record['loss']:.4f}, "
            f"val error mean {v['mean_error_m']:.2f} m, median {v['median_error_m']:.2f} m, "
            "within 5/10/15 m "
            + "/".join(f"{v['recall'][str(t)]:.3f}" for t in RECALL_THRESHOLDS_M))
    if "coverage_1sigma" in v:
        text += (f", 1/2-sigma coverage {v['coverage_1sigma']:.2f}/{v['coverage_2sigma']:.2f}"
                 f" (uncalibrated), Spearman(sigma, error) {v['sigma_error_spearman']:.2f}")
    return text + f" ({record['train_s']:.0f} s)"


def _checkpoint_config(cfg: FineTrainConfig, record: dict, pointnet_info: dict,
                       history: List[dict]) -> dict:
    train = asdict(cfg)
    train.pop("model")
    metrics = {"epoch": record["epoch"], "val": record["val"], "history": history}
    return {"kind": "fine", "architecture": cfg.model.to_dict(), "text_encoder": cfg.text_encoder,
            "pointnet": pointnet_info, "training": train, "metrics": metrics}
