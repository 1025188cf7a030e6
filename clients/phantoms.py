"""Synthetic phantoms: spectrum images whose truth is known, for the demo, the tests and the benchmarks.

Each phase is a composition (atomic %); its spectrum comes from the forward model
(xray.synthesize_spectrum) with the phantom's own k-factors (the theoretical ones, so that a
default analysis should recover the truth within its σ). Particles are spheres on a thin carbon
film: counts scale with the local thickness, so they fall towards each particle's edge. A corner
of the film is torn (vacuum). Counts are Poisson: each pixel's total is Poisson, and its X-rays
are drawn from the phase's spectrum (multinomial), which is the same as independent Poisson
channels, and is generated as events so that large phantoms fit in memory. With ``out`` the counts
go to an .npy file (uint32, as the daemon's accumulated.npy) a block of pixels at a time and the
phantom holds a read-only memmap of it: a 1024² × 4096 cube (16 GiB) is never in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edxlive.service.pipeline import xray
from edxlive.service.pipeline.kfactors import KFactors, theoretical_kfactors
from edxlive.service.pipeline.meta import DetectorMeta, ScanMeta

SUPPORT = {"C": 100.0}

SULFIDE_PHASES = {
    1: ("chalcopyrite-like", {"Cu": 24.0, "Fe": 22.0, "Zn": 2.0, "In": 2.0, "S": 50.0}),
    2: ("jalpaite-like", {"Ag": 48.0, "Cu": 16.0, "Cd": 2.0, "S": 34.0}),
    3: ("majority wurtzite", {"Zn": 14.0, "Cd": 9.0, "In": 8.0, "Mn": 7.0, "Cu": 6.0, "Ag": 6.0, "S": 50.0}),
    4: ("minority wurtzite", {"Zn": 26.0, "Cd": 12.0, "Mn": 4.0, "Fe": 8.0, "S": 50.0}),
}
CORESHELL_PHASE = {1: ("7-cation sulfide", {"Cu": 12.0, "Zn": 3.0, "Ag": 10.0, "In": 10.0, "Cd": 9.0, "Co": 3.0,
                                            "Mn": 3.0, "S": 50.0})}
TINY_PHASES = {1: ("Cu-rich sulfide", {"Cu": 45.0, "Fe": 5.0, "S": 50.0}),
               2: ("Zn-rich sulfide", {"Zn": 40.0, "Cd": 10.0, "S": 50.0})}

PHANTOMS = {
    "sulfide": "6-cation high-entropy sulfide: 4 phases in particles on C film, 128x128x2048, ~40 counts/px",
    "coreshell": "one 7-cation composition in spheres thinning to the edge (core-shell artefact test), 128x128x2048",
    "tiny": "two sulfide phases, 32x32x1024, for quick tests",
}


@dataclass
class Phantom:
    counts: np.ndarray  # (ny, nx, channels) raw integer counts (uint16; a uint32 memmap with ``out``)
    meta: ScanMeta
    truth_labels: np.ndarray  # (ny, nx): 0 support, -1 vacuum, 1.. phase id
    phases: dict[int, dict[str, float]]  # phase id -> at%
    kfactors: KFactors
    names: dict[int, str]


def make_phantom(name: str, seed: int | None = 0, shape: tuple[int, int] | None = None,
                 channels: int | None = None, counts_per_pixel: float | None = None, out: Path | None = None
                 ) -> Phantom:
    """``out``: write the counts there (.npy) a block of pixels at a time, the same counts as in memory."""
    if name not in PHANTOMS:
        raise KeyError(f"unknown phantom {name!r}; choose one of: {', '.join(PHANTOMS)} (or give a file path)")
    rng = np.random.default_rng(seed)
    if name == "tiny":
        return _build(name, TINY_PHASES, shape or (32, 32), channels or 1024, counts_per_pixel or 40.0, rng, 4, out)
    phases = SULFIDE_PHASES if name == "sulfide" else CORESHELL_PHASE
    n_particles = 10 if name == "sulfide" else 6
    return _build(name, phases, shape or (128, 128), channels or 2048, counts_per_pixel or 40.0, rng, n_particles,
                  out)


def _meta(name: str, shape: tuple[int, int], channels: int, elements: list[str]) -> ScanMeta:
    scale = 20.48 / channels
    return ScanMeta(scan_id=name, shape=shape, channels=channels, energy_offset_kev=-0.02, energy_scale_kev=scale,
                    beam_energy_kev=200.0, binning=2, frames=1, frames_completed=1, dwell_time_s=2e-5,
                    pixel_size_nm=0.5, detector=DetectorMeta("Super-X", 18.0, 45.0, 4, 130.0), elements=elements,
                    microscope="Talos F200X (phantom)", sample=f"phantom: {name}")


def _layout(shape: tuple[int, int], n_phases: int, n_particles: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0 film, -1 vacuum, k phase) and relative thickness (0..1) of spherical particles."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    labels = np.zeros(shape, dtype=np.int64)
    thickness = np.zeros(shape)
    labels[(yy / ny + xx / nx) < 0.18] = -1  # a torn corner of the film
    r_base = 0.09 * min(ny, nx)
    for i in range(n_particles):
        phase = 1 + i % n_phases
        r = r_base * rng.uniform(0.8, 1.4) * (0.7 if phase == n_phases and n_phases > 2 else 1.0)
        cy, cx = rng.uniform(r + 1, ny - r - 1), rng.uniform(r + 1, nx - r - 1)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
        inside = d2 < 1.0
        t = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
        take = inside & (t > thickness)
        labels[take], thickness[take] = phase, t[take]
    return labels, thickness


def _build(name: str, phases: dict[int, tuple[str, dict[str, float]]], shape: tuple[int, int], channels: int,
           cpp: float, rng: np.random.Generator, n_particles: int, out: Path | None = None) -> Phantom:
    # C is listed too, as a microscopist would: the film is carbon
    elements = sorted({"C"} | {el for _, comp in phases.values() for el in comp}, key=xray.atomic_number)
    meta = _meta(name, shape, channels, elements)
    emax = xray.energy_max(meta)
    lines = [xray.quant_line(el, 200.0, emax) for el in elements]
    kf = theoretical_kfactors(lines, 200.0)
    labels, thickness = _layout(shape, len(phases), n_particles, rng)
    film_cpp = 0.04 * cpp
    events = [_draw(labels.reshape(-1) == 0, np.full(labels.size, film_cpp), _spectrum(SUPPORT, meta, kf), rng)]
    rate = 0.25 * cpp + 0.75 * cpp * thickness.reshape(-1)  # thickness plus the film under it
    for pid, (_, comp) in phases.items():
        events.append(_draw(labels.reshape(-1) == pid, rate, _spectrum(comp, meta, kf), rng))
    if out is None:
        counts = np.zeros((shape[0] * shape[1], channels), dtype=np.uint16)
        for pix, chan in events:
            np.add.at(counts, (pix, chan), 1)
        counts = counts.reshape(*shape, channels)
    else:
        counts = _write_counts(Path(out), events, shape, channels)
    return Phantom(counts, meta, labels, {k: v[1] for k, v in phases.items()}, kf,
                   {k: v[0] for k, v in phases.items()})


def _spectrum(at_pct: dict[str, float], meta: ScanMeta, kf: KFactors) -> np.ndarray:
    """Channel probabilities of a composition (given in at%, converted to weight for the model)."""
    wt = {el: v * xray.atomic_weight(el) for el, v in at_pct.items()}
    spec = np.clip(xray.synthesize_spectrum(wt, meta, kf, 1.0), 0.0, None)
    spec[meta.energy_axis_kev < 0.1] = 0.0
    return spec / spec.sum()


def _draw(where: np.ndarray, rate: np.ndarray, probabilities: np.ndarray, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """The X-rays of the pixels ``where``: (pixel, channel) per event, pixels in increasing order."""
    pixels = np.flatnonzero(where)
    totals = rng.poisson(rate[pixels])
    pix = np.repeat(pixels, totals)
    chan = rng.choice(probabilities.size, size=pix.size, p=probabilities)
    return pix, chan


BLOCK_BYTES = 64 * 2**20


def _write_counts(path: Path, events: list[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int],
                  channels: int) -> np.ndarray:
    """The events counted into ``path`` (.npy, uint32) a block of pixels at a time; a read-only memmap of it."""
    from edxlive.service.storage import save_array_blocks

    n = shape[0] * shape[1]
    step = max(1, BLOCK_BYTES // (4 * channels))

    def blocks() -> Iterator[np.ndarray]:
        for first in range(0, n, step):
            last = min(first + step, n)
            keys = []
            for pix, chan in events:  # each sorted by pixel: the block's events are one slice
                a, b = np.searchsorted(pix, [first, last])
                keys.append((pix[a:b] - first) * channels + chan[a:b])
            counted = np.bincount(np.concatenate(keys), minlength=(last - first) * channels)
            yield counted.astype(np.uint32).reshape(last - first, channels)

    save_array_blocks(path, (*shape, channels), np.dtype(np.uint32), blocks())  # the pixels' bytes in raster order
    return np.load(path, mmap_mode="r")


def truth_at_pct(phantom: Phantom) -> dict[int, dict[str, float]]:
    return {k: dict(v) for k, v in phantom.phases.items()}
