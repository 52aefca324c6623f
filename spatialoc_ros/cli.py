"""The ``spatialoc`` command: a thin dispatcher over per-topic subcommands.

Each top-level command is registered by one small function that adds its
parser and sets ``handler``; heavy libraries (torch, open3d, matplotlib, the
dataset readers) are imported inside the handlers, so ``spatialoc --help``
stays fast. A command that lives in its own module is listed in ``COMMANDS``
as ``"package.module:function"`` and is imported only while the parser is
built, so such modules must keep their top-level imports light too.

Expected failures (:class:`~spatialoc_ros.errors.SpatialocError`, and missing
or unreadable files) end in one line ``spatialoc: error: <message>`` on
stderr and exit status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Callable, List, Optional, Sequence, Union

from .allocator import tune_allocator
from . import __version__
from .errors import SpatialocError

PROG = "spatialoc"
EXIT_OK = 0
EXIT_ERROR = 2  # same status argparse uses for a bad command line
EXIT_INTERRUPTED = 130

# Spelled out rather than imported, so building the parser imports no dataset code
# (the tests check they equal synth.PRESETS, constants.SPLITS and paraphrase.STYLES).
SYNTH_PRESETS = ("tiny", "small", "benchmark")
SPLIT_NAMES = ("train", "val", "test")
PARAPHRASE_STYLES = ("template", "frames", "inverted", "synonyms", "template3", "partial",
                     "speech", "mixed")

Registrar = Callable[[argparse._SubParsersAction], None]


# --------------------------------------------------------------------------- data


def _add_data_command(commands) -> None:
    """``spatialoc data {synth,stats,show,paraphrase}``: create, count, look at and reword
    datasets."""
    data = commands.add_parser("data", help="create, count and look at KITTI360Pose datasets",
                               description="Create, count and look at datasets in the "
                                           "KITTI360Pose format.")
    sub = data.add_subparsers(dest="data_command", metavar="{synth,stats,show,paraphrase}")
    sub.required = True
    _add_data_synth(sub)
    _add_data_stats(sub)
    _add_data_show(sub)
    _add_data_paraphrase(sub)


def _add_data_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic dataset in the KITTI360Pose format",
                       description="Generate a synthetic city and write it as a KITTI360Pose "
                                   "folder.")
    p.add_argument("--preset", required=True, choices=SYNTH_PRESETS,
                   help="dataset size")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: chosen by the generator)")
    p.add_argument("--ply", default=None, metavar="DIR",
                   help="also write each scene as KITTI-360-style labelled PLY windows and its "
                        "queries as JSONL (DIR/<scene>/static/*.ply, DIR/<scene>/queries.jsonl), "
                        "for 'spatialoc map build'")
    p.add_argument("--ply-copies", type=int, default=1, metavar="N",
                   help="with --ply: write every point N times with 2 cm of noise, as a denser "
                        "scanner sees the scene (to measure builds of large clouds)")
    p.add_argument("--scenes", default=None, nargs="+", metavar="SCENE",
                   help="only these scenes (drive names or 4-digit short names)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=_run_data_synth)


def _add_data_stats(sub) -> None:
    p = sub.add_parser("stats", help="counts and ambiguity figures of a dataset folder",
                       description="Counts per scene and split (cells, poses, objects, classes) "
                                   "and how ambiguous the queries are.")
    p.add_argument("dir", metavar="DIR", help="KITTI360Pose folder (with cells/ and poses/)")
    p.add_argument("--split", choices=SPLIT_NAMES, default=None,
                   help="only the scenes of this split (all of them must be present)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--sample", type=int, default=500, metavar="N",
                   help="queries sampled per split for the candidate-cell measure (default: 500; "
                        "0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of that sample (default: 0)")
    p.set_defaults(handler=_run_data_stats)


def _add_data_show(sub) -> None:
    p = sub.add_parser("show", help="draw one scene top-down into a PNG",
                       description="Top-down picture of one scene: object points by class, cells, "
                                   "poses and the hints of a few poses.")
    p.add_argument("dir", metavar="DIR", help="KITTI360Pose folder")
    p.add_argument("--scene", required=True, metavar="S",
                   help="full drive name or its 4-digit short name, e.g. 0010")
    p.add_argument("--out", required=True, metavar="FILE.png", help="picture to write")
    p.add_argument("--cells", type=int, default=None, metavar="N",
                   help="draw only the first N cells (by id) and their poses")
    p.set_defaults(handler=_run_data_show)


def _add_data_paraphrase(sub) -> None:
    p = sub.add_parser("paraphrase", help="write a split's queries reworded, one file per style",
                       description="Write the same sampled queries of a split in several "
                                   "wordings (DIR/<style>.jsonl, one query a line: text, scene, "
                                   "pose_w, cell_id, style, facts), for evaluation with "
                                   "'spatialoc eval --queries'.")
    p.add_argument("--data", required=True, metavar="DIR", help="KITTI360Pose folder")
    p.add_argument("--split", required=True, choices=SPLIT_NAMES,
                   help="split whose queries are reworded")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--styles", default=",".join(PARAPHRASE_STYLES), metavar="S1,S2",
                   help=f"comma-separated styles (default: all: {', '.join(PARAPHRASE_STYLES)})")
    p.add_argument("--max", type=int, default=900, metavar="N",
                   help="queries sampled with --seed (default: 900; 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--train-words", action="store_true",
                   help="use the training family of frames and synonyms instead of the "
                        "held-out one")
    p.set_defaults(handler=_run_data_paraphrase)


def _run_data_synth(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise SpatialocError(f"--workers must be at least 1, got {args.workers}")
    if args.ply_copies < 1 or (args.ply_copies > 1 and args.ply is None):
        raise SpatialocError("--ply-copies is at least 1 and needs --ply")
    from .data import synth

    summary = synth.synthesize(args.preset, args.seed, args.out, workers=args.workers,
                               progress=not args.quiet, ply_dir=args.ply,
                               ply_copies=args.ply_copies, scenes=args.scenes)
    print(_format_synth_summary(summary, args.out))
    return EXIT_OK


def _format_synth_summary(summary: dict, out) -> str:
    """Per-split scenes / cells / poses of a generator summary, then where it was written.

    The generator reports ``{"scenes": {scene: {"cells": n, "poses": n, ...}}, "seconds": s}``;
    scenes are grouped into the benchmark splits by their drive names.
    """
    from .data.stats import ALL, format_table, split_of, split_order

    scenes = summary.get("scenes") if isinstance(summary, dict) else None
    if not isinstance(scenes, dict):
        return f"{json.dumps(summary, default=str)}\nwrote {out}"
    totals = {}
    for scene, s in scenes.items():
        for key in (split_of(scene), ALL):
            row = totals.setdefault(key, {"scenes": 0, "cells": 0, "poses": 0})
            row["scenes"] += 1
            row["cells"] += int(s.get("cells", 0))
            row["poses"] += int(s.get("poses", 0))
    keys = split_order(k for k in totals if k != ALL) + [ALL]
    rows = [[k, totals[k]["scenes"], totals[k]["cells"], totals[k]["poses"]]
            for k in keys if k in totals]
    lines = [format_table(["split", "scenes", "cells", "poses"], rows)]
    seconds = summary.get("seconds")
    took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    lines.append(f"wrote {out}{took}")
    return "\n".join(lines)


def _run_data_stats(args) -> int:
    from .data.stats import collect_stats, format_stats

    stats = collect_stats(args.dir, split=args.split, sample=args.sample, seed=args.seed)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return EXIT_OK


def _run_data_show(args) -> int:
    from .data.show import show_scene

    if args.cells is not None and args.cells < 1:
        raise SpatialocError(f"--cells must be at least 1, got {args.cells}")
    path = show_scene(args.dir, args.scene, args.out, max_cells=args.cells)
    print(path)
    return EXIT_OK


def _run_data_paraphrase(args) -> int:
    from .data.paraphrase import write_query_sets

    written = write_query_sets(args.data, args.split, args.out, args.styles.split(","),
                               max_queries=args.max, seed=args.seed,
                               held_out=not args.train_words)
    for path, count in written:
        print(f"{path}: {count} queries")
    return EXIT_OK


# --------------------------------------------------------------------------- dispatcher

# Top-level commands in help order: a registration function, or "module:function"
# naming one in a module of its own (imported while the parser is built).
COMMANDS: List[Union[Registrar, str]] = [
    _add_data_command,
    ".commands.train:add_train_command",
    ".commands.evaluate:add_eval_command",
    ".commands.localize:add_localize_command",
    ".commands.bench:add_bench_command",
    ".commands.map:add_map_command",
    ".commands.speech:add_speech_commands",
]


def _resolve(entry: Union[Registrar, str]) -> Registrar:
    if callable(entry):
        return entry
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module, package=__package__), name)


def build_parser() -> argparse.ArgumentParser:
    """The full ``spatialoc`` parser with every registered command."""
    parser = argparse.ArgumentParser(prog=PROG, description="SpatiaLoc: localize a pose in a 3-D "
                                     "object map from a text description.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for entry in COMMANDS:
        _resolve(entry)(commands)
    return parser


def _error(message: str) -> int:
    """Print one ``spatialoc: error:`` line (newlines folded) and return the error status."""
    text = " ".join(str(message).split()) or "unknown error"
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return EXIT_ERROR


def _os_error_message(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


class _StderrLog(logging.Handler):
    """Log records as ``spatialoc: message`` lines on the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{PROG}: {' '.join(record.getMessage().split())}", file=sys.stderr)


def _log_to_stderr() -> None:
    """The package's log lines (a cache rebuilt, a damaged cache file) on stderr, once per
    process."""
    logger = logging.getLogger("spatialoc_ros")
    if not any(isinstance(h, _StderrLog) for h in logger.handlers):
        logger.addHandler(_StderrLog())
        logger.setLevel(logging.INFO)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``spatialoc`` command line; returns the exit status instead of exiting."""
    _log_to_stderr()
    tune_allocator()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed by argparse
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    try:
        return int(args.handler(args) or EXIT_OK)
    except SpatialocError as e:
        return _error(str(e))
    except OSError as e:  # a missing or unreadable file, a full disk: one line
        return _error(_os_error_message(e))
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
