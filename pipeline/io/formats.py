"""Input format names, detection from extension and content, and checks that a file is what it claims."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from omicsclip.errors import InputError

FORMATS = ("auto", "10x-h5", "10x-mtx", "h5ad", "h5ad-pair", "h5mu", "csv", "zarr")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"
_TEXT_EXT = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")

#: What h5py, zarr, pandas, gzip and numpy raise on a damaged file (h5py: RuntimeError for a broken heap or link,
#: OSError for bad blocks, KeyError/ValueError/TypeError for inconsistent metadata; zlib.error for a damaged
#: deflate stream inside a .gz).
READ_ERRORS = (OSError, EOFError, RuntimeError, KeyError, ValueError, TypeError, IndexError, zlib.error)


def one_line(exc: BaseException) -> str:
    """Return the first non-empty line of an exception's message (its type name if none), for one-line errors.

    Parameters
    ----------
    exc
        The exception raised by a library (h5py, pandas, zarr, ...), whose message may span lines.

    Returns
    -------
    str
        One line of text.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or one_line(exc)})") from None


def is_hdf5(path: Path) -> bool:
    """Return whether the file carries the HDF5 signature (at offset 0, or after a user block as in ``.h5mu``)."""
    if _head(path) == _HDF5_MAGIC:
        return True
    size, off = path.stat().st_size, 512
    with open(path, "rb") as fh:
        while off + 8 <= size:
            fh.seek(off)
            if fh.read(8) == _HDF5_MAGIC:
                return True
            off *= 2
    return False


def is_zarr_dir(path: Path) -> bool:
    """Return whether ``path`` is a zarr group folder (v2 or v3)."""
    return path.is_dir() and any((path / f).exists() for f in (".zgroup", "zarr.json", ".zattrs"))


def find_member(folder: Path, *names: str) -> Path | None:
    """``folder/NAME[.gz]`` for the first of ``names`` present, else a unique ``*NAME[.gz]`` (GEO-style prefixes)."""
    for name in names:
        for cand in (folder / f"{name}.gz", folder / name):
            if cand.exists():
                return cand
    for name in names:
        hits = sorted(folder.glob(f"*{name}.gz")) or sorted(folder.glob(f"*{name}"))
        if len(hits) == 1:
            return hits[0]
    return None


def mtx_file(folder: Path) -> Path | None:
    """Return the ``matrix.mtx[.gz]`` inside a Cell Ranger matrix folder, if any."""
    return find_member(folder, "matrix.mtx")


#: Seconds the structure of an HDF5 input may take to read in :func:`probe_hdf5` (metadata only).
PROBE_SECONDS = 30.0
_PROBED: dict[tuple[str, int, int, int], None] = {}


#: Run by :func:`probe_hdf5` in a fresh interpreter: read every attribute and every small dataset (what the
#: readers read besides the counts). Exit 0 when read, 3 when h5py raised (left to the readers to report).
_WALK_HDF5 = """
import sys
import h5py

def visit(_name, obj):
    for k in obj.attrs:
        obj.attrs[k]
    if isinstance(obj, h5py.Dataset) and obj.size * obj.dtype.itemsize <= 1 << 20:
        obj[()]

try:
    with h5py.File(sys.argv[1], "r") as f:
        visit("", f)
        f.visititems(visit)
except Exception:
    sys.exit(3)
"""


def probe_hdf5(path: Path) -> None:
    """Refuse an HDF5 file whose structure the HDF5 library cannot read without hanging or crashing.

    Some damage (a zeroed object header, a looping heap) sends the HDF5 C library into an endless loop or a
    crash that no Python code can catch. The file's attributes and small datasets are therefore read first in
    a separate interpreter (a subprocess: safe whatever threads this process runs, unlike ``fork``) with a time
    limit (:data:`PROBE_SECONDS`); errors that it raises are left to the readers, which report them. A file is
    probed once per size and modification time.

    Parameters
    ----------
    path
        The HDF5 input.

    Raises
    ------
    InputError
        The child did not finish in time or was killed by a signal.
    """
    import subprocess
    import sys

    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _PROBED:
        return
    try:
        done = subprocess.run([sys.executable, "-c", _WALK_HDF5, str(path)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        raise InputError(f"{path}: damaged HDF5 file (reading its structure did not finish in "
                         f"{PROBE_SECONDS:g} s)") from None
    if done.returncode < 0:
        raise InputError(f"{path}: damaged HDF5 file (reading its structure crashes the HDF5 library: "
                         f"signal {-done.returncode})")
    _PROBED[key] = None


def _hdf5_kind(path: Path) -> str:
    """Classify an HDF5 file by its top-level groups: 10x-h5, h5mu or h5ad."""
    import h5py

    probe_hdf5(path)
    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            enc = str(f.attrs.get("encoding-type", ""))
    except READ_ERRORS as exc:
        raise InputError(f"{path}: cannot open as HDF5 (truncated or corrupt file: {one_line(exc)})") from None
    if "matrix" in keys:
        return "10x-h5"
    if "mod" in keys or enc == "MuData":
        return "h5mu"
    if "obs" in keys or "X" in keys:
        return "h5ad"
    raise InputError(f"{path}: HDF5 file with groups {sorted(keys)[:6]} is not a 10x .h5, .h5ad or .h5mu file")


def is_gzip(path: Path) -> bool:
    """Return whether the file starts with the gzip signature (whatever its name)."""
    return _head(path, 2) == _GZIP_MAGIC


def text_like(path: Path) -> bool:
    """Return whether the file is gzip or its first bytes decode as text."""
    head = _head(path, 512)
    if head[:2] == _GZIP_MAGIC:
        return True
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def detect_one(path: Path) -> str:
    """Format of a single input path (file or folder)."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        if is_zarr_dir(path):
            return "zarr"
        if mtx_file(path) is not None:
            return "10x-mtx"
        raise InputError(f"{path}: folder is neither a paired store (.zarr) nor a Cell Ranger matrix folder "
                         "(matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz)")
    name = path.name.lower()
    if name.endswith((".mtx", ".mtx.gz")):
        return "10x-mtx"
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5mu"):
        return "h5mu"
    if name.endswith(".h5"):
        return _hdf5_kind(path) if is_hdf5(path) else "10x-h5"  # some tools write .h5ad/.h5mu as .h5
    if name.endswith(_TEXT_EXT):
        return "csv"
    if is_hdf5(path):
        return _hdf5_kind(path)
    if text_like(path):
        return "csv"
    raise InputError(f"{path}: cannot tell the format from the name or content; pass --format")


def detect_format(paths: list[Path], fmt: str = "auto") -> str:
    """Resolve ``fmt`` ("auto" or a format name) for one or two inputs, checking the combination."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not paths or len(paths) > 2:
        raise InputError(f"expected one or two inputs, got {len(paths)}")
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: no such file or directory")
    if fmt == "auto":
        kinds = [detect_one(p) for p in paths]
        if len(paths) == 1:
            fmt = kinds[0]
        elif kinds == ["h5ad", "h5ad"]:
            fmt = "h5ad-pair"
        elif kinds == ["csv", "csv"]:
            fmt = "csv"
        elif kinds == ["10x-mtx", "10x-mtx"]:
            fmt = "10x-mtx"
        else:
            raise InputError(f"two inputs of formats {kinds[0]} and {kinds[1]}: two inputs must be two .h5ad "
                             "files, two matrix folders or two count tables (RNA, then protein)")
    two = fmt == "h5ad-pair" or (fmt in ("csv", "10x-mtx") and len(paths) == 2)
    if fmt == "h5ad" and len(paths) == 2:
        fmt, two = "h5ad-pair", True
    if fmt == "h5ad-pair" and len(paths) != 2:
        raise InputError("--format h5ad-pair needs two inputs: RNA.h5ad PROTEIN.h5ad")
    if len(paths) == 2 and not two:
        raise InputError(f"--format {fmt} takes one input, got two")
    return fmt


def require_hdf5(path: Path, fmt: str) -> None:
    """Refuse a file that does not carry the HDF5 signature although ``fmt`` is HDF5-based."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder, but format {fmt} expects an HDF5 file")
    if not is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file (format {fmt} expects HDF5; wrong format or corrupt file)")
    probe_hdf5(path)


def require_text(path: Path, fmt: str) -> None:
    """Refuse binary content where a (possibly gzipped) text table is expected."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder, but format {fmt} expects a text table")
    if not text_like(path):
        raise InputError(f"{path}: not a text table (format {fmt} expects CSV/TSV, optionally gzipped)")
    if _head(path, 2) == _GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as fh:
                fh.read(1)
        except READ_ERRORS as exc:
            raise InputError(f"{path}: corrupt gzip file ({one_line(exc)})") from None
