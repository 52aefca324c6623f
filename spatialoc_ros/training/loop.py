"""The epoch loop every trainer shares: resume, train, validate, keep the best, save the last.

A trainer sets up its data and model (``runtime.start_run`` gives the seed, the
torchrun-aware device and OUT) and hands :func:`fit` three callbacks:

* ``train_epoch(epoch) -> record``: one epoch on this rank's share of the data
  (``Distributed.shard``); the record (loss, timings) joins the run's history;
* ``validate(record) -> score``: rank 0 only; adds the validation metrics to the
  record, prints the epoch's line and returns the number that picks the best epoch;
* ``save_best(record, history)``: rank 0 only, when ``score`` beats the best so far;
  writes ``OUT/<stage>.safetensors`` + ``.json``.

After every epoch rank 0 writes ``OUT/<stage>_last.pt`` (:func:`runtime.save_last`:
model, optimizer, scheduler and the run state as JSON). Run again with the same
OUT and :func:`fit` loads it and carries on after the last finished epoch. The
run state is ``{"epoch", "best", "best_epoch", "history"}`` plus whatever the
trainer adds (``fresh``); ``best`` is None until an epoch has been validated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from .runtime import Distributed, load_last, save_last


def last_path(out: Path, stage: str) -> Path:
    """The resume file of a stage: ``OUT/<stage>_last.pt``."""
    return Path(out) / f"{stage}_last.pt"


def improves(score: float, best: Optional[float], minimise: bool = False) -> bool:
    """Is ``score`` better than ``best`` (None: nothing validated yet)?"""
    if best is None:
        return True
    return score < best if minimise else score > best


def fit(stage: str, out: Path, dist: Distributed, model, optimizer, epochs: int,
        train_epoch: Callable[[int], dict], validate: Callable[[dict], float],
        save_best: Callable[[dict, list], None], *, scheduler=None, minimise: bool = False,
        fresh: Optional[dict] = None, begin: Optional[Callable[[dict], None]] = None,
        best_format: str = "best {:.3f}", log: Callable[[str], None] = print) -> dict:
    """Train ``model`` up to ``epochs`` epochs, resuming from ``OUT/<stage>_last.pt``.

    ``begin(state)`` runs once the state is known (fresh or resumed), before the
    first epoch: a trainer reseeds its generator or checks its settings there.
    ``best_format`` formats the best score in the resume line; ``log`` prints on
    rank 0. The process group is closed on the way out. Returns the run state.
    """
    last = last_path(out, stage)
    state = {"epoch": 0, "best": None, "best_epoch": 0, "history": [], **(fresh or {})}
    saved = load_last(last, model, optimizer, scheduler)
    if saved is not None:
        state.update(saved)
    try:
        if begin is not None:
            begin(state)
        if saved is not None and dist.main:
            log(f"resuming after epoch {state['epoch']} ("
                + best_format.format(state["best"]) + ")")
        while state["epoch"] < epochs:
            epoch = state["epoch"] + 1
            model.train()
            record = train_epoch(epoch)
            if dist.main:
                score = validate(record)
                if improves(score, state["best"], minimise):
                    state["best"], state["best_epoch"] = score, epoch
                    save_best(record, state["history"] + [record])
            state["epoch"] = epoch
            state["history"].append(record)
            if dist.main:
                save_last(last, model, optimizer, state, scheduler)
    finally:
        dist.close()
    return state
