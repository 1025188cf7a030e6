"""The result folder: one per scan, the same whether the daemon or `edxlive analyze` writes it.

Every file is written atomically: to a temporary name in the same folder, then renamed, so a
reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edxlive.service import __version__
from edxlive.service.pipeline.meta import ScanMeta

SPECTRUM_IMAGE = "spectrum_image"
RESULT_JSON = "result.json"
CUBE_NPY = "accumulated.npy"
DOSE_NPY = "dose.npy"


def scan_folder(data_dir: Path, scan_id: str, when: datetime | None = None, create: bool = True) -> Path:
    """Create ``<data_dir>/<UTC yyyymmdd-HHMMSS>_<scan_id>`` (a suffix keeps a reused id apart).

    ``create=False`` only names it: for a data folder that cannot be written now (created later)."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    base = Path(data_dir) / f"{stamp}_{scan_id}"
    if not create:
        return base
    folder, n = base, 1
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return folder
        except FileExistsError:
            n += 1
            folder = base.with_name(f"{base.name}.{n}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, document: dict[str, Any]) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(document, indent=2, allow_nan=False, default=_json_default) + "\n")

    return atomic_write(Path(path), write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_result_json(folder: Path, document: dict[str, Any]) -> Path:
    return write_json(Path(folder) / RESULT_JSON, document)


def save_array(path: Path, array: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    return atomic_write(Path(path), write)


def save_array_blocks(path: Path, shape: tuple[int, ...], dtype: np.dtype, blocks: Iterable[np.ndarray]) -> Path:
    """An .npy file written block by block (consecutive slices along the first axis), so a large
    array never needs to be whole in memory; ``np.load`` reads it like any other."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                      "shape": tuple(shape)}
            np.lib.format.write_array_header_1_0(fh, header)
            for block in blocks:
                fh.write(np.ascontiguousarray(block, dtype=dtype).data)

    return atomic_write(Path(path), write)


def write_spectrum_image(folder: Path, cube: np.ndarray, meta: ScanMeta, fmt: str = "zspy") -> Path:
    """The accumulated binned cube as an EDS_TEM signal that ``hs.load`` reads back."""
    from edxlive.service.hsio import signal_from_cube

    final = Path(folder) / f"{SPECTRUM_IMAGE}.{fmt}"
    sig = signal_from_cube(cube, meta, binned=True)
    tmp = Path(folder) / f".{SPECTRUM_IMAGE}.part.{fmt}"
    _remove(tmp)
    sig.save(tmp, overwrite=True)
    _remove(final)
    os.replace(tmp, final)
    return final


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def load_spectrum_image(folder: Path) -> tuple[np.ndarray, ScanMeta]:
    """Read back a result folder's cube and scan metadata (for reanalysis)."""
    import hyperspy.api as hs

    for fmt in ("zspy", "hspy"):
        path = Path(folder) / f"{SPECTRUM_IMAGE}.{fmt}"
        if path.exists():
            sig = hs.load(path)
            meta = ScanMeta.from_dict(sig.metadata.edxlive.scan.as_dictionary())
            return np.asarray(sig.data), meta
    raise FileNotFoundError(f"no {SPECTRUM_IMAGE}.zspy or .hspy in {folder}")


def result_document(meta: ScanMeta, cube: np.ndarray, analysis: dict[str, Any] | None,
                    spectrum_format: str = "zspy") -> dict[str, Any]:
    """result.json: the scan's description, then the analysis (workflows, agreement, verdict)."""
    n_raw = meta.shape[0] * meta.shape[1]
    doc: dict[str, Any] = {
        "edxlive_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "scan_id": meta.scan_id,
        "status": meta.status,
        "shape": list(meta.shape),
        "binned_shape": list(meta.binned_shape),
        "binning": meta.binning,
        "channels": meta.channels,
        "energy_offset_kev": meta.energy_offset_kev,
        "energy_scale_kev": meta.energy_scale_kev,
        "beam_energy_kev": meta.beam_energy_kev,
        "frames": meta.frames,
        "frames_completed": meta.frames_completed,
        "counts_per_pixel": float(cube.sum(dtype=np.float64) / max(n_raw, 1)),
        "incomplete_fraction": meta.incomplete_fraction,
        "elements_in_metadata": list(meta.elements),
        "spectrum_image": f"{SPECTRUM_IMAGE}.{spectrum_format}",
    }
    doc.update(analysis or {})
    return doc

