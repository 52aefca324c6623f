"""Train the PointNet++ object classifier on a dataset's objects.

Its features describe every object for the coarse and fine stages of arXiv 2601.03579 (the
README's "Training and evaluation" lists the steps). Training objects are the distinct objects
of the train split's cells (``objects.gather_objects``); each epoch draws a fresh 256-point
sample of every object it uses (optionally a random subset of ``max_objects``). After every
epoch the classifier is measured on the val split's objects; the best epoch's weights are
kept. At the end the best weights are measured on the test split's objects.

Files in ``out_dir``::

    pointnet.safetensors + pointnet.json     best epoch on validation; config and metrics
    pointnet_last.pt                         last epoch: weights, optimizer, run state

The epoch loop, resuming and the best-epoch bookkeeping are those of every trainer
(:func:`.loop.fit`). Running again with the same ``out_dir`` resumes after the last finished
epoch (with more ``epochs``, it trains on); the settings that shape the run must match the
saved ones. The resume files of earlier versions (``pointnet_last.safetensors`` + ``.json``,
``pointnet_last_optim.*``) are not read: such a run starts afresh. Under torchrun each rank
trains on its share of every epoch's batches (DistributedDataParallel); rank 0 validates,
tests and writes.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.constants import CLASS_NAMES
from ..errors import SpatialocError
from ..networks.checkpoint import load_checkpoint, load_config, paths, save_checkpoint
from ..networks.pointnet import PointNet2
from .loop import fit, last_path
from .objects import NUM_POINTS, ObjectSet, gather_objects
from .runtime import start_run

BEST = STAGE = "pointnet"  # pointnet.safetensors + .json; the run: pointnet_last.pt
OLD_LAST = "pointnet_last"  # the resume files of earlier versions (ignored)
MIN_LR_FRACTION = 0.05  # cosine schedule from lr down to lr * this
EVAL_SEED = 12345  # fixed point samples, so that every epoch is measured on the same input
# Settings that must not change when a run resumes (epochs may grow).
RESUME_KEYS = ("data", "seed", "batch_size", "lr", "max_objects", "max_eval_objects", "num_points")


def subset(n: int, max_n: Optional[int], rng: np.random.Generator) -> np.ndarray:
    """All of range(n) in random order, or the first ``max_n`` of that order."""
    order = rng.permutation(n)
    return order if max_n is None else order[:max_n]


def batches_of(ids: np.ndarray, batch_size: int) -> list:
    """``ids`` cut into batches of ``batch_size``; a last batch of one is left out (BatchNorm)."""
    batches = [ids[s:s + batch_size] for s in range(0, len(ids), batch_size)]
    return [b for b in batches if len(b) >= 2]


@torch.no_grad()
def evaluate(model: PointNet2, objects: ObjectSet, ids: np.ndarray, batch_size: int,
             device: torch.device, progress: bool = False, desc: str = "eval") -> Dict:
    """Accuracy on the objects ``ids`` (eval mode, fixed point samples).

    Returns {"objects", "accuracy", "mean_class_accuracy", "per_class": {name: acc or None},
    "per_class_count": {name: n}}.
    """
    model.eval()
    rng = np.random.default_rng(EVAL_SEED)
    pred = np.empty(len(ids), np.int64)
    starts = range(0, len(ids), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        xyz, rgb, _ = objects.sample(ids[s:s + batch_size], NUM_POINTS, rng)
        pred[s:s + batch_size] = model(xyz.to(device), rgb.to(device)).argmax(1).cpu().numpy()
    labels = objects.labels[ids]
    correct = pred == labels
    per_class, count = {}, {}
    for c, name in enumerate(CLASS_NAMES):
        mask = labels == c
        count[name] = int(mask.sum())
        per_class[name] = float(correct[mask].mean()) if mask.any() else None
    present = [a for a in per_class.values() if a is not None]
    return {"objects": int(len(ids)),
            "accuracy": float(correct.mean()) if len(ids) else float("nan"),
            "mean_class_accuracy": float(np.mean(present)) if present else float("nan"),
            "per_class": per_class, "per_class_count": count}


def lr_at(step: int, total: int, lr: float) -> float:
    """Cosine decay from ``lr`` at step 0 to ``lr * MIN_LR_FRACTION`` at ``total``."""
    t = min(step / max(total, 1), 1.0)
    return lr * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t)))


def _check_resumable(saved: Dict, settings: Dict, where) -> None:
    for key in RESUME_KEYS:
        if saved.get(key) != settings.get(key):
            raise SpatialocError(f"{where}: this run was started with {key}={saved.get(key)!r}, "
                                 f"not {settings.get(key)!r}; use another output folder to start "
                                 f"a new run")


def train_pointnet(data_dir, out_dir, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                   seed: int = 0, device: str = "auto", max_objects: Optional[int] = None,
                   progress: bool = True, max_eval_objects: Optional[int] = None) -> Dict:
    """Train, validate every epoch, keep the best, then test; returns the metrics dict.

    ``max_objects``: train objects used per epoch (a new random subset each
    epoch; None = all). ``max_eval_objects``: size of the fixed random
    subsets of the val and test objects that are measured (None = all).
    """
    if epochs < 1 or batch_size < 2 or lr <= 0:
        raise SpatialocError(f"need epochs >= 1, batch size >= 2 and lr > 0 "
                             f"(got {epochs}, {batch_size}, {lr})")
    if ((max_objects is not None and max_objects < 2)
            or (max_eval_objects is not None and max_eval_objects < 1)):
        raise SpatialocError(f"need max objects >= 2 and max eval objects >= 1 "
                             f"(got {max_objects}, {max_eval_objects})")
    _, dist, out = start_run(seed, device, out_dir)  # seeds torch before the model is built
    dev = dist.device
    settings = {"data": str(Path(data_dir).resolve()), "seed": seed, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "max_objects": max_objects,
                "max_eval_objects": max_eval_objects, "num_points": NUM_POINTS}
    say = print if progress and dist.main else (lambda *a, **k: None)
    last = last_path(out, STAGE)
    if dist.main and not last.exists() and paths(out / OLD_LAST)[1].exists():
        print(f"{out}: {OLD_LAST}.safetensors + .json are an earlier resume format, not read; "
              f"training starts afresh (progress goes to {last.name})")

    model = PointNet2().to(dev)
    ddp = dist.wrap(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    t0 = time.perf_counter()
    train = gather_objects(data_dir, "train")
    val = gather_objects(data_dir, "val")
    say(f"objects: {len(train)} train, {len(val)} val ({time.perf_counter() - t0:.0f} s to load)")
    if len(train) < 2 or len(val) == 0:
        raise SpatialocError(f"{data_dir}: too few objects to train on ({len(train)} train, "
                             f"{len(val)} val)")
    settings["train_objects"], settings["val_objects"] = len(train), len(val)
    val_ids = subset(len(val), max_eval_objects, np.random.default_rng([seed, 1]))
    per_epoch = len(train) if max_objects is None else min(len(train), max_objects)
    steps_per_epoch = len(dist.shard(batches_of(np.arange(per_epoch), batch_size)))  # per rank
    total_steps = epochs * steps_per_epoch
    latest = {}  # the last epoch's speed and full validation metrics, for its line and checkpoint

    def config(metrics: Dict) -> Dict:
        return {"kind": "pointnet", "architecture": model.config(), "classes": list(CLASS_NAMES),
                "input": {"num_points": NUM_POINTS, "coordinates": "cell-normalised, not centred"},
                "training": settings, "metrics": metrics}

    def begin(state):
        if state["epoch"]:
            _check_resumable(state["training"], settings, last)
        state["training"] = settings

    def train_epoch(epoch):
        rng = np.random.default_rng([seed, 0, epoch])
        batches = dist.shard(batches_of(subset(len(train), max_objects, rng), batch_size))
        bar = tqdm(batches, desc=f"epoch {epoch}/{epochs}", unit="batch",
                   disable=not (progress and dist.main))
        t_epoch, losses, hits, seen = time.perf_counter(), [], 0, 0
        for i, b in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = lr_at((epoch - 1) * steps_per_epoch + i, total_steps, lr)
            xyz, rgb, y = train.sample(b, NUM_POINTS, rng)
            xyz, rgb, y = xyz.to(dev), rgb.to(dev), y.to(dev)
            logits = ddp(xyz, rgb)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            hits += int((logits.argmax(1) == y).sum())
            seen += len(b)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{hits / seen:.3f}")
        train_s = time.perf_counter() - t_epoch
        latest["objects_per_s"] = seen / train_s
        return {"epoch": epoch, "loss": float(np.mean(losses)),
                "train_accuracy": hits / max(seen, 1), "objects": seen,
                "train_s": round(train_s, 1)}

    def validate(record):
        metrics = evaluate(model, val, val_ids, max(batch_size, 128), dev, progress, desc="val")
        latest["val"] = metrics
        tail = {k: record.pop(k) for k in ("objects", "train_s")}  # keep the records' key order
        record.update(val_accuracy=metrics["accuracy"],
                      val_mean_class_accuracy=metrics["mean_class_accuracy"], **tail)
        say(f"epoch {record['epoch']}: loss {record['loss']:.4f}, "
            f"train acc {record['train_accuracy']:.3f}, val acc {metrics['accuracy']:.3f} "
            f"(mean over classes {metrics['mean_class_accuracy']:.3f}), "
            f"{latest['objects_per_s']:.1f} objects/s")
        return metrics["accuracy"]

    def save_best(record, history):
        save_checkpoint(model, out / BEST,
                        config({"best_epoch": record["epoch"], "val": latest["val"]}))

    state = fit(STAGE, out, dist, model, opt, epochs, train_epoch, validate, save_best,
                fresh={"training": settings}, begin=begin, best_format="best val accuracy {:.3f}",
                log=say)
    if not dist.main:  # rank 0 measures the best weights on the test split and writes them
        return {"weights": str(paths(out / BEST)[0]), "epochs": state["epoch"]}

    best = load_config(out / BEST)
    if "test" not in best.get("metrics", {}):
        del train
        test = gather_objects(data_dir, "test")
        test_ids = subset(len(test), max_eval_objects, np.random.default_rng([seed, 2]))
        model, _ = load_checkpoint(model, out / BEST, map_location=dev)
        test_metrics = evaluate(model, test, test_ids, max(batch_size, 128), dev, progress,
                                desc="test")
        metrics = {**best["metrics"], "test": test_metrics, "history": state["history"]}
        save_checkpoint(model, out / BEST, config(metrics))
        best = load_config(out / BEST)
        say(f"test acc {test_metrics['accuracy']:.3f} (mean over classes "
            f"{test_metrics['mean_class_accuracy']:.3f}) with the weights of epoch "
            f"{state['best_epoch']}")
    m = best["metrics"]
    return {"weights": str(paths(out / BEST)[0]), "best_epoch": m["best_epoch"],
            "epochs": state["epoch"], "val_accuracy": m["val"]["accuracy"],
            "val_mean_class_accuracy": m["val"]["mean_class_accuracy"],
            "test_accuracy": m["test"]["accuracy"],
            "test_mean_class_accuracy": m["test"]["mean_class_accuracy"],
            "val_per_class": m["val"]["per_class"], "test_per_class": m["test"]["per_class"]}
