"""From the binned cube to the matrix the clustering sees: energy cut, dose normalisation, scaling.

- Energy cut: channels below 0.2 keV (the zero-energy noise peak) and above 20 keV (or the end of
  the spectrum) are dropped; the rest is rebinned so that at most ``max_channels`` remain.
- Dose: a pixel swept by fewer frames (a gap) is scaled up by 1/dose so it is comparable with its
  neighbours; pixels never observed are left out of the clustering (label −1).
- Scaling (``scaling``):
  - ``poisson``: Keenan–Kotula. X / √(g ⊗ h) with g the mean image and h the mean spectrum, which
    makes Poisson noise roughly homoscedastic so PCA ranks components by signal, not by counts.
  - ``robust``: scikit-learn's RobustScaler per channel, as the reference method does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from edxlive.service.pipeline.blocks import release, take
from edxlive.service.pipeline.meta import ScanMeta
from edxlive.service.pipeline.subsample import sample_rows

SCALINGS = ("poisson", "robust")
BLOCK_ROWS = 4096


class ScaledRows:
    """The scaled matrix (observed pixels × kept channels, float32), made from the cube a block of
    rows at a time whenever it is read: at 1024² binned × 1024 channels it would be 4 GiB, and the
    fast mode only ever needs a sample of its rows (the fits) and one pass over all of them (the
    PCA projection). Any row is the same float32 value whichever way it is read (row-wise
    arithmetic only; tests/test_blocked.py). ``np.asarray`` gives the whole matrix."""

    def __init__(self, reduce: Callable[[slice | np.ndarray], np.ndarray],
                 transform: Callable[[np.ndarray], np.ndarray], n_rows: int, width: int,
                 dense: np.ndarray | None = None) -> None:
        self._reduce, self._transform, self._dense = reduce, transform, dense
        self.shape = (n_rows, width)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, which: slice | np.ndarray) -> np.ndarray:
        """Rows ``which`` (a slice or sorted indices), float32."""
        if self._dense is not None:
            return self._dense[which]
        return self._transform(self._reduce(which)).astype(np.float32)

    def blocks(self, step: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, its float32 block), ``step`` rows at a time."""
        return row_blocks(self, step)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        if self._dense is not None:
            return self._dense.astype(dtype or self._dense.dtype, copy=bool(copy))
        out = np.empty(self.shape, dtype=np.float32)
        for start, part in self.blocks():
            out[start:start + len(part)] = part
        return out.astype(dtype or out.dtype, copy=False)


@dataclass
class Prepared:
    rows: ScaledRows  # (n_observed, n_features) float32, scaled: read a block at a time
    observed: np.ndarray  # bool (n_pixels,): pixels that enter the clustering
    channels: slice  # the kept channel range of the full spectrum
    rebin: int

    @property
    def X(self) -> np.ndarray:
        """The whole scaled matrix (the faithful mode, small maps, tests)."""
        return np.asarray(self.rows)


def energy_range(meta: ScanMeta, e_min: float = 0.2, e_max: float = 20.0) -> slice:
    lo = max(0, int(np.ceil((e_min - meta.energy_offset_kev) / meta.energy_scale_kev)))
    hi = min(meta.channels, int(np.floor((e_max - meta.energy_offset_kev) / meta.energy_scale_kev)) + 1)
    return slice(lo, hi) if hi > lo else slice(0, meta.channels)


def channel_plan(meta: ScanMeta, max_channels: int = 1024) -> tuple[slice, int]:
    """The kept channel range and the rebinning factor that leaves at most ``max_channels``."""
    rng = energy_range(meta)
    return rng, max(1, -(-(rng.stop - rng.start) // max_channels))


def cut_and_rebin(flat: np.ndarray, meta: ScanMeta, max_channels: int = 1024) -> tuple[np.ndarray, slice, int]:
    rng, rebin = channel_plan(meta, max_channels)
    n = (rng.stop - rng.start) // rebin * rebin
    # Profiled: a reshape-sum over a strided (pixels x channels) view walks the whole cube slowly;
    # `rebin` strided slices added together give the same integers ~8x faster.
    reduced = flat[:, rng.start:rng.start + n:rebin].astype(np.float64)
    for j in range(1, rebin):
        reduced += flat[:, rng.start + j:rng.start + n:rebin]
    return reduced, rng, rebin


def prepare(cube: np.ndarray, meta: ScanMeta, scaling: str = "poisson", dose: np.ndarray | None = None,
            max_channels: int = 1024, fit_rows: int | None = None, random_state: int | None = 0) -> Prepared:
    """``fit_rows`` (fast mode): the robust scaler's quantiles come from that many sampled pixels."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling {scaling!r} is not known; use one of {', '.join(SCALINGS)}")
    flat = cube.reshape(-1, cube.shape[-1])
    observed = np.ones(flat.shape[0], dtype=bool) if dose is None else dose.reshape(-1) > 0
    rows = np.flatnonzero(observed)
    inv_dose = None if dose is None else 1.0 / dose.reshape(-1)[rows]
    sample = sample_rows(len(rows), fit_rows, random_state)
    rng, rebin = channel_plan(meta, max_channels)
    width = (rng.stop - rng.start) // rebin
    reduce = functools.partial(_reduced, flat, rows, inv_dose, meta, max_channels)
    if scaling == "robust" and sample is None:  # quantiles of every row: the whole matrix at once
        X = robust_scale(reduce(slice(None))).astype(np.float32)
        return Prepared(ScaledRows(reduce, _identity, len(rows), width, dense=X), observed, rng, rebin)
    # Profiled: float64 temporaries of the whole map (0.5 GiB each at 256x256 binned) cost more in
    # first-touch page faults than the arithmetic; rows go through in blocks, scaled as they are read.
    if scaling == "robust":
        median, iqr = robust_parameters(reduce(sample))
        transform = lambda X: (X - median) / iqr  # noqa: E731
    else:
        h = np.zeros(width)  # the mean spectrum, before any row is scaled
        for start in range(0, len(rows), BLOCK_ROWS):
            h += reduce(slice(start, start + BLOCK_ROWS)).sum(axis=0)
        h_safe = np.where(h > 0, h / max(len(rows), 1), np.inf)
        transform = lambda X: _poisson_rows(X, h_safe)  # noqa: E731
    return Prepared(ScaledRows(reduce, transform, len(rows), width), observed, rng, rebin)


def _identity(X: np.ndarray) -> np.ndarray:
    return X


def row_blocks(X: np.ndarray | ScaledRows, step: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, its block) of a matrix or of ScaledRows, ``step`` rows at a time."""
    for start in range(0, len(X), step):
        yield start, X[start:start + step]


def _reduced(flat: np.ndarray, rows: np.ndarray, inv_dose: np.ndarray | None, meta: ScanMeta, max_channels: int,
             which: slice | np.ndarray) -> np.ndarray:
    """The energy-cut, rebinned, dose-normalised float64 rows ``rows[which]``."""
    # every pixel observed: rows[which] is ``which`` itself, and a slice of the cube is a view, not a copy
    source = which if len(rows) == len(flat) else rows[which]
    if isinstance(source, slice):
        X, _, _ = cut_and_rebin(flat[source], meta, max_channels)
        release(flat, source)  # read: a memmap's pages leave the resident set (blocks.py)
    else:
        X, _, _ = cut_and_rebin(take(flat, source), meta, max_channels)
    if inv_dose is not None:
        X *= inv_dose[which][:, None]
    return X


def _poisson_rows(X: np.ndarray, h_safe: np.ndarray) -> np.ndarray:
    g = X.mean(axis=1)
    g = np.where(g > 0, g, g[g > 0].min() if (g > 0).any() else 1.0)
    return X / np.sqrt(g[:, None]) / np.sqrt(h_safe[None, :])


def poisson_scale(X: np.ndarray) -> np.ndarray:
    """Keenan & Kotula (2004): divide by √(mean image ⊗ mean spectrum)."""
    h = X.mean(axis=0)
    return _poisson_rows(X, np.where(h > 0, h, np.inf))


def robust_parameters(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's RobustScaler's centre and scale: the median and the 25-75 % IQR (a zero IQR
    scales by 1). RobustScaler takes ``np.nanpercentile``, slow on 65k x 1000 arrays; the data here
    hold no NaN, so ``np.percentile`` gives identical quantiles (tests/test_workflows.py)."""
    q25, median, q75 = np.percentile(X, [25, 50, 75], axis=0)
    iqr = q75 - q25
    iqr[iqr < 10 * np.finfo(np.float64).eps] = 1.0  # as sklearn's _handle_zeros_in_scale
    return median, iqr


def robust_scale(X: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """RobustScaler's transform, with the quantiles of ``rows`` only when given (fast mode)."""
    median, iqr = robust_parameters(X if rows is None else X[rows])
    return (X - median) / iqr


def smooth_over_pixels(features: np.ndarray, observed: np.ndarray, map_shape: tuple[int, int],
                       sigma_px: float, totals: np.ndarray | None = None, tau: float = 0.5) -> np.ndarray:
    """Each observed pixel's features averaged with its neighbours' (Gaussian weights, σ in pixels).

    Neighbouring pixels of a map mostly belong to one phase, while their Poisson noise is
    independent: averaging them removes much of the noise that, at a few counts per pixel,
    otherwise fragments the clusters. Unobserved pixels do not take part (normalised convolution).
    With ``totals`` (counts per pixel) the average is edge-aware: a neighbour's weight also falls
    as exp(−Δ²/2τ²) with Δ the difference of log(1 + counts), so a thin film next to a particle
    (a few counts against tens) does not take the particle's signal, nor the particle the film's.
    """
    if sigma_px <= 0:
        return features
    ny, nx = map_shape
    grid = np.zeros((ny * nx, features.shape[1]), dtype=np.float64)
    grid[observed] = features
    grid = grid.reshape(ny, nx, -1)
    guide = np.log1p(np.zeros(ny * nx) if totals is None else totals.reshape(-1).astype(np.float64)).reshape(ny, nx)
    obs = observed.reshape(ny, nx).astype(np.float64)
    radius = max(1, int(np.ceil(3 * sigma_px)))
    acc = np.zeros_like(grid)
    norm = np.zeros((ny, nx))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == dx == 0:
                continue
            w_space = np.exp(-(dy * dy + dx * dx) / (2 * sigma_px ** 2))
            nb_obs, nb_guide, nb_feat = (_shifted(a, dy, dx) for a in (obs, guide, grid))
            w = w_space * nb_obs * np.exp(-((nb_guide - guide) ** 2) / (2 * tau ** 2))
            acc += w[..., None] * nb_feat
            norm += w
    alone = norm <= 1e-12  # no observed neighbour: the pixel's own features are all there is
    out = np.where(alone[..., None], grid, acc / np.where(alone, 1.0, norm)[..., None])
    return out.reshape(ny * nx, -1)[observed]


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """a[y + dy, x + dx], edges repeated (as scipy's mode="nearest")."""
    ny, nx = a.shape[:2]
    rows = np.clip(np.arange(ny) + dy, 0, ny - 1)
    cols = np.clip(np.arange(nx) + dx, 0, nx - 1)
    return a[rows][:, cols]
