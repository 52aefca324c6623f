"""``spatialoc bench``: argument wiring; the measuring is in spatialoc_ros.evaluation.bench."""
from __future__ import annotations

import json
from pathlib import Path

DEFAULT_MAPS = ("data/demo_map", "data/benchmark")


def add_bench_command(commands) -> None:
    p = commands.add_parser("bench", help="latency, throughput and memory figures",
                            description="Per-query latency of each stage (median, 95th "
                                        "percentile) on the bundled demo map and, when it is "
                                        "there, the benchmark's test gallery; gallery build "
                                        "time; peak memory.")
    p.add_argument("--map", nargs="+", default=None, metavar="DIR",
                   help=f"maps to measure (default: those of {', '.join(DEFAULT_MAPS)} that "
                        "exist; the benchmark is measured on its test scenes)")
    p.add_argument("--weights", default="models", metavar="DIR")
    p.add_argument("--queries", type=int, default=100, metavar="N",
                   help="held-out descriptions per map")
    p.add_argument("--texts", default=None, metavar="FILE.jsonl",
                   help="time these descriptions ({\"text\"} per line, e.g. a set written by "
                        "`spatialoc data paraphrase`) instead of the map's own")
    p.add_argument("--top-k", type=int, default=10, metavar="K")
    p.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                   help="all: the CPU, and CUDA too when a GPU is present")
    p.add_argument("--rebuild", action="store_true",
                   help="also time building the benchmark's gallery from scratch (always done "
                        "for other maps)")
    p.add_argument("--no-dds", action="store_true",
                   help="skip the query-to-pose latency over DDS (a localizer node process on "
                        "the first map's validation scene 0010, queried from this process)")
    p.add_argument("--params-file", default="config/localize.yaml",
                   help="node parameters for the DDS measure")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    scale = p.add_argument_group("scale (a gallery grown with distractor cells of other cities)")
    scale.add_argument("--scale", type=int, nargs="+", default=None, metavar="N",
                       help="answer the benchmark's test queries against its test gallery grown "
                            "to N cells (several N: one row each); the distractor cells are "
                            "generated and encoded the first time (cached)")
    scale.add_argument("--data", default="data/benchmark", metavar="DIR",
                       help="the benchmark folder for --scale")
    scale.add_argument("--retriever", choices=("two-stage", "exhaustive"), default="two-stage",
                       help="--scale: the retriever under test (exhaustive is the reference)")
    scale.add_argument("--shortlist", type=int, default=256, metavar="S",
                       help="--scale, two-stage: cells reranked exactly per query")
    scale.add_argument("--index", choices=("auto", "flat", "pca-sq8", "hnsw", "ivf"),
                       default="auto",
                       help="--scale, two-stage: the faiss index of the shortlist")
    scale.add_argument("--distinct", type=int, default=None, metavar="D",
                       help="--scale: at most D distinct cells; rows beyond repeat the "
                            "distractor rows (query time, memory and index build of N cells; "
                            "recall only up to D)")
    scale.add_argument("--frames", choices=("city", "separate"), default="city",
                       help="--scale: lay the scenes out as districts of one frame, as a city "
                            "map is (city, default: an answer in another scene has an error), "
                            "or keep a frame per scene (separate: it is outside every ellipse)")
    scale.add_argument("--plot", default=None, metavar="FILE.png",
                       help="--scale: draw recall against gallery size")
    p.set_defaults(handler=_run_bench)


def _run_bench(args) -> int:
    from ..data.constants import SPLITS
    from ..errors import SpatialocError
    from ..evaluation.bench import bench_map, cpu_report, format_bench, format_cpu, peak_rss_mb

    if args.scale:
        return _run_scale(args)
    maps = args.map or [m for m in DEFAULT_MAPS if Path(m).is_dir()]
    if not maps:
        raise SpatialocError("no map to measure: run `make demo` (bundled demo map) or pass "
                             "--map DIR")
    if args.queries < 1 or args.top_k < 1:
        raise SpatialocError("--queries and --top-k must be at least 1")
    import torch

    texts = _read_texts(args.texts) if args.texts else None
    devices = ([args.device] if args.device != "all"
               else ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    reports = []
    for device in devices:
        for m in maps:
            benchmark = Path(m).resolve() == Path("data/benchmark").resolve()
            scenes = list(SPLITS["test"]) if benchmark else None
            reports.append(bench_map(m, args.weights, scenes=scenes, queries=args.queries,
                                     top_k=args.top_k, device=device,
                                     rebuild=args.rebuild or not benchmark,
                                     progress=not args.json, texts=texts))
    result = {"device": reports[0]["device"], "maps": reports, "peak_rss_mb": peak_rss_mb(),
              "cpu": cpu_report()}
    # the first map's figures also at the top level (the documented JSON shape)
    for key in ("gallery_cells", "top_k", "end_to_end_ms", "language_ms", "text_ms", "coarse_ms",
                "fine_ms"):
        result[key] = reports[0][key]
    for key in ("gallery_build_s", "gallery_cells_per_s", "gallery_load_s"):
        if key in reports[0]:
            result[key] = reports[0][key]
    dds_scene = SPLITS["val"][0]  # held out from training
    val_scene = Path(maps[0]) / "cells" / f"{dds_scene}.pkl"
    if not args.no_dds and val_scene.is_file():
        try:
            from ..ros.demo import measure_dds_latency
        except ImportError as exc:  # no rclpy here: the in-process figures stand alone
            result["dds_query_to_pose_ms"] = {"skipped": f"ROS 2 is not importable ({exc})"}
        else:
            try:
                result["dds_query_to_pose_ms"] = measure_dds_latency(maps[0], args.weights,
                                                                     dds_scene, args.params_file)
            except RuntimeError as exc:
                raise SpatialocError(str(exc)) from None
    if args.json:
        print(json.dumps(result))
    else:
        print("\n\n".join(format_bench(r) for r in reports))
        print(f"\npeak resident memory: {result['peak_rss_mb']:.0f} MB")
        print(format_cpu(result["cpu"]))
        dds = result.get("dds_query_to_pose_ms", {})
        if "median" in dds:
            print(f"query to pose over DDS ({dds['map']}, scene {dds['scene']}, node in its own "
                  f"process): median {dds['median']:.1f} ms, p95 {dds['p95']:.1f} ms over "
                  f"{dds['n']} queries")
    return 0


def _read_texts(path) -> list:
    """The ``"text"`` of every line of a JSONL file."""
    from ..errors import SpatialocError

    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        texts = [json.loads(ln)["text"] for ln in lines]
    except OSError as exc:
        raise SpatialocError(f"{path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SpatialocError(f"{path}: not a JSONL file of {{\"text\"}} lines ({exc})") from None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise SpatialocError(f"{path}: no text lines")
    return texts


def _run_scale(args) -> int:
    from ..errors import SpatialocError
    from ..evaluation.bench import cpu_report, format_cpu
    from ..evaluation.scale import bench_scales, format_scale, plot_scale

    if not Path(args.data, "cells").is_dir():
        raise SpatialocError(f"--scale needs the benchmark in {args.data}: run `spatialoc data "
                             f"synth --preset benchmark --seed 0 --out {args.data}`")
    device = "cpu" if args.device == "all" else args.device
    rows = bench_scales(args.scale, data=args.data, weights=args.weights, queries=args.queries,
                        top_k=args.top_k, retriever=args.retriever, shortlist=args.shortlist,
                        index=args.index, device=device, progress=not args.json,
                        distinct=args.distinct, frames=args.frames)
    if args.plot:
        plot_scale(rows, args.plot)
    cpu = cpu_report()
    if args.json:
        print(json.dumps({"device": device, "cpu": cpu, "scale": rows[-1], "scales": rows}))
    else:
        print(format_scale(rows))
        print(format_cpu(cpu))
        if args.plot:
            print(f"wrote {args.plot}")
    return 0
