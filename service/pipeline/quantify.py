"""Quantification of summed spectra: a model fit for line intensities, then Cliff–Lorimer, ± 1σ.

Model (the same physics as exspy's EDS model, solved as a linear problem):
  spectrum ≈ Σ_families  I_f · profile_f(E)  +  background(E)
- ``profile_f``: every line of an element's K, L or M family that falls in the fitted range,
  each a Gaussian at the detector resolution (FWHM from the Mn Kα resolution, Fiori form),
  weighted as in exspy's line table, scaled so that I_f is the intensity of the family's
  main line (Kα, Lα, Mα: the named line of the k-factor).
- ``background``: Kramers' continuum times a quadratic in E (three free coefficients).
Because the line energies and widths are fixed, the model is linear in its coefficients, so it
is solved by bounded weighted least squares (scipy ``lsq_linear``: line intensities ≥ 0, which
clips absent lines at zero) with Poisson weights 1/max(model, data/2), iterated to the Poisson
maximum-likelihood fit. Overlapping
lines (Ag/Cd/In L, Mn Kβ/Fe Kα, Cu Kβ/Zn Kα, S K/Mo L/Pb M) are separated by the fit, not by windows.

Cliff–Lorimer: the reported wt% and at% are exspy's (``exspy_cl.py``, its public quantification API).
Uncertainties: the covariance of the intensities is (Aᵀ W A)⁻¹ with W = 1/variance (Poisson
counting statistics of peak and background together). It is propagated to weight and atomic
fractions through the analytic Jacobian of the Cliff–Lorimer and at% formulas. k-factor
uncertainty is not included (it is systematic, not counting noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import lsq_linear

from edxlive.service.pipeline import xray
from edxlive.service.pipeline.exspy_cl import exspy_cliff_lorimer
from edxlive.service.pipeline.kfactors import KFactors
from edxlive.service.pipeline.meta import ScanMeta

METHOD = ("linear model fit (Gaussian lines at detector resolution, exspy line table, Kramers x quadratic "
          "background), bounded Poisson maximum likelihood (iteratively reweighted least squares); exspy "
          "Cliff-Lorimer (wt) -> at%; 1 sigma from the fit covariance propagated analytically")
FIT_RANGE_KEV = (0.2, 20.0)
MIN_LINE_COUNTS = 25.0  # below this total line signal a spectrum is reported as vacuum


@dataclass
class Composition:
    at_pct: dict[str, tuple[float, float]]
    wt_pct: dict[str, tuple[float, float]]
    intensities: dict[str, tuple[float, float]]
    total_counts: float
    vacuum: bool
    warnings: list[str] = field(default_factory=list)
    method: str = METHOD


@dataclass
class Model:
    """Design matrix columns: one per line family, then the background terms."""

    lines: list[str]  # the named (quantified) line of each element, in ``elements`` order
    families: list[str]  # one per line-column: the family's main line
    design: np.ndarray  # (channels in range, n_families + 3)
    rng: slice


def build_model(meta: ScanMeta, elements: list[str], shift_kev: float = 0.0) -> Model:
    m = _shifted(meta, shift_kev)
    emax = min(FIT_RANGE_KEV[1], xray.energy_max(meta))
    lines = [xray.quant_line(el, meta.beam_energy_kev, emax) for el in elements]
    families = _families_in_range(elements, FIT_RANGE_KEV[0], emax)
    lo = max(0, m.channel_of(FIT_RANGE_KEV[0]))
    hi = min(meta.channels, m.channel_of(emax) + 1)
    rng = slice(lo, hi)
    cols = [xray.family_profile(f, m)[rng] for f in families]
    e = m.energy_axis_kev[rng]
    brems = xray.bremsstrahlung(m)[rng] * meta.channels
    cols += [brems, brems * e / 10.0, brems * (e / 10.0) ** 2]
    return Model(lines, families, np.column_stack(cols), rng)


def _shifted(meta: ScanMeta, shift_kev: float) -> ScanMeta:
    if not shift_kev:
        return meta
    from dataclasses import replace

    return replace(meta, energy_offset_kev=meta.energy_offset_kev + shift_kev)


def _families_in_range(elements: list[str], emin: float, emax: float) -> list[str]:
    out = []
    for el in elements:
        for main in ("Ka", "La", "Ma"):
            name = f"{el}_{main}"
            if name in xray.element_lines(el) and emin <= xray.line_energy(name) <= emax:
                out.append(name)
    return out


MAX_PASSES = 12


def fit(spectrum: np.ndarray, model: Model, max_passes: int = MAX_PASSES) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and their covariance: bounded weighted least squares, reweighted by the model
    until the coefficients settle. With weights 1/model this is iteratively reweighted least
    squares for a Poisson likelihood with an identity link, whose fixed point is the maximum-
    likelihood fit; plain data weights (or a floor of one count per channel, as before
    2026-11-26) bias the intensities at a few counts per channel by up to 1.5σ
    (docs/quantification.md §4)."""
    y = np.asarray(spectrum, dtype=np.float64)[model.rng]
    A = model.design
    n_lines = len(model.families)
    lower = np.r_[np.zeros(n_lines), np.full(3, -np.inf)]
    upper = np.full(A.shape[1], np.inf)
    weights = 1.0 / np.maximum(y, 1.0)
    floor = variance_floor(y)
    previous = None
    for _ in range(max_passes):
        sw = np.sqrt(weights)
        x = lsq_linear(A * sw[:, None], y * sw, bounds=(lower, upper), method="bvls").x
        weights = 1.0 / poisson_variance(A @ x, y, floor)
        if previous is not None and np.allclose(x, previous, rtol=1e-6, atol=1e-6 * max(1.0, float(y.sum()))):
            break
        previous = x
    cov = np.linalg.pinv((A * weights[:, None]).T @ A)
    return x, cov


def poisson_variance(model: np.ndarray, data: np.ndarray, floor: float) -> np.ndarray:
    """Variance per channel: the model's where it fits (Poisson). A peak the model lacks (data ≫
    model: an element not in the list, an escape peak) must not get a tiny variance and pull the
    fit, hence at least half the data. The floor keeps a channel where the free background dips
    to zero from taking a huge weight, which would also shrink every σ."""
    return np.maximum(np.maximum(model, 0.5 * data), floor)


def pulls(spectrum: np.ndarray, model: Model, coef: np.ndarray) -> np.ndarray:
    """The fit's residuals in units of their Poisson σ, channel by channel (χ² is their sum of squares)."""
    y = np.asarray(spectrum, dtype=np.float64)[model.rng]
    fitted = model.design @ coef
    return (y - fitted) / np.sqrt(poisson_variance(fitted, y, variance_floor(y)))


def variance_floor(data: np.ndarray) -> float:
    """Half the spectrum's mean counts per channel (at least 10⁻³): far below any channel the model
    describes, so the fit stays the maximum-likelihood one where it matters."""
    return max(0.5 * float(np.mean(data)), 1e-3)


def quantify(spectra: np.ndarray, meta: ScanMeta, elements: list[str], kfactors: KFactors,
             shift_kev: float = 0.0) -> list[Composition]:
    """One Composition per row of ``spectra`` (summed raw counts)."""
    spectra = np.atleast_2d(spectra)
    if not elements:
        return [Composition({}, {}, {}, float(s.sum()), True, ["no elements to quantify"]) for s in spectra]
    model = build_model(meta, elements, shift_kev)
    fits = [_line_intensities(s, model) for s in spectra]
    k = np.array([kfactors.values[ln] for ln in model.lines])
    rows = [i for i, (intensity, _) in enumerate(fits) if intensity.sum() >= MIN_LINE_COUNTS]
    # The reported values are exspy's (one call for every spectrum); σ comes from our propagation.
    wt_ex, at_ex = exspy_cliff_lorimer(np.array([fits[i][0] for i in rows]), k, model.lines) if rows else ((), ())
    values = dict(zip(rows, zip(wt_ex, at_ex, strict=True), strict=True))
    weights = np.array([xray.atomic_weight(el) for el in elements])
    return [_composition(s, model, elements, k, weights, *fits[i], values.get(i)) for i, s in enumerate(spectra)]


def _line_intensities(spectrum: np.ndarray, model: Model) -> tuple[np.ndarray, np.ndarray]:
    """The named lines' fitted intensities and their covariance."""
    coef, cov = fit(spectrum, model)
    index = [model.families.index(ln) for ln in model.lines]
    return coef[index], cov[np.ix_(index, index)]


def _composition(spectrum: np.ndarray, model: Model, elements: list[str], k: np.ndarray, weights: np.ndarray,
                 intensity: np.ndarray, icov: np.ndarray,
                 exspy_values: tuple[np.ndarray, np.ndarray] | None) -> Composition:
    sig_i = np.sqrt(np.clip(np.diag(icov), 0, None))
    intensities = {ln: (float(i), float(s)) for ln, i, s in zip(model.lines, intensity, sig_i, strict=True)}
    total = float(np.asarray(spectrum).sum())
    if exspy_values is None:
        return Composition({}, {}, intensities, total, True,
                           [f"vacuum: only {intensity.sum():.0f} counts in the element lines; not quantified"])
    _, wt_cov, _, at_cov = cliff_lorimer(intensity, icov, k, weights)
    wt, at = exspy_values
    warnings = [f"{ln}: no significant intensity (clipped at 0)" for ln, i in zip(model.lines, intensity, strict=True)
                if i <= 0]
    return Composition(
        at_pct=_percent(elements, at, at_cov),
        wt_pct=_percent(elements, wt, wt_cov),
        intensities=intensities, total_counts=total, vacuum=False, warnings=warnings,
    )


def cliff_lorimer(intensity: np.ndarray, icov: np.ndarray, k: np.ndarray,
                  atomic_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weight and atomic fractions with their covariances (analytic Jacobians).

    w_i = k_i I_i / Σ k_j I_j ;  x_i = (w_i / A_i) / Σ (w_j / A_j) = (k_i I_i / A_i) / Σ (k_j I_j / A_j)
    """
    def normalise(u: np.ndarray, ucov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = u.sum()
        frac = u / s
        jac = (np.eye(len(u)) - frac[:, None]) / s  # d(u_i/s)/du_j = (δ_ij − frac_i)/s
        return frac, jac @ ucov @ jac.T

    scale_w = np.diag(k)
    wt, wt_cov = normalise(k * intensity, scale_w @ icov @ scale_w)
    scale_a = np.diag(k / atomic_weights)
    at, at_cov = normalise(k * intensity / atomic_weights, scale_a @ icov @ scale_a)
    return wt, wt_cov, at, at_cov


def estimate_shift(spectrum: np.ndarray, meta: ScanMeta, elements: list[str], max_shift_kev: float = 0.08,
                   step_kev: float = 0.005) -> float:
    """Energy-calibration error: the shift of the line positions that fits the sum spectrum best."""
    if not elements or spectrum.sum() <= 0:
        return 0.0
    best, best_chi = 0.0, np.inf
    for shift in np.arange(-max_shift_kev, max_shift_kev + step_kev / 2, step_kev):
        model = build_model(meta, elements, float(shift))
        coef, _ = fit(spectrum, model, max_passes=3)  # ranks shifts; the sum spectrum has counts enough
        chi = float(np.sum(pulls(spectrum, model, coef) ** 2))
        if chi < best_chi:
            best, best_chi = float(shift), chi
    return best


def _percent(elements: list[str], frac: np.ndarray, cov: np.ndarray) -> dict[str, tuple[float, float]]:
    """Fractions and their covariance as {element: (percent, 1σ percent)}."""
    sigma = np.sqrt(np.clip(np.diag(cov), 0, None))
    return {el: (100 * float(f), 100 * float(s)) for el, f, s in zip(elements, frac, sigma, strict=True)}
