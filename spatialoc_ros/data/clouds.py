"""Reading labelled point clouds (PLY, PCD) in chunks, for ``spatialoc map build``.

plyfile reads PLY (binary files are memory-mapped, so a cloud of tens of
millions of points is read a chunk at a time) and pypcd4 reads PCD. Before
either reads data, the header's point count is checked against the file's size,
so a header that claims more points than the file holds is one clear error, not
a huge allocation. Each chunk comes out as world coordinates (float64), colours
in [0, 1], a benchmark class index (-1: ignored) and an instance id; points with
NaN or infinite coordinates are dropped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import struct

import numpy as np

from ..errors import DataError
from .labels import LabelMap, describe_fields

CLOUD_SUFFIXES = (".ply", ".pcd")
CHUNK_POINTS = 2_000_000
_HEADER_LIMIT = 1 << 20  # bytes; a longer header is not a point cloud
_PLY_SIZES = {"char": 1, "int8": 1, "uchar": 1, "uint8": 1, "short": 2, "int16": 2,
              "ushort": 2, "uint16": 2, "int": 4, "int32": 4, "uint": 4, "uint32": 4,
              "float": 4, "float32": 4, "double": 8, "float64": 8}
_LZF_MAX_RATIO = 100  # an LZF-compressed PCD cannot expand further than this


@dataclass
class CloudChunk:
    xyz: np.ndarray  # float64 [n, 3], world metres (before the map's origin)
    rgb: np.ndarray  # float32 [n, 3] in [0, 1]
    cls: np.ndarray  # int16 [n]: index into constants.CLASS_NAMES
    instance: np.ndarray  # int64 [n]


@dataclass
class ReadCounts:
    """What reading dropped, for the build's report and warnings."""

    points: int = 0
    non_finite: int = 0
    ignored: int = 0
    unlisted: Dict[int, int] = field(default_factory=dict)  # class value -> points

    def add_unlisted(self, values: np.ndarray) -> None:
        keys, counts = np.unique(values, return_counts=True)
        for k, c in zip(keys.tolist(), counts.tolist()):
            self.unlisted[int(k)] = self.unlisted.get(int(k), 0) + int(c)


def find_clouds(inputs) -> List[Path]:
    """The PLY/PCD files named, and those inside named folders (recursively), sorted; a file
    named twice (itself and in its folder) is read once."""
    files: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in CLOUD_SUFFIXES
                           and f.is_file())
            if not found:
                raise DataError(f"{p}: no .ply or .pcd file in this folder")
            files.extend(found)
        elif p.is_file():
            if p.suffix.lower() not in CLOUD_SUFFIXES:
                raise DataError(f"{p}: not a .ply or .pcd file")
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    unique, seen = [], set()
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def _read_header(path: Path) -> Tuple[List[str], int]:
    """The header lines up to the end marker and the byte offset of the data."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_LIMIT)
    if not head:
        raise DataError(f"{path}: empty file")
    marker = b"end_header" if path.suffix.lower() == ".ply" else b"\nDATA "
    at = head.find(marker)
    if at < 0:
        raise DataError(f"{path}: no complete header (truncated or not a "
                        f"{path.suffix[1:].upper()} file)")
    end = head.find(b"\n", at + len(marker))
    if end < 0:
        raise DataError(f"{path}: truncated header")
    lines = head[:end].decode("ascii", errors="replace").splitlines()
    return [ln.strip() for ln in lines if ln.strip()], end + 1


def _ply_check(path: Path) -> int:
    """Vertex count of a PLY after checking the file can hold it."""
    lines, offset = _read_header(path)
    if not lines or lines[0] != "ply":
        raise DataError(f"{path}: not a PLY file (no 'ply' magic line)")
    fmt = next((ln.split()[1] for ln in lines if ln.startswith("format ")), None)
    if fmt is None:
        raise DataError(f"{path}: PLY header has no format line")
    elements, current = [], None
    for ln in lines:
        words = ln.split()
        if words[0] == "element" and len(words) == 3:
            try:
                current = [words[1], int(words[2]), 0, 0]  # name, count, row bytes, properties
            except ValueError:
                raise DataError(f"{path}: bad element line {ln!r}") from None
            elements.append(current)
        elif words[0] == "property" and current is not None:
            current[3] += 1
            if words[1] == "list":
                current[2] = -1  # variable size: only the ascii bound applies
            elif current[2] >= 0:
                if words[1] not in _PLY_SIZES:
                    raise DataError(f"{path}: unknown PLY property type {words[1]!r}")
                current[2] += _PLY_SIZES[words[1]]
    vertex = next((e for e in elements if e[0] == "vertex"), None)
    if vertex is None:
        raise DataError(f"{path}: PLY has no vertex element")
    if vertex[1] < 0:
        raise DataError(f"{path}: negative vertex count")
    available = path.stat().st_size - offset
    _, count, row, props = vertex
    # ascii: a character and a separator per value, the last line's newline may be missing
    needed = 2 * max(props, 1) * count - 1 if fmt == "ascii" else max(row, 1) * count
    if needed > available:
        raise DataError(f"{path}: header claims {vertex[1]:,} points but the file holds at most "
                        f"{available:,} bytes of data (truncated file or wrong header)")
    return vertex[1]


def _pcd_check(path: Path) -> Tuple[int, str]:
    """Point count and DATA kind of a PCD after checking the file can hold them."""
    lines, offset = _read_header(path)
    header = {ln.split()[0].upper(): ln.split()[1:] for ln in lines if not ln.startswith("#")}
    try:
        points = int(header["POINTS"][0])
        sizes = [int(s) for s in header["SIZE"]]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(sizes))]
        data = header["DATA"][0].lower()
    except (KeyError, IndexError, ValueError):
        raise DataError(f"{path}: not a PCD header (POINTS, SIZE and DATA are needed)") from None
    available = path.stat().st_size - offset
    row = sum(s * c for s, c in zip(sizes, counts))
    needed = {"ascii": 2 * len(sizes) * points - 1, "binary": row * points}.get(
        data, row * points // _LZF_MAX_RATIO)
    if points < 0 or needed > available:
        raise DataError(f"{path}: header claims {points:,} points but the file holds at most "
                        f"{available:,} bytes of data (truncated file or wrong header)")
    if data == "binary_compressed" and points > 0:
        # the sizes pypcd4 allocates by: the data's own, which the header must agree with
        with open(path, "rb") as f:
            f.seek(offset)
            sizes = f.read(8)
        packed, unpacked = struct.unpack("<II", sizes) if len(sizes) == 8 else (-1, -1)
        if unpacked != row * points or not 0 <= packed <= available - 8:
            raise DataError(f"{path}: compressed data of {unpacked:,} bytes ({packed:,} "
                            f"stored) do not hold the header's {points:,} points of {row} "
                            "bytes (truncated file or wrong header)")
    return points, data


class CloudFile:
    """One PLY or PCD file: its fields, point count and chunked reading."""

    def __init__(self, path):
        self.path = Path(path)
        self._text = False  # an ASCII PCD: values were read as text (see _colors)
        suffix = self.path.suffix.lower()
        self._loaded = None
        if suffix == ".ply":
            self.num_points = _ply_check(self.path)
            self._loaded = self._open_ply()  # memory-mapped: nothing is read yet
            self.fields: Tuple[str, ...] = tuple(self._loaded.dtype.names or ())
        elif suffix == ".pcd":
            self.num_points, encoding = _pcd_check(self.path)
            self._text = encoding == "ascii"
            self.fields = self._pcd_fields()
        else:
            raise DataError(f"{self.path}: not a .ply or .pcd file")

    @property
    def _data(self):
        """The points (a PCD is read whole on first use and kept until :meth:`release`)."""
        if self._loaded is None:
            self._loaded = self._read_pcd_text() if self._text else self._open_pcd()
        return self._loaded

    def release(self) -> None:
        """Free a PCD's points once read (a PLY stays memory-mapped)."""
        if self.path.suffix.lower() == ".pcd":
            self._loaded = None

    def _pcd_fields(self) -> Tuple[str, ...]:
        from pypcd4 import MetaData

        lines, _ = _read_header(self.path)
        try:
            return tuple(MetaData.parse_header(lines).fields)
        except Exception as exc:  # pydantic's validation errors
            raise DataError(f"{self.path}: unreadable PCD header ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())})") from None

    def _open_ply(self):
        import plyfile

        try:
            ply = plyfile.PlyData.read(str(self.path), mmap=True)
            return ply["vertex"].data
        except (plyfile.PlyParseError, ValueError, KeyError) as exc:
            raise DataError(f"{self.path}: unreadable PLY ({' '.join(str(exc).split())})") \
                from None

    def _open_pcd(self):
        from pypcd4 import PointCloud

        try:
            return PointCloud.from_path(self.path).pc_data
        except Exception as exc:  # pypcd4 raises several kinds on bad data
            raise DataError(f"{self.path}: unreadable PCD ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())})") from None

    def _read_pcd_text(self):
        """An ASCII PCD with float fields as float64: PCL writes a packed ``rgb`` there as its
        unsigned integer, which pypcd4's float32 reading would round."""
        from pypcd4 import MetaData

        lines, offset = _read_header(self.path)
        try:
            dtype = MetaData.parse_header(lines).build_dtype()
            wide = np.dtype([(n, np.float64 if dtype[n].kind == "f" else dtype[n])
                             for n in dtype.names])
            if self.num_points == 0:
                return np.zeros(0, wide)
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = np.loadtxt(f, dtype=wide, ndmin=1)
        except Exception as exc:  # pydantic's and numpy's errors
            raise DataError(f"{self.path}: unreadable PCD ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())})") from None
        if len(data) != self.num_points:
            raise DataError(f"{self.path}: header claims {self.num_points:,} points but the "
                            f"file holds {len(data):,} (truncated file or wrong header)")
        return data

    def check_fields(self, labels: LabelMap) -> None:
        """One clear error naming the fields a mapping needs and this file lacks."""
        need = ["x", "y", "z", labels.class_field, *labels.color_fields]
        if not labels.stuff.issuperset(n for n in labels.classes.values() if n != "ignore"):
            need.append(labels.instance_field)
        missing = [n for n in need if n not in self.fields]
        if missing:
            raise DataError(f"{self.path}: no field {', '.join(map(repr, missing))} (the file "
                            f"has {describe_fields(self.fields)}); name the fields with "
                            "--labels FILE.yaml")

    def chunks(self, labels: LabelMap, counts: ReadCounts,
               chunk: Optional[int] = None) -> Iterator[CloudChunk]:
        """The file's usable points, ``chunk`` (default :data:`CHUNK_POINTS`) at a time;
        ``counts`` records what was dropped."""
        self.check_fields(labels)
        chunk = chunk or CHUNK_POINTS  # read now, not when the module was loaded
        lut_keys = np.array(sorted(labels.classes), dtype=np.int64)  # never empty
        lut_vals = np.array([-1 if i is None else i for i in map(labels.class_index, lut_keys)],
                            dtype=np.int16)
        for start in range(0, len(self._data), chunk):
            rows = self._data[start:start + chunk]
            counts.points += len(rows)
            xyz = np.stack([np.asarray(rows[a], dtype=np.float64) for a in "xyz"], axis=1)
            finite = np.isfinite(xyz).all(axis=1)
            counts.non_finite += int((~finite).sum())
            value = np.asarray(rows[labels.class_field]).astype(np.int64)
            slot = np.clip(np.searchsorted(lut_keys, value), 0, len(lut_keys) - 1)
            listed = lut_keys[slot] == value
            cls = np.where(listed, lut_vals[slot], -1).astype(np.int16)
            unlisted = finite & ~listed
            if unlisted.any():
                counts.add_unlisted(value[unlisted])
            counts.ignored += int((finite & listed & (cls < 0)).sum())
            keep = finite & (cls >= 0)
            if not keep.any():
                continue
            rows_kept = rows[keep] if not keep.all() else rows
            instance = (np.asarray(rows_kept[labels.instance_field]).astype(np.int64)
                        if labels.instance_field in self.fields
                        else np.zeros(int(keep.sum()), np.int64))
            yield CloudChunk(xyz[keep], _colors(rows_kept, labels.color_fields, self._text),
                             cls[keep], instance)


def _packed_bits(values: np.ndarray, text: bool) -> np.ndarray:
    """The 0x00RRGGBB bits of a packed colour field. A float field holds them as a float32's
    bits (PCL, in binary files); in an ASCII file PCL writes the unsigned integer instead,
    while others write the float, whose value is then below 1."""
    if values.dtype.kind != "f":
        return values.astype(np.uint32)
    bits = values.astype("<f4").view("<u4")
    if text:
        whole = np.isfinite(values) & ((values >= 1) | (values == 0))
        number = np.where(whole, values, 0).astype(np.uint64).astype(np.uint32)
        bits = np.where(whole, number, bits)
    return bits.astype(np.uint32)


def _colors(rows, names: Tuple[str, ...], text: bool = False) -> np.ndarray:
    """Colours in [0, 1] from three channels (integers 0-255, or floats) or one packed field
    (``text``: the file was ASCII)."""
    if len(names) == 1:
        packed = _packed_bits(np.asarray(rows[names[0]]), text)
        rgb = np.stack([(packed >> s) & 0xFF for s in (16, 8, 0)], axis=1).astype(np.float32)
        return rgb / 255.0
    rgb = np.stack([np.asarray(rows[n], dtype=np.float32) for n in names], axis=1)
    if np.issubdtype(np.asarray(rows[names[0]]).dtype, np.integer) or rgb.max(initial=0) > 1.0:
        rgb = rgb / 255.0
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def coordinate_precision(cloud: CloudFile) -> Optional[float]:
    """Spacing (m) of float32 coordinates at the cloud's largest magnitude; None for float64."""
    dtype = cloud._data.dtype["x"]
    if dtype.itemsize >= 8 or len(cloud._data) == 0:
        return None
    step = max(len(cloud._data) // 10_000, 1)
    sample = np.stack([np.asarray(cloud._data[a][::step], np.float64) for a in "xyz"])
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    return float(np.spacing(np.float32(np.abs(sample).max())))
