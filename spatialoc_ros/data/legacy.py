"""Reading and writing the pickled classes of the original KITTI360Pose code, safely.

The dataset's ``cells/*.pkl`` and ``poses/*.pkl`` files are pickles of the
classes in the original ``datapreparation/kitti360pose/imports.py`` of the
Text2Pos code. Pickle runs whatever callable a file names,
so such files are untrusted input:

* :class:`RestrictedUnpickler` resolves only the globals in :data:`ALLOWED_GLOBALS`
  (the dataset's record classes, under both module paths the data has used, and
  numpy's array / scalar reconstruction); every other global is refused *before*
  it can be called. The record classes resolve to the plain stand-ins below,
  never to the original code, and the stand-ins accept nothing but an attribute
  dictionary.
* :func:`dumps_legacy` writes our stand-ins back under the original names, so
  the files load in the original Text2Pos / Text2Loc loaders unchanged, with
  numpy's globals under their numpy 1.x names (``numpy.core.multiarray``).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from types import FunctionType, MappingProxyType
from typing import Dict, Mapping, Tuple

import numpy as np

from ..errors import DataError

# Module paths of the record classes: the released data records the legacy
# package name, data regenerated with today's original code the renamed one.
LEGACY_MODULE = "datapreparation.kitti360.imports"
CURRENT_MODULE = "datapreparation.kitti360pose.imports"
READ_MODULES = (LEGACY_MODULE, CURRENT_MODULE)
WRITE_MODULE = CURRENT_MODULE
WRITE_PROTOCOL = 4


class LegacyRecord:
    """A plain attribute bag standing in for one of the original record classes.

    Unpickling creates it with ``object.__new__`` (no constructor runs) and then
    restores its attributes from a ``dict`` of ``str`` keys; any other kind of
    state is refused. It has no behaviour, so a file cannot make it do anything.
    """

    def __init__(self, **attrs):
        self.__dict__.update(attrs)

    def __setstate__(self, state):
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise pickle.UnpicklingError(
                f"{type(self).__name__}: state must be a dict of attributes, got "
                f"{type(state).__name__}"
            )
        self.__dict__.update(state)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(sorted(self.__dict__))})"


class Cell(LegacyRecord):
    """Stand-in for ``imports.Cell``: id, scene_name, objects, cell_size, bbox_w."""


class Object3d(LegacyRecord):
    """Stand-in for ``imports.Object3d``: id, instance_id, xyz, rgb, label."""


class Pose(LegacyRecord):
    """Stand-in for ``imports.Pose``: pose, pose_w, cell_id, descriptions, scene_name,
    described_by."""


class DescriptionBestCell(LegacyRecord):
    """Stand-in for ``imports.DescriptionBestCell`` (one hint grounded in the best cell)."""


class DescriptionPoseCell(LegacyRecord):
    """Stand-in for ``imports.DescriptionPoseCell`` (an intermediate that the release never
    contains)."""


RECORD_CLASSES = (Cell, Object3d, Pose, DescriptionBestCell, DescriptionPoseCell)

# numpy's reconstruction helpers, taken from numpy's own reduce output so that no
# private module has to be imported by name (their home moved from numpy.core to
# numpy._core in numpy 2).
_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # multiarray._reconstruct
_NP_SCALAR = np.float64(0.0).__reduce__()[0]  # multiarray.scalar
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numeric._frombuffer (protocol 5)


# --- narrow replacements for the few builtins that pickle protocols 0-2 name ----------


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` limited to creating an empty stand-in (protocols 0 and 1)."""
    if cls not in RECORD_CLASSES or base is not object or state is not None:
        raise pickle.UnpicklingError("copyreg._reconstructor: only empty dataset records may be "
                                     "created")
    return object.__new__(cls)


def _latin1_bytes(text, encoding):
    """``_codecs.encode`` limited to how protocols 0-2 store ``bytes``: ``encode(str,
    'latin1')``."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode: only encode(str, 'latin1') is allowed")
    return text.encode("latin1")


def _empty_bytes(*args):
    """``bytes()`` as protocols 0-2 use it for ``b''``; refuses arguments (no
    ``bytes(10**12)``)."""
    if args:
        raise pickle.UnpicklingError("bytes: only bytes() is allowed")
    return b""


def _record_globals() -> Dict[Tuple[str, str], object]:
    return {(module, cls.__name__): cls for module in READ_MODULES for cls in RECORD_CLASSES}


# The complete allow-list: (module, name) as written in the file -> what it resolves to.
# Read-only, so nothing can widen it at run time.
ALLOWED_GLOBALS: Mapping[Tuple[str, str], object] = MappingProxyType({
    **_record_globals(),
    # ndarrays: numpy 1.x names, numpy >= 2 names
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # numpy scalars (cell_size, instance ids)
    ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
    # contiguous ndarrays pickled with protocol 5
    ("numpy.core.numeric", "_frombuffer"): _NP_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NP_FROMBUFFER,
    # protocols 0-2 (Python 3 writes them with Python 2 module names)
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
})


def one_line(text: str, limit: int = 300) -> str:
    """First line of ``text``, shortened: error messages must stay one line."""
    lines = str(text).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves nothing outside :data:`ALLOWED_GLOBALS`.

    ``find_class`` is the only way a pickle can reach code (every GLOBAL,
    STACK_GLOBAL, INST and EXT opcode goes through it), so refusing here stops a
    hostile file before anything it names is called. ``source`` names the file
    in the error.
    """

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            shown = one_line(repr(f"{module}.{name}"), 120)
            raise DataError(f"{self.source}: refused to load: forbidden global {shown}")
        return target


def load_legacy(path) -> object:
    """Unpickle one dataset file with :class:`RestrictedUnpickler`.

    Every failure becomes a one-line :class:`DataError` that starts with the
    file name: missing file, forbidden global, truncated or corrupt data, and
    size claims the machine cannot satisfy (``MemoryError``).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, str(path)).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            raise DataError(f"{path}: truncated or empty pickle") from None
        raise DataError(f"{path}: corrupt pickle: {one_line(exc)}") from None
    except MemoryError:
        raise DataError(f"{path}: corrupt pickle: claims more memory than available") from None
    except RecursionError:
        raise DataError(f"{path}: corrupt pickle: nested too deeply") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {one_line(exc.strerror or exc)}") from None
    except Exception as exc:  # anything a malformed stream makes pickle or numpy raise
        raise DataError(f"{path}: corrupt pickle: {type(exc).__name__}: {one_line(exc)}") from None


# --- writing -------------------------------------------------------------------------------

# Object -> (module, name) under which the writer records it. The record classes get
# the original module path; numpy's helpers get their numpy 1.x names, which numpy 2
# also still resolves when unpickling.
_WRITE_NAMES: Dict[int, Tuple[str, str]] = {
    **{id(cls): (WRITE_MODULE, cls.__name__) for cls in RECORD_CLASSES},
    id(_NP_RECONSTRUCT): ("numpy.core.multiarray", "_reconstruct"),
    id(_NP_SCALAR): ("numpy.core.multiarray", "scalar"),
    id(np.ndarray): ("numpy", "ndarray"),
    id(np.dtype): ("numpy", "dtype"),
}


class LegacyPickler(pickle._Pickler):
    """The pure-Python pickler, naming every global from :data:`_WRITE_NAMES`.

    The standard pickler names a global by its ``__module__`` and checks that
    importing that name gives the same object; that can name neither our
    stand-ins as ``datapreparation...`` nor numpy 2's helpers as
    ``numpy.core...`` without faking modules or importing deprecated ones. The
    pure-Python pickler routes every global through ``save_global``, so
    overriding it writes the chosen names directly. Any other global is refused,
    which keeps the written files inside the reader's allow-list.
    """

    def save_global(self, obj, name=None):
        target = _WRITE_NAMES.get(id(obj))
        if target is None:
            raise pickle.PicklingError(f"refusing to write global {obj!r}: not part of the "
                                       "dataset format")
        module, qualname = target
        # What pickle._Pickler.save_global emits for protocol >= 4.
        self.save(module)
        self.save(qualname)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    # The base class sends classes and Python functions to its *own* save_global
    # through this table; point both at the override so nothing bypasses it.
    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[type] = save_global
    dispatch[FunctionType] = save_global


def dumps_legacy(obj) -> bytes:
    """Pickle stand-ins (and numpy values) into the original on-disk format (protocol 4)."""
    buf = io.BytesIO()
    LegacyPickler(buf, protocol=WRITE_PROTOCOL).dump(obj)
    return buf.getvalue()
