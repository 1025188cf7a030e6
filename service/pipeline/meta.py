"""What the pipeline knows about a scan: calibration, detector and provenance. Plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class DetectorMeta:
    name: str = "Super-X"
    elevation_deg: float = 18.0
    azimuth_deg: float = 0.0
    count: int = 4
    energy_resolution_mn_ka_ev: float = 130.0


@dataclass
class ScanMeta:
    """Calibration and provenance of one spectrum image.

    ``shape`` is the raw scan shape [ny, nx]; ``binning`` the spatial factor applied to it,
    so the binned cube has ``binned_shape``. Energy of channel i is offset + i * scale (keV).
    """

    scan_id: str
    shape: tuple[int, int]
    channels: int
    energy_offset_kev: float
    energy_scale_kev: float
    beam_energy_kev: float = 200.0
    binning: int = 2
    frames: int = 1
    frames_completed: int = 1
    dwell_time_s: float = 1e-5
    pixel_size_nm: float = 1.0
    detector: DetectorMeta = field(default_factory=DetectorMeta)
    elements: list[str] = field(default_factory=list)
    microscope: str | None = None
    sample: str | None = None
    status: str = "completed"
    incomplete_fraction: float = 0.0
    source_file: str | None = None

    @property
    def binned_shape(self) -> tuple[int, int]:
        return binned_shape(self.shape, self.binning)

    @property
    def energy_axis_kev(self) -> np.ndarray:
        return self.energy_offset_kev + self.energy_scale_kev * np.arange(self.channels)

    def channel_of(self, energy_kev: float) -> int:
        return round((energy_kev - self.energy_offset_kev) / self.energy_scale_kev)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["binned_shape"] = list(self.binned_shape)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanMeta:
        d = dict(d)
        d.pop("binned_shape", None)
        d["shape"] = tuple(d["shape"])
        d["detector"] = DetectorMeta(**d.get("detector") or {})
        return cls(**d)


def binned_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """Ceil division: a trailing row/column that does not fill a bin becomes a partial bin, so no
    count is ever dropped (the offline reference zero-pads to a multiple of the factor, then sums)."""
    return (-(-shape[0] // factor), -(-shape[1] // factor))
