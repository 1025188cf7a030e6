"""HyperSpy/RosettaSciIO in and out: load an EDS spectrum image with clear errors, and convert
between a HyperSpy signal and (counts, ScanMeta). The simulator, `edxlive analyze` and the result
folder all go through here, so a file means the same thing everywhere.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edxlive.service.pipeline.meta import DetectorMeta, ScanMeta

READABLE = (".bcf", ".emd", ".pts", ".hspy", ".zspy", ".h5", ".hdf5", ".msa", ".rpl")


class LoadError(ValueError):
    """A file that cannot serve as an EDS spectrum image; the message says why and what to do."""


def load_eds(path: Path, *, frames: bool = False, downsample: int = 1, rebin_energy: int = 1,
             allow_single: bool = False) -> Any:
    """Load the EDS spectrum image of ``path`` as a HyperSpy signal.

    ``frames=True`` keeps real frames where the format has them (Velox, JEOL .pts): the signal then
    has a leading frame axis in ``data`` (frames, ny, nx, channels).
    """
    import hyperspy.api as hs

    path = Path(path)
    if not path.is_file():
        raise LoadError(f"{path}: no such file; give the path of a spectrum image (.bcf .emd .pts .hspy .zspy)")
    kwargs = _reader_options(path, frames, downsample, rebin_energy)
    try:
        with warnings.catch_warnings(), _quiet_rsciio():
            warnings.simplefilter("ignore")
            loaded = hs.load(path, **kwargs)
    except ModuleNotFoundError as exc:
        raise LoadError(f"{path.name}: reading it needs the Python package {exc.name!r}; "
                        f"pip install {exc.name}") from None
    except Exception as exc:
        raise LoadError(f"{path.name}: cannot read it as a spectrum image ({type(exc).__name__}: {exc})") from None
    if allow_single and not loaded and path.suffix.lower() == ".emd" and not _is_pruned(path):
        with warnings.catch_warnings(), _quiet_rsciio():
            warnings.simplefilter("ignore")
            loaded = hs.load(path, select_type="single_spectrum", sum_EDS_detectors=True)
    return _pick_eds(path, loaded, allow_single)


def _is_pruned(path: Path) -> bool:
    """A Velox file whose spectrum image was pruned keeps its SpectrumImage entry but no stream."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            data = fh.get("Data", {})
            return len(data.get("SpectrumImage", {})) > 0 and len(data.get("SpectrumStream", {})) == 0
    except OSError:
        return False


def _reader_options(path: Path, frames: bool, downsample: int, rebin_energy: int) -> dict[str, Any]:
    ext = path.suffix.lower()
    opts: dict[str, Any] = {}
    if ext == ".emd":
        opts |= {"select_type": "spectrum_image", "sum_frames": not frames, "sum_EDS_detectors": True}
        if rebin_energy > 1:
            opts["rebin_energy"] = rebin_energy
    elif ext == ".pts":
        opts |= {"sum_frames": not frames, "downsample": downsample, "rebin_energy": rebin_energy}
    elif ext == ".bcf":
        opts |= {"select_type": "spectrum_image"}
        if downsample > 1:
            opts["downsample"] = downsample
    return opts


class _quiet_rsciio:
    """RosettaSciIO logs warnings (e.g. 'pruned file') that we turn into our own one-line error."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("rsciio")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)


def _pick_eds(path: Path, loaded: Any, allow_single: bool) -> Any:
    signals = loaded if isinstance(loaded, list) else [loaded]
    eds = [s for s in signals if "EDS" in str(s.metadata.get_item("Signal.signal_type", ""))]
    if not eds:
        eds = [s for s in signals if s.axes_manager.signal_dimension == 1]
    if not eds:
        if path.suffix.lower() == ".emd":
            raise LoadError(f"{path.name}: the file holds no spectrum stream (a 'pruned' Velox file?); "
                            "export it from Velox without pruning, or read the original .bcf")
        raise LoadError(f"{path.name}: no EDS spectrum image in the file")
    sig = max(eds, key=lambda s: s.data.size)
    if sig.axes_manager.navigation_dimension == 0 and not allow_single:
        raise LoadError(f"{path.name}: a single spectrum, not a spectrum image; there is nothing to map or "
                        "cluster (quantify it with `edxlive analyze`, which accepts single spectra)")
    return sig


def _item(sig: Any, key: str, default: Any) -> Any:
    value = sig.metadata.get_item(key, default)
    return default if value is None else value


def meta_from_signal(sig: Any, scan_id: str, *, frames: int = 1, binning: int = 2) -> ScanMeta:
    """ScanMeta from a loaded EDS signal: calibration, beam energy, detector, elements."""
    eax = sig.axes_manager.signal_axes[0]
    scale, offset = float(eax.scale), float(eax.offset)
    if str(eax.units).strip().lower() == "ev":
        scale, offset = scale / 1000.0, offset / 1000.0
    nav = sig.axes_manager.navigation_axes
    ny, nx = _spatial_shape(sig)
    pixel_nm = _pixel_size_nm(nav[0]) if nav else 1.0
    tem = "Acquisition_instrument.TEM"
    det = f"{tem}.Detector.EDS"
    return ScanMeta(
        scan_id=scan_id, shape=(ny, nx), channels=int(eax.size),
        energy_offset_kev=offset, energy_scale_kev=scale,
        beam_energy_kev=float(_item(sig, f"{tem}.beam_energy", None)
                              or _item(sig, "Acquisition_instrument.SEM.beam_energy", 200.0)),
        binning=binning, frames=frames, frames_completed=frames,
        dwell_time_s=float(_item(sig, f"{det}.live_time", 1e-5) or 1e-5) / max(ny * nx, 1),
        pixel_size_nm=pixel_nm,
        detector=DetectorMeta(
            elevation_deg=float(_item(sig, f"{det}.elevation_angle", 18.0)),
            azimuth_deg=float(_item(sig, f"{det}.azimuth_angle", 0.0)),
            energy_resolution_mn_ka_ev=float(_item(sig, f"{det}.energy_resolution_MnKa", 130.0)),
        ),
        elements=sorted({str(e) for e in _item(sig, "Sample.elements", [])}),
        microscope=str(_item(sig, "Acquisition_instrument.TEM.microscope", "")) or None,
        sample=str(_item(sig, "General.title", "")) or None,
        source_file=str(_item(sig, "General.original_filename", "")) or None,
    )


def _spatial_shape(sig: Any) -> tuple[int, int]:
    shape = sig.axes_manager.navigation_shape  # (x, y[, frame]) in HyperSpy's order
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, int(shape[0]))
    return (int(shape[1]), int(shape[0]))


def _pixel_size_nm(axis: Any) -> float:
    factor = {"nm": 1.0, "µm": 1e3, "um": 1e3, "pm": 1e-3, "Å": 0.1, "mm": 1e6}.get(str(axis.units), 1.0)
    return abs(float(axis.scale)) * factor or 1.0


def cube_of(sig: Any) -> np.ndarray:
    """The counts as (ny, nx, channels) or, with real frames, (frames, ny, nx, channels)."""
    data = np.asarray(sig.data)
    ny, nx = _spatial_shape(sig)
    if data.ndim == 1:
        return data.reshape(1, 1, -1)
    if data.ndim == 2:
        return data.reshape(ny, nx, -1)
    return data


def signal_from_cube(cube: np.ndarray, meta: ScanMeta, *, binned: bool = True) -> Any:
    """An EDS_TEM signal with calibrated axes and the scan's metadata (the inverse of meta_from_signal)."""
    import exspy  # noqa: F401 - registers the EDS_TEM signal type
    import hyperspy.api as hs

    sig = hs.signals.Signal1D(cube)
    sig.set_signal_type("EDS_TEM")
    step = meta.pixel_size_nm * (meta.binning if binned else 1)
    names = ("y", "x")
    for i, ax in enumerate(sig.axes_manager.navigation_axes[::-1]):
        ax.name, ax.units, ax.scale = names[i] if cube.ndim == 3 else "x", "nm", step
    eax = sig.axes_manager.signal_axes[0]
    eax.name, eax.units, eax.scale, eax.offset = "Energy", "keV", meta.energy_scale_kev, meta.energy_offset_kev
    _set_metadata(sig, meta)
    return sig


def _set_metadata(sig: Any, meta: ScanMeta) -> None:
    sig.metadata.General.title = meta.scan_id
    sig.set_microscope_parameters(
        beam_energy=meta.beam_energy_kev,
        energy_resolution_MnKa=meta.detector.energy_resolution_mn_ka_ev,
        elevation_angle=meta.detector.elevation_deg,
        azimuth_angle=meta.detector.azimuth_deg,
        live_time=meta.dwell_time_s * meta.shape[0] * meta.shape[1] * max(meta.frames_completed, 1),
    )
    if meta.elements:
        sig.add_elements(meta.elements)
    sig.metadata.set_item("Acquisition_instrument.TEM.Detector.EDS.detector_type", meta.detector.name)
    sig.metadata.set_item("Acquisition_instrument.TEM.Detector.EDS.number_of_detectors", meta.detector.count)
    if meta.microscope:
        sig.metadata.set_item("Acquisition_instrument.TEM.microscope", meta.microscope)
    if meta.sample:
        sig.metadata.set_item("Sample.description", meta.sample)
    sig.metadata.set_item("edxlive", {"scan": meta.to_dict()})
