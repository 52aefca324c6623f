"""What the fields of a labelled point cloud mean: the label mapping of ``spatialoc map build``.

A mapping names the cloud's class and instance fields, turns each class value
into one of the 21 benchmark classes (or ``ignore``) and says which classes are
*stuff* (cropped to each cell and split by clustering; their instance field is
not used) and which are *instances* (kept whole). ``kitti360`` is KITTI-360's
own label list (its ``semantic`` field holds the label id and ``instance`` the
global instance id, ``semantic * 1000 + k``); anything else is a YAML file:

.. code-block:: yaml

    fields:                  # optional; these are the defaults
      class: semantic
      instance: instance
      color: [red, green, blue]   # or one packed field, e.g. rgb (PCD)
    classes:                 # class value in the cloud -> class name or ignore
      1: road
      2: sidewalk
      10: building
      11: ignore
    stuff: [road, sidewalk]  # optional; default: the benchmark's stuff classes
    unlisted: warn           # optional: warn (default; counted, then ignored) or ignore

README.md, "Your own map", shows a complete file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Optional, Sequence, Tuple

from ..errors import DataError
from . import constants as C

IGNORE = "ignore"
KITTI360 = "kitti360"

# KITTI-360's label ids (kitti360scripts' labels.py) that name none of the 21 classes:
# unlabelled, ego vehicle, borders, ground, rail track, pole group, sky, people, vehicles,
# gate and the "unknown" classes. They are dropped without a warning.
KITTI360_OTHER_IDS = frozenset([-1, 0, 1, 2, 3, 4, 5, 6, 10, 18, 23, 24, 25, 26, 27, 28, 29, 30,
                                31, 32, 33, 35, 42, 43, 44])


@dataclass(frozen=True)
class LabelMap:
    """How to read classes, instances and colours from a cloud's fields."""

    class_field: str = "semantic"
    instance_field: str = "instance"
    color_fields: Tuple[str, ...] = ("red", "green", "blue")  # one name = packed 0x00RRGGBB
    classes: Dict[int, str] = field(default_factory=dict)  # value -> class name or IGNORE
    stuff: FrozenSet[str] = C.STUFF_CLASSES
    warn_unlisted: bool = True
    source: str = KITTI360  # "kitti360" or the YAML file it was read from

    def class_index(self, value: int) -> Optional[int]:
        """Index into :data:`constants.CLASS_NAMES`; None for ignored or unlisted values."""
        name = self.classes.get(int(value))
        return None if name is None or name == IGNORE else C.CLASS_NAMES.index(name)

    def to_dict(self) -> dict:
        """What the map's metadata records of the mapping."""
        return {"source": self.source, "class_field": self.class_field,
                "instance_field": self.instance_field, "color_fields": list(self.color_fields),
                "classes": {str(k): v for k, v in sorted(self.classes.items())},
                "stuff": sorted(self.stuff)}


def kitti360_labels() -> LabelMap:
    """KITTI-360's accumulated semantic PLY: ``semantic`` label ids, ``instance`` global ids."""
    classes = {sem_id: name for name, (sem_id, _, _) in C.CLASSES.items()}
    classes.update({i: IGNORE for i in KITTI360_OTHER_IDS})
    return LabelMap(classes=classes)


def _class_name(value, path) -> str:
    """A class name of the file (spaces or underscores, any case) -> the benchmark's name."""
    text = " ".join(str(value).replace("_", " ").replace("-", " ").lower().split())
    if text == IGNORE:
        return IGNORE
    names = {n.replace("-", " "): n for n in C.CLASS_NAMES}
    if text not in names:
        raise DataError(f"{path}: unknown class {value!r}; use one of "
                        f"{', '.join(C.CLASS_NAMES)} or {IGNORE}")
    return names[text]


def read_label_file(path) -> LabelMap:
    """A :class:`LabelMap` from a YAML file (format in the module docstring)."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not YAML ({' '.join(str(exc).split())})") from None
    except UnicodeDecodeError:  # a binary file, e.g. a cloud given as --labels
        raise DataError(f"{path}: not YAML (not UTF-8 text)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), dict) or not doc["classes"]:
        raise DataError(f"{path}: a label file needs a 'classes' mapping (class value -> class "
                        "name or ignore)")
    fields = doc.get("fields") or {}
    if not isinstance(fields, dict):
        raise DataError(f"{path}: 'fields' must be a mapping")
    classes = {}
    for key, value in doc["classes"].items():
        try:
            classes[int(key)] = _class_name(value, path)
        except (TypeError, ValueError):
            raise DataError(f"{path}: class value {key!r} is not an integer") from None
    stuff = doc.get("stuff")
    if stuff is None:
        stuff_set = C.STUFF_CLASSES
    elif isinstance(stuff, list):
        stuff_set = frozenset(_class_name(s, path) for s in stuff) - {IGNORE}
    else:
        raise DataError(f"{path}: 'stuff' must be a list of class names")
    color = fields.get("color", ["red", "green", "blue"])
    color = (color,) if isinstance(color, str) else tuple(str(c) for c in color)
    if len(color) not in (1, 3):
        raise DataError(f"{path}: 'fields: color' is three field names or one packed field")
    unlisted = str(doc.get("unlisted", "warn"))
    if unlisted not in ("warn", "ignore"):
        raise DataError(f"{path}: 'unlisted' is warn or ignore, not {unlisted!r}")
    return LabelMap(class_field=str(fields.get("class", "semantic")),
                    instance_field=str(fields.get("instance", "instance")),
                    color_fields=color, classes=classes, stuff=stuff_set,
                    warn_unlisted=unlisted == "warn", source=str(path))


def label_map(spec: Optional[str]) -> LabelMap:
    """``None`` or ``"kitti360"``: KITTI-360's labels; else a YAML file."""
    return kitti360_labels() if spec in (None, KITTI360) else read_label_file(spec)


def describe_fields(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"
