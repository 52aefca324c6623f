"""``spatialoc localize``: one description, no ROS; the work is in spatialoc_ros.inference."""
from __future__ import annotations

import json
import math


def add_localize_command(commands) -> None:
    p = commands.add_parser("localize", help="localize one description in a map (no ROS)",
                            description="Retrieve the top-k cells of a map for a description, "
                                        "refine each with the fine stage and print the "
                                        "hypotheses, best first, with their covariances.")
    p.add_argument("--map", required=True, metavar="DIR", help="map folder: KITTI360Pose or built")
    p.add_argument("--text", required=True,
                   help='the description, e.g. "The pose is north of a gray building."')
    p.add_argument("--weights", default="models", metavar="DIR",
                   help="folder with pointnet.*, coarse.*, fine.*")
    p.add_argument("--scenes", nargs="+", default=None, metavar="SCENE",
                   help="only these scenes of the map")
    p.add_argument("--top-k", type=int, default=10, metavar="K")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="cache folder (default MAP/.spatialoc_cache)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--explain", action="store_true",
                   help="print each clause with the hint it became, or why it was left out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_localize)


def _run_localize(args) -> int:
    from ..errors import SpatialocError
    from ..inference import Localizer
    from ..core.query_text import check_text

    if args.top_k < 1:
        raise SpatialocError(f"--top-k must be at least 1, got {args.top_k}")
    check_text(args.text)  # a bad query is refused before the map and the models are loaded
    loc = Localizer(args.map, args.weights, scenes=args.scenes, device=args.device,
                    cache=args.cache, top_k=args.top_k, progress=not args.json)
    result = loc.localize(args.text)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    if args.explain and result.understanding is not None:
        print("understood:")
        print(result.understanding.explain())
    print(format_localization(result))
    return 0


def format_localization(result) -> str:
    """The hypotheses as a small table, then the published position and timing."""
    best = result.best
    lines = [f"{result.recognised_hints} hints understood (share {result.understood:.2f}; "
             "--explain shows each clause)",
             f"{'rank':>4}  {'cell':<12} {'score':>7}  {'x':>10} {'y':>10} {'z':>7}  "
             f"{'sigma m':>8}  {'cells':>5}  {'p':>5}"]
    for h in result.hypotheses:
        p = "-" if math.isnan(h.probability) else f"{h.probability:.2f}"
        lines.append(f"{h.rank + 1:>4}  {h.cell_id:<12} {h.score:7.2f}  {h.position[0]:10.1f} "
                     f"{h.position[1]:10.1f} {h.position[2]:7.1f}  "
                     f"{h.covariance_xy[0, 0] ** 0.5:8.1f}  {h.agreeing:>5}  {p:>5}")
    t = result.timing_ms
    lines.append(f"position: x {best.position[0]:.1f} m, y {best.position[1]:.1f} m, "
                 f"z {best.position[2]:.1f} m ± {result.sigma_m:.1f} m (1 sigma, with the "
                 "retrieval's doubt)")
    if not math.isnan(result.probability):
        lines.append(f"probability within 10 m of the truth: {result.probability:.2f}")
    lines.append("time: " + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items()))
    return "\n".join(lines)
