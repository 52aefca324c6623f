"""Constants of the KITTI360Pose benchmark (classes, colours, splits, generation).

Values follow the dataset's generation code (the Text2Pos release, Kolmet et al.,
CVPR 2022, arXiv 2203.15125; summarised in README.md, "Data" and "The synthetic
city"); coordinates are in metres in the KITTI-360
world frame (+x east, +y north) unless a name says "normalised".
"""
import numpy as np

# Class name -> (KITTI-360 semantic id, min points per scene object, voxel size in m or None).
# Row order is CLASS_TO_LABEL order of the original code: instance classes first, then stuff.
CLASSES = {
    "building": (11, 250, 0.25),
    "pole": (17, 25, None),
    "traffic light": (19, 25, None),
    "traffic sign": (20, 25, None),
    "garage": (34, 250, 0.125),
    "stop": (36, 25, None),
    "smallpole": (37, 25, None),
    "lamp": (38, 25, None),
    "trash bin": (39, 25, None),
    "vending machine": (40, 25, None),
    "box": (41, 25, None),
    "road": (7, 1000, 0.25),
    "sidewalk": (8, 1000, 0.25),
    "parking": (9, 1000, 0.25),
    "wall": (12, 250, 0.125),
    "fence": (13, 250, 0.125),
    "guard rail": (14, 250, 0.125),
    "bridge": (15, 1000, 0.25),
    "tunnel": (16, 1000, 0.25),
    "vegetation": (21, 250, 0.25),
    "terrain": (22, 250, 0.25),
}
CLASS_NAMES = list(CLASSES)
PAD_LABEL = "pad"
CLASS_TO_INDEX = {name: i for i, name in enumerate(CLASS_NAMES + [PAD_LABEL])}

STUFF_CLASSES = frozenset(
    ["sidewalk", "road", "parking", "wall", "fence", "guard rail", "bridge", "tunnel",
     "vegetation", "terrain"]
)
INSTANCE_CLASSES = frozenset(c for c in CLASS_NAMES if c not in STUFF_CLASSES)

# Colour centres (0-255) and their names; "gray" occurs twice, as in the original list.
COLOR_NAMES = ["dark-green", "gray", "gray-green", "bright-gray", "gray", "black", "green",
               "beige"]
COLOR_CENTERS = (
    np.array(
        [
            [47.2579917, 49.75368454, 42.4153065],
            [136.32696657, 136.95241796, 126.02741229],
            [87.49822126, 91.69058836, 80.14558512],
            [213.91030679, 216.25033052, 207.24611073],
            [110.39218852, 112.91977458, 103.68638249],
            [27.47505158, 28.43996795, 25.16840296],
            [66.65951839, 70.22342483, 60.20395996],
            [171.00852191, 170.05737735, 155.00130334],
        ]
    )
    / 255.0
)
DIRECTIONS = ["north", "south", "east", "west", "on-top"]

# Scenes and splits (full KITTI-360 drive names).
TRAIN_SCENES = [
    "2013_05_28_drive_0000_sync",
    "2013_05_28_drive_0002_sync",
    "2013_05_28_drive_0004_sync",
    "2013_05_28_drive_0006_sync",
    "2013_05_28_drive_0007_sync",
]
VAL_SCENES = ["2013_05_28_drive_0010_sync"]
TEST_SCENES = [
    "2013_05_28_drive_0003_sync",
    "2013_05_28_drive_0005_sync",
    "2013_05_28_drive_0009_sync",
]
SPLITS = {"train": TRAIN_SCENES, "val": VAL_SCENES, "test": TEST_SCENES}
ALL_SCENES = sorted(TRAIN_SCENES + VAL_SCENES + TEST_SCENES)
MIN_CELLS_PER_SPLIT = 10

# Generation constants (README.md, "The synthetic city").
CELL_SIZE = 30.0
CELL_DIST = 10.0
POSE_DIST = 10.0
POSE_HEIGHT = 1.7  # m above the road: the height of the drive's poses, and of cell centres
POSE_COUNT = 4
POSE_SHIFT_SCALE = CELL_SIZE / 2.1  # shifts of 0..14 m towards +x and +y
NUM_MENTIONED = 6
MAX_HINT_DIST = 0.5  # candidate radius, cell-normalised (15 m)
ON_TOP_DIST = 0.05  # 1.5 m
INSIDE_FRACTION = 1.0 / 3.0
STUFF_MIN_POINTS = 250
DBSCAN_EPS = 0.75
DBSCAN_MIN_SAMPLES = 5
MATCH_TOLERANCE = float(np.sqrt(2.0) / 2.0)
SEED = 4096
DESCRIBE_STRATEGIES = ("closest", "class", "direction")


def scene_short_name(scene: str) -> str:
    """'2013_05_28_drive_0003_sync' -> '0003' (the 5th '_'-separated field)."""
    parts = scene.split("_")
    if len(parts) != 6:
        raise ValueError(f"scene name {scene!r} is not a KITTI-360 drive name")
    return parts[4]
