"""Which elements to quantify: validate a given list, or identify them from the sum spectrum.

Identification by fitting, not by peak lookup alone: with the elements found so far, the same
line model that quantifies (quantify.build_model) is fitted to the sum spectrum; the most
significant peak left in the residual (≥ 5σ, Poisson) is explained by the candidate element,
among those with a line within max(50 eV, ½ FWHM) of it (after the calibration shift), whose
addition lowers χ² the most.
Common elements are preferred over exotic ones at equal fit. The energy calibration shift is
first estimated from the strongest peaks against common Kα/Lα lines, then re-estimated as
elements are found, so a spectrum off by tens of eV is still read correctly. Only residual peaks
holding at least 2 % of the strongest line count, and not within 1.2 FWHM of a strong line of the
quantified family of an element already found (the wing of a big peak),, so the small misfits of a high-count spectrum
are not taken for elements.
A candidate must also show its own quantification line (Kα where in range) at ≥ 3σ.
A peak that no candidate explains well is set aside, and the search goes on with the next.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.ndimage import gaussian_filter1d

from edxlive.service.pipeline import xray
from edxlive.service.pipeline.meta import ScanMeta

# Elements a microscopist expects to see named; exotic ones must fit clearly better to be chosen.
_COMMON = ("C N O F Na Mg Al Si P S Cl K Ca Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Sr Y Zr Nb Mo Ru Rh Pd Ag Cd In Sn "
           "Sb Te Ba La Ce Nd Hf Ta W Re Os Ir Pt Au Pb Bi")
COMMON = frozenset(_COMMON.split())
# Never present as a solid specimen's constituent (no stable isotope, or a noble gas rarely seen).
NEVER = frozenset(["He", "Ne", "Kr", "Xe", "Rn", "Tc", "Pm", "Po", "At", "Fr", "Ra", "Ac"])
EXOTIC_PENALTY = 0.7  # an exotic element must reduce chi2 by 1/0.7 times as much as a common one


class ElementError(ValueError):
    """An unknown element, in one line with the remedy."""


def validate_elements(names: Iterable[str]) -> list[str]:
    known = xray.known_elements()
    out = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        symbol = name[:1].upper() + name[1:].lower()
        if symbol not in known:
            raise ElementError(f"unknown element {raw!r}; give chemical symbols such as Cu, Zn, S")
        if symbol not in out:
            out.append(symbol)
    return out


def unquantifiable(elements: list[str], meta: ScanMeta) -> list[str]:
    """Elements none of whose K, L or M main lines lies in the fitted energy range."""
    from edxlive.service.pipeline.quantify import FIT_RANGE_KEV

    emax = min(FIT_RANGE_KEV[1], xray.energy_max(meta))
    out = []
    for el in elements:
        try:
            line = xray.quant_line(el, meta.beam_energy_kev, emax)
        except ValueError:
            line = None
        if line not in _families(el, FIT_RANGE_KEV[0], emax):
            out.append(el)
    return out


def _families(element: str, emin: float, emax: float) -> list[str]:
    from edxlive.service.pipeline.quantify import _families_in_range

    return _families_in_range([element], emin, emax)


def identify_elements(spectrum: np.ndarray, meta: ScanMeta, significance: float = 5.0,
                      max_elements: int = 12) -> list[str]:
    from edxlive.service.pipeline.quantify import estimate_shift

    spec = np.asarray(spectrum, dtype=np.float64)
    found: list[str] = []
    skipped: list[float] = []
    shift = initial_shift(spec, meta)
    floor = 0.02 * _strongest_peak(spec, meta)
    for _ in range(3 * max_elements):
        peak = _worst_residual_peak(spec, meta, found, shift, significance, skipped, floor)
        if peak is None or len(found) >= max_elements:
            break
        element = _best_candidate(spec, meta, found, shift, peak)
        if element is None:
            skipped.append(peak)
            continue
        found.append(element)
        shift = estimate_shift(spec, meta, found)
    return sorted(found, key=xray.atomic_number)


def _chi2(spec: np.ndarray, meta: ScanMeta, elements: list[str], shift: float) -> tuple[float, np.ndarray, slice]:
    from edxlive.service.pipeline.quantify import build_model, fit, pulls

    model = build_model(meta, elements, shift)
    coef, _ = fit(spec, model)
    normalised = pulls(spec, model, coef)
    return float(np.sum(normalised**2)), normalised, model.rng


def _fwhm_channels(meta: ScanMeta) -> float:
    return max(2.0, float(xray.fwhm_kev(3.0, meta.detector.energy_resolution_mn_ka_ev)) / meta.energy_scale_kev)


def _peaks(signal: np.ndarray, meta: ScanMeta) -> np.ndarray:
    """Channel indices of local maxima of the line-width-smoothed signal, strongest first."""
    from scipy.signal import find_peaks

    fw = _fwhm_channels(meta)
    smooth = gaussian_filter1d(signal, fw / 2.355)
    idx, _ = find_peaks(smooth, distance=max(1, int(fw / 2)))
    return idx[np.argsort(smooth[idx])[::-1]]


def _strongest_peak(spec: np.ndarray, meta: ScanMeta) -> float:
    from edxlive.service.pipeline.quantify import build_model, fit

    model = build_model(meta, [], 0.0)
    coef, _ = fit(spec, model)
    excess = gaussian_filter1d(spec[model.rng] - model.design @ coef, _fwhm_channels(meta) / 2.355)
    return float(excess.max(initial=0.0))


def initial_shift(spec: np.ndarray, meta: ScanMeta, n_peaks: int = 6, max_shift: float = 0.08) -> float:
    """Calibration error from the strongest peaks: median offset to the nearest common Kα/Lα line."""
    e = meta.energy_axis_kev
    refs = np.array([xray.line_energy(f"{el}_{ln}") for el in COMMON for ln in ("Ka", "La")
                     if f"{el}_{ln}" in xray.element_lines(el)])
    offsets = []
    for i in _peaks(spec, meta)[: 3 * n_peaks]:
        if e[i] < 0.2:
            continue
        d = e[i] - refs
        nearest = d[np.argmin(np.abs(d))]
        if abs(nearest) <= max_shift:
            offsets.append(nearest)
        if len(offsets) >= n_peaks:
            break
    # channel energies move by -offset so that the lines land where the peaks are
    return -float(np.median(offsets)) if len(offsets) >= 2 else 0.0


def _worst_residual_peak(spec: np.ndarray, meta: ScanMeta, found: list[str], shift: float, significance: float,
                         skipped: list[float], floor: float) -> float | None:
    from edxlive.service.pipeline.quantify import build_model, fit

    model = build_model(meta, found, shift)
    coef, _ = fit(spec, model)
    expected = np.maximum(model.design @ coef, 1.0)
    fw = _fwhm_channels(meta)
    excess = gaussian_filter1d(spec[model.rng] - model.design @ coef, fw / 2.355)
    # a real peak stands out in counts (floor) and in Poisson significance over a line width
    z = excess / np.sqrt(gaussian_filter1d(expected, fw / 2.355) / (fw * 1.06))
    e = meta.energy_axis_kev[model.rng] + shift
    for i in _peaks(spec[model.rng] - model.design @ coef, meta)[:50]:
        if z[i] < significance or excess[i] < floor:
            continue
        if all(abs(e[i] - s) > _tolerance(s, meta) for s in skipped) and not _beside_found(e[i], found, meta):
            return float(e[i])
    return None


def _beside_found(energy: float, found: list[str], meta: ScanMeta) -> bool:
    """Within 1.2 FWHM of a strong line already found: the wing of a big peak, not a new element."""
    res = meta.detector.energy_resolution_mn_ka_ev
    emax = xray.energy_max(meta)
    for el in found:
        family = xray.family_lines(xray.quant_line(el, meta.beam_energy_kev, emax))
        if any(abs(e - energy) <= 1.2 * float(xray.fwhm_kev(e, res)) for e, w in family.values() if w >= 0.1):
            return True
    return False


def _tolerance(energy: float, meta: ScanMeta) -> float:
    return max(0.05, 0.5 * float(xray.fwhm_kev(energy, meta.detector.energy_resolution_mn_ka_ev)))


def _candidates(energy: float, meta: ScanMeta, found: list[str]) -> list[str]:
    tol = _tolerance(energy, meta)
    emax = xray.energy_max(meta)
    out = []
    for element in xray.known_elements():
        if element in found or element in NEVER or not 5 <= xray.atomic_number(element) <= 83:
            continue
        lines = xray.element_lines(element)
        if any(abs(e - energy) <= tol and w >= 0.1 and e <= emax for e, w in lines.values()):
            try:
                xray.quant_line(element, meta.beam_energy_kev, emax)
            except ValueError:
                continue
            out.append(element)
    return out


def _main_line_present(spec: np.ndarray, meta: ScanMeta, elements: list[str], shift: float) -> bool:
    """The last element's own quantification line (Kα where in range) stands ≥ 3σ in the fit.

    Without this, the low-energy wings of C and O peaks get 'explained' by 3d-metal L lines."""
    from edxlive.service.pipeline.quantify import build_model, fit

    model = build_model(meta, elements, shift)
    if model.lines[-1] not in model.families:  # e.g. B Kα at 0.18 keV: below the fitted range
        return False
    coef, cov = fit(spec, model)
    j = model.families.index(model.lines[-1])
    return bool(coef[j] > 3.0 * np.sqrt(max(cov[j, j], 0.0)))


def _family_prior(element: str, energy: float, meta: ScanMeta) -> float:
    """K lines are the likeliest explanation of a peak, then L, then M (cf. Si Kα vs W Mα)."""
    tol = _tolerance(energy, meta)
    near = [name for name, (e, w) in xray.element_lines(element).items() if abs(e - energy) <= tol and w >= 0.1]
    fams = {xray.family(n) for n in near}
    return 1.0 if "K" in fams else 0.8 if "L" in fams else 0.5


def _best_candidate(spec: np.ndarray, meta: ScanMeta, found: list[str], shift: float, energy: float) -> str | None:
    base, _, _ = _chi2(spec, meta, found, shift)
    best: tuple[float, str] | None = None
    for element in _candidates(energy, meta, found):
        if not _main_line_present(spec, meta, [*found, element], shift):
            continue
        gain = base - _chi2(spec, meta, [*found, element], shift)[0]
        score = gain * (1.0 if element in COMMON else EXOTIC_PENALTY) * _family_prior(element, energy, meta)
        if best is None or score > best[0]:
            best = (score, element)
    if best is None or best[0] < 25.0:  # less than a 5 sigma improvement: not this peak's cause
        return None
    return best[1]
