"""``spatialoc eval``: argument wiring; the protocol is in spatialoc_ros.evaluation."""
from __future__ import annotations

import json
from pathlib import Path


def add_eval_command(commands) -> None:
    p = commands.add_parser("eval", help="evaluate on a split or on a file of queries",
                            description="The papers' protocol: retrieval recall@1/3/5 of the "
                                        "ground-truth cell among all cells of the split and, "
                                        "with fine weights, localization recall (k = 1/5/10 "
                                        "within 5/10/15 m) and the calibration of the published "
                                        "covariance.")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="KITTI360Pose folder (required unless --reports)")
    p.add_argument("--map", default=None, metavar="DIR",
                   help="evaluate --queries against any map folder (a built map or a "
                        "KITTI360Pose folder) instead of a benchmark split")
    p.add_argument("--scenes", default=None, nargs="+", metavar="SCENE",
                   help="with --map on a KITTI360Pose folder: only these scenes")
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--weights", default=["models"], nargs="+", metavar="DIR",
                   help="folder(s) with pointnet.*, coarse.* and (for localization) fine.*; "
                        "several give one report each (a JSON list)")
    p.add_argument("--fit-calibration", action="store_true",
                   help="fit the covariance calibration on these queries (use --split val) and "
                        "write WEIGHTS/calibration.json")
    p.add_argument("--distractors", default=[], nargs="+", metavar="SCENE",
                   help="with --split val: add these (training) scenes' cells to the gallery as "
                        "wrong answers, e.g. to fit the calibration against a gallery as large as "
                        "the map it will serve")
    p.add_argument("--fit-probability", default=None, nargs="+", type=int, metavar="CELLS",
                   help="with --split val: fit the answer's probability of being within 10 m "
                        "(and the covariance's far term) on the validation queries with the "
                        "gallery grown to these sizes by distractor cells of other cities, e.g. "
                        "1194 4139 10000 30000; writes WEIGHTS/calibration.json")
    p.add_argument("--frames", choices=("city", "separate"), default="city",
                   help="with --fit-probability: lay the gallery's scenes out as districts of one "
                        "frame, as a robot's map is, so an answer in another scene has an error "
                        "the far term can hold (city, default), or keep a frame per scene "
                        "(separate: such an answer is outside every ellipse)")
    p.add_argument("--coverage", choices=("cautious", "balanced"), default="cautious",
                   help="with --fit-probability: when no covariance holds both 39.3 %% inside 1 "
                        "sigma and 86.5 %% inside 2, hold 86.5 %% inside 2 at every size with "
                        "the sharpest ellipses (cautious, default) or miss both by the least "
                        "(balanced: over-confident for the wrong answers)")
    p.add_argument("--retriever", choices=("auto", "two-stage", "exhaustive"), default="auto",
                   help="two-stage (faiss shortlist, exact fused rerank), exhaustive (the fused "
                        "score of every cell, the reference) or auto (as served: exhaustive up "
                        "to 2,048 cells, two-stage above)")
    p.add_argument("--cell-rows", choices=("auto", "memory", "store"), default="auto",
                   help="where the encoded cells are read from: memory, or a memory-mapped "
                        "store built in the cache the first time (float16 instance features); "
                        "auto (as served): memory up to 20,000 cells, the store above")
    p.add_argument("--reports", default=None, nargs="+", metavar="FILE.json",
                   help="tabulate (and --plot) reports saved from earlier '--json' runs instead "
                        "of evaluating")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw recall@k against k for each --weights folder (or --reports file)")
    p.add_argument("--queries", default=None, metavar="FILE.jsonl",
                   help='queries {"text", "scene", "pose_w"} to evaluate against the split\'s '
                        'gallery; with --map, {"text", "pose_w"} in the map\'s coordinates')
    p.add_argument("--show", type=int, default=0, metavar="N",
                   help="draw N queries (map, top-k cells, prediction with its ellipses, ground "
                        "truth)")
    p.add_argument("--out", default="out/eval", metavar="DIR",
                   help="folder of the --show pictures")
    p.add_argument("--order-sensitivity", type=int, default=0, metavar="N",
                   help="also measure on N validation queries (use --split val) how far the fine "
                        "stage's position moves when each cell's objects are shuffled, against "
                        "another cell")
    p.add_argument("--cache", default=None, metavar="DIR")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_run_eval)


def _run_eval(args) -> int:
    from ..errors import SpatialocError
    from ..evaluation.evaluate import evaluate, format_report, format_table, load_reports

    if args.reports:
        return _tabulate(load_reports(args.reports), args)
    if args.map is not None:
        return _run_eval_map(args)
    if args.data is None:
        raise SpatialocError("spatialoc eval needs --data DIR (or --reports FILE.json ... to "
                             "tabulate saved reports)")
    if args.fit_probability:
        return _run_fit_probability(args)
    if args.order_sensitivity and args.split != "val":
        raise SpatialocError("--order-sensitivity measures on validation queries: use --split val")
    reports = [evaluate(args.data, args.split, w, args.queries, cache=args.cache,
                        device=args.device, progress=not (args.quiet or args.json),
                        fit_calibration=args.fit_calibration, show=args.show,
                        show_dir=args.out, distractors=args.distractors,
                        retriever=args.retriever, cell_rows=args.cell_rows)
               for w in args.weights]
    if args.order_sensitivity:
        from ..evaluation.order_sensitivity import measure_order_sensitivity
        for w, r in zip(args.weights, reports):
            r["order_sensitivity"] = measure_order_sensitivity(args.data, w,
                                                               args.order_sensitivity,
                                                               cache=args.cache)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports))
    elif len(reports) == 1:
        print(format_report(reports[0]))
    else:
        print("\n".join(f"{w}\n{format_report(r)}" for w, r in zip(args.weights, reports)))
        print("\n" + format_table(reports, args.weights))
    for r in reports:
        if r.get("pictures") and not args.json:
            print(f"pictures: {r['pictures'][-1]} and {len(r['pictures']) - 1} more in {args.out}")
    _plot(reports, args.weights, args)
    return 0


def _run_fit_probability(args) -> int:
    from ..errors import SpatialocError
    from ..evaluation.confidence_fit import fit_probability_on_val, format_probability_report

    if args.split != "val" or args.queries or args.distractors or len(args.weights) != 1:
        raise SpatialocError("--fit-probability fits on the validation split: --split val, one "
                             "--weights folder, no --queries or --distractors")
    report = fit_probability_on_val(args.data, args.weights[0], args.fit_probability,
                                    cache=args.cache, progress=not (args.quiet or args.json),
                                    frames=args.frames, objective=args.coverage)
    print(json.dumps(report) if args.json else format_probability_report(report))
    return 0


def _run_eval_map(args) -> int:
    from ..errors import SpatialocError
    from ..evaluation.evaluate import evaluate_map, format_report

    if args.data is not None or args.queries is None:
        raise SpatialocError("eval --map takes --queries FILE.jsonl (and no --data)")
    if args.fit_calibration or args.distractors or args.order_sensitivity:
        raise SpatialocError("--fit-calibration, --distractors and --order-sensitivity run on "
                             "a benchmark split (--data), not on --map")
    reports = [evaluate_map(args.map, args.queries, w, scenes=args.scenes, cache=args.cache,
                            device=args.device, progress=not (args.quiet or args.json),
                            show=args.show, show_dir=args.out, cell_rows=args.cell_rows)
               for w in args.weights]
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports))
    else:
        print("\n".join(format_report(r) for r in reports))
    return 0


def _tabulate(reports, args) -> int:
    """The table (and plot) of saved reports, labelled by the weights each was computed with."""
    from ..evaluation.evaluate import format_table

    labels = [r.get("weights", f"report {i + 1}")
              + (f": {Path(r['queries']).stem}" if r.get("queries") else "")
              for i, r in enumerate(reports)]
    if args.json:
        print(json.dumps(reports))
    else:
        print(format_table(reports, labels))
    _plot(reports, labels, args)
    return 0


def _plot(reports, labels, args) -> None:
    if args.plot:
        from ..evaluation.plots import plot_recall_curves

        path = plot_recall_curves(reports, labels, args.plot)
        if not args.json:
            print(f"recall curves: {path}")
