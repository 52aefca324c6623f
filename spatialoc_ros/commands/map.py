"""``spatialoc map build`` and ``map import``: argument wiring; the procedures are in
spatialoc_ros.data.map_build and spatialoc_ros.data.map_import."""
from __future__ import annotations

import json


def add_map_command(commands) -> None:
    p = commands.add_parser("map", help="build a localization map from labelled point clouds",
                            description="Maps from your own data.")
    sub = p.add_subparsers(dest="map_command", metavar="{build,import}")
    sub.required = True
    b = sub.add_parser("build", help="cut labelled PLY/PCD clouds into a map folder",
                       description="Read labelled PLY/PCD clouds (several windows of one area "
                                   "are merged), cut them into 30 m cells on a 10 m grid as the "
                                   "benchmark is cut, and write a map folder that localize "
                                   "--map, eval --map and the node's map_path load.")
    b.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".ply or .pcd files, or folders of them")
    b.add_argument("--out", required=True, metavar="DIR", help="map folder to write")
    b.add_argument("--labels", default="kitti360", metavar="kitti360|FILE.yaml",
                   help="label mapping: KITTI-360's semantic PLY (default) or a YAML file "
                        "naming the fields and mapping class values (README, 'Your own map')")
    b.add_argument("--frame-id", default="map", metavar="F",
                   help="frame the map's positions are published in (default: map)")
    b.add_argument("--origin", nargs=3, type=float, default=(0.0, 0.0, 0.0),
                   metavar=("X", "Y", "Z"),
                   help="added to every input coordinate: positions come out in the input's "
                        "coordinates plus this (default: 0 0 0)")
    b.add_argument("--trajectory", default=None, metavar="FILE",
                   help="the drive that recorded the cloud (KITTI-360's poses.txt, or x y z "
                        "lines): cells are placed along it as the benchmark places them; "
                        "default: over all the ground a person can stand on")
    b.add_argument("--no-downsample", action="store_true",
                   help="keep every point instead of voxel-downsampling objects as the "
                        "benchmark does (for clouds already at the benchmark's density, such as "
                        "'data synth --ply' scenes)")
    b.add_argument("--name", default="map",
                   help="names the cells (<name>_<number>) and the map's cache files")
    b.add_argument("--force", action="store_true", help="replace --out if it is a map folder")
    b.add_argument("--json", action="store_true", help="print the map's metadata as JSON")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(handler=_run_build)
    i = sub.add_parser("import", help="write one KITTI360Pose scene as a map folder",
                       description="Write one scene of a KITTI360Pose folder (cells/<scene>.pkl) "
                                   "as a map folder with the same cells: served a cell at a "
                                   "time from a memory-mapped file instead of read whole at "
                                   "start, and from a memory-mapped store above 20,000 cells.")
    i.add_argument("folder", metavar="KITTI360POSE_DIR", help="folder with cells/<scene>.pkl")
    i.add_argument("--scene", required=True, metavar="SCENE",
                   help="the scene, full or 4-digit short name (e.g. 0003)")
    i.add_argument("--out", required=True, metavar="DIR", help="map folder to write")
    i.add_argument("--name", default=None,
                   help="names the cells (<name>_<number>) and the map's cache files "
                        "(default: scene_<short name>)")
    i.add_argument("--frame-id", default="map", metavar="F",
                   help="frame the map's positions are published in (default: map)")
    i.add_argument("--force", action="store_true", help="replace --out if it is a map folder")
    i.add_argument("--json", action="store_true", help="print the map's metadata as JSON")
    i.set_defaults(handler=_run_import)


def _run_build(args) -> int:
    from ..data.map_build import build_map

    meta = build_map(args.inputs, args.out, labels=args.labels, frame_id=args.frame_id,
                     origin=args.origin, name=args.name, trajectory=args.trajectory,
                     force=args.force, downsample=not args.no_downsample,
                     progress=not args.quiet)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    counts, seconds = meta["counts"], meta["seconds"]
    rate = counts["points"] / max(seconds["read"], 1e-9)
    print(f"read {counts['points']:,} points from {len(meta['sources'])} file(s) in "
          f"{seconds['read']:.1f} s ({rate:,.0f} points/s): {counts['objects']:,} objects")
    print(f"cut {counts['cells']:,} cells from {counts['cell_centres']:,} centres in "
          f"{seconds['cells']:.1f} s ({counts['cells'] / max(seconds['cells'], 1e-9):.1f} "
          "cells/s)")
    print(f"wrote {args.out} (frame {meta['frame_id']}) in {seconds['total']:.1f} s")
    return 0


def _run_import(args) -> int:
    from ..data.map_import import import_kitti_scene

    meta = import_kitti_scene(args.folder, args.scene, args.out, name=args.name,
                              frame_id=args.frame_id, force=args.force)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    counts = meta["counts"]
    print(f"wrote {args.out}: {counts['cells']:,} cells, {counts['objects']:,} objects, "
          f"{counts['points']:,} points of {meta['sources'][0]['kitti360pose_scene']} "
          f"(map {meta['name']}, frame {meta['frame_id']}) in {meta['seconds']['total']:.1f} s")
    return 0
