"""``spatialoc bench``: how long the pipeline takes per query, and what the gallery costs.

For each map: the Localizer is started (gallery from the on-disk cache when it
exists: ``gallery_load_s``), then ``queries`` held-out descriptions of the map
(its own poses, a fixed sample) are localized one at a time, twice:

* cold: what earlier queries taught is forgotten before each query (a description the
  node has never heard). The language front end maps it to canonical hint sentences, whose
  token embeddings were encoded once with the gallery, so the text encoder runs only on
  words it has to match;
* encoder: the token cache is emptied entirely, so the text encoder runs on every hint
  sentence (the per-sentence hint features still come from the table computed at start;
  a text the front end understands nothing of also computes those);
* warm: the sentences are cached (a repeated description).

Reported per stage (text encoding, coarse scoring, fine stage over the top-k,
end to end): median and 95th percentile in milliseconds. ``--rebuild`` also
times building the cell bank and the gallery from scratch (in a temporary
cache folder) and gives cells per second. Peak resident memory of the process.
"""
from __future__ import annotations

import resource
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import SpatialocError

STAGES = ("language", "text", "coarse", "fine", "total")
# cold: a description never heard before, as the node meets it (the language front end's hints
# come from the table of every canonical hint sentence, encoded once with the gallery); encoder:
# the text encoder runs on every hint (the per-sentence hint features still from the table);
# warm: every sentence cached (a repeated description)
MODES = ("cold", "encoder", "warm")


def summary(values: Sequence[float]) -> Dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "n": int(len(v))}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_parts_mb() -> Dict[str, float]:
    """Resident memory now, split as Linux counts it (/proc/self/status): ``anon`` (the
    process's own allocations) and ``file`` (pages of mapped files, e.g. a memory-mapped cell
    store: page cache the kernel can drop and read again). Empty where there is no /proc."""
    out = {}
    try:
        lines = open("/proc/self/status").read().splitlines()
    except OSError:
        return out
    for line in lines:
        for key, name in (("RssAnon:", "anon"), ("RssFile:", "file")):
            if line.startswith(key):
                out[name] = int(line.split()[1]) / 1024.0
    return out


def process_times() -> Dict[str, float]:
    """CPU seconds of this process in user and kernel (system) mode and its minor page faults:
    a large system share points at memory churn (pages faulted in again and again) or threads
    waiting on each other, not at arithmetic."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": r.ru_utime, "system_s": r.ru_stime, "minor_page_faults": r.ru_minflt}


def cpu_report() -> Dict[str, object]:
    """The CPU (model, cores, torch threads), the math paths torch takes on it (the vector
    instruction set its kernels were dispatched for, and its BLAS) and this process' CPU times
    and page faults."""
    import os

    import torch

    return {"model": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "kernels": torch.backends.cpu.get_cpu_capability(), "blas": blas_name(),
            **process_times()}


def blas_name() -> str:
    """The BLAS torch was built with (``BLAS_INFO`` of its build settings: "mkl", "open", ...)."""
    import re

    import torch

    found = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def format_cpu(cpu: Dict[str, object]) -> str:
    """One line of :func:`cpu_report`."""
    return (f"CPU: {cpu['model']}, {cpu['cores']} cores, {cpu['threads']} threads, "
            f"{cpu.get('kernels', '?')} kernels, BLAS {cpu.get('blas', '?')}; "
            f"{cpu['user_s']:.0f} s user, {cpu['system_s']:.0f} s system, "
            f"{cpu['minor_page_faults']:,} minor page faults")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_map(map_dir, weights="models", scenes: Optional[Sequence[str]] = None,
              queries: int = 100, top_k: int = 10, device="cpu", rebuild: bool = False,
              seed: int = 0, progress: bool = True,
              texts: Optional[Sequence[str]] = None) -> dict:
    """Timing of one map (see the module docstring); ``texts``: descriptions to time instead of
    the map's recorded ones (e.g. a paraphrase set of ``spatialoc data paraphrase``)."""
    import torch
    from tqdm import tqdm

    from ..inference import Localizer
    from ..core.text_cache import TextCache

    out = {"map": str(map_dir), "top_k": top_k}
    if rebuild:
        with tempfile.TemporaryDirectory(prefix="spatialoc-bench-") as tmp:
            t0 = time.perf_counter()
            loc = Localizer(map_dir, weights, scenes=scenes, device=device, cache=tmp, top_k=top_k,
                            progress=progress)
            out["gallery_build_s"] = time.perf_counter() - t0
            out["gallery_cells_per_s"] = loc.num_cells / out["gallery_build_s"]
    t0 = time.perf_counter()
    loc = Localizer(map_dir, weights, scenes=scenes, device=device, top_k=top_k, progress=progress)
    out["gallery_load_s"] = time.perf_counter() - t0
    out["gallery_cells"] = loc.num_cells
    out["device"] = str(loc.device)
    rng = np.random.default_rng(seed)
    if texts is None:
        poses = loc.map.poses
        if not poses:
            raise SpatialocError(f"{map_dir}: the map records no descriptions to time (pass "
                                 "--texts FILE.jsonl)")
        texts = [p.text for p in poses]
    texts = [texts[i] for i in rng.choice(len(texts), min(queries, len(texts)), replace=False)]
    loc.localize(texts[0])  # first call pays one-time allocations
    timings: Dict[str, Dict[str, List[float]]] = {m: {s: [] for s in STAGES} for m in MODES}
    table = loc.text.base  # the canonical hint sentences' token embeddings
    for mode in MODES:
        for text in tqdm(texts, desc=f"{mode} queries", disable=not progress):
            if mode == "warm":
                loc.encode_sentences(loc.read([text])[0].hints)
            else:  # a description never heard: only the canonical table is known, or nothing
                loc.forget_queries()
                if mode == "encoder":
                    loc.text = TextCache(loc.text.encoder)
            result = loc.localize(text)
            for s in STAGES:
                timings[mode][s].append(result.timing_ms[s])
        loc.text = TextCache(loc.text.encoder, base=table)
    for s in STAGES:
        out[f"{s}_ms"] = summary(timings["cold"][s])
        out[f"{s}_cached_ms"] = summary(timings["warm"][s])
        out[f"{s}_encoder_ms"] = summary(timings["encoder"][s])
    for suffix in ("", "_cached", "_encoder"):
        out[f"end_to_end{suffix}_ms"] = out.pop(f"total{suffix}_ms")
    out["threads"] = torch.get_num_threads()
    return out


def format_bench(report: dict) -> str:
    lines = [f"{report['map']}: {report['gallery_cells']} cells, top-k {report['top_k']}, "
             f"{report['device']}, {report['threads']} threads; gallery loaded in "
             f"{report['gallery_load_s']:.1f} s"]
    if "gallery_build_s" in report:
        lines.append(f"gallery built from scratch in {report['gallery_build_s']:.1f} s "
                     f"({report['gallery_cells_per_s']:.1f} cells/s)")
    lines.append(f"{'ms per query':<22}{'median':>8}{'p95':>8}   "
                 f"{'encoder on every hint':>22}{'p95':>8}   {'cached text':>12}{'p95':>8}")
    for name, key in (("language front end", "language"), ("text (incl. language)", "text"),
                      ("coarse scoring", "coarse"),
                      ("fine (top-k)", "fine"), ("end to end", "end_to_end")):
        cold, enc, warm = (report[f"{key}{s}_ms"] for s in ("", "_encoder", "_cached"))
        lines.append(f"{name:<22}{cold['median']:8.1f}{cold['p95']:8.1f}   "
                     f"{enc['median']:22.1f}{enc['p95']:8.1f}   "
                     f"{warm['median']:12.1f}{warm['p95']:8.1f}")
    return "\n".join(lines)
