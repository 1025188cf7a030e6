"""X-ray line data and the detector's forward model.

Line energies and relative weights come from exspy's element database, so edxlive names lines
exactly as exspy does (``Cu_Ka``, ``Ag_La``). The detector broadens a line of energy E to a
Gaussian of FWHM² = FWHM(Mn Kα)² + 2.5·(E − 5.895 keV)·1000 eV (Fiori & Newbury; E in keV,
widths in eV), the same form exspy uses.

``synthesize_spectrum`` is the forward model used by the phantoms and the accuracy tests: the
intensity of an element's quantification line obeys the Cliff–Lorimer convention
I_A ∝ w_A / k_A (weight fractions), its family's other lines follow exspy's weights, and a
bremsstrahlung-like background sits underneath.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from edxlive.service.pipeline.meta import ScanMeta

if TYPE_CHECKING:
    from edxlive.service.pipeline.kfactors import KFactors

MN_KA_KEV = 5.8987


@cache
def _db() -> dict[str, Any]:
    from exspy._misc.elements import elements

    return elements


def known_elements() -> frozenset[str]:
    return frozenset(_db())


def element_lines(element: str) -> dict[str, tuple[float, float]]:
    """All lines of an element: name -> (energy keV, weight relative to its family's main line)."""
    lines = _db()[element]["Atomic_properties"]["Xray_lines"]
    return {f"{element}_{name}": (float(v["energy (keV)"]), float(v["weight"])) for name, v in lines.items()}


def line_energy(line: str) -> float:
    element, name = line.split("_", 1)
    return float(_db()[element]["Atomic_properties"]["Xray_lines"][name]["energy (keV)"])


def atomic_weight(element: str) -> float:
    return float(_db()[element]["General_properties"]["atomic_weight"])


def atomic_number(element: str) -> int:
    return int(_db()[element]["General_properties"]["Z"])


def family(line: str) -> str:
    """'Cu_Ka' -> 'K', 'Ag_Lb1' -> 'L'."""
    return line.split("_", 1)[1][0]


def fwhm_kev(energy_kev: float | np.ndarray, resolution_mn_ka_ev: float) -> float | np.ndarray:
    width_ev2 = resolution_mn_ka_ev**2 + 2.5 * (np.asarray(energy_kev) - MN_KA_KEV) * 1000.0
    return np.sqrt(np.maximum(width_ev2, 1.0)) / 1000.0


def quant_line(element: str, beam_energy_kev: float = 200.0, energy_max_kev: float = 20.0) -> str:
    """The line to quantify an element by: Kα where it lies in range, else Lα, else Mα."""
    lines = _db()[element]["Atomic_properties"]["Xray_lines"]
    limit = min(energy_max_kev, beam_energy_kev / 1.5)
    for name in ("Ka", "La", "Ma"):
        if name in lines and 0.1 < float(lines[name]["energy (keV)"]) <= limit:
            return f"{element}_{name}"
    raise ValueError(f"{element} has no Ka, La or Ma line between 0.1 and {limit:.1f} keV")


def family_lines(line: str) -> dict[str, tuple[float, float]]:
    """The lines of ``line``'s family (K, L or M) with their exspy weights."""
    element = line.split("_", 1)[0]
    fam = family(line)
    return {name: v for name, v in element_lines(element).items() if family(name) == fam}


def energy_max(meta: ScanMeta) -> float:
    return float(meta.energy_offset_kev + meta.energy_scale_kev * meta.channels)


def main_line_window(element: str, meta: ScanMeta, width_fwhm: float = 1.0) -> tuple[int, int] | None:
    """Channel range [lo, hi) of ±width·FWHM around the element's quantification line."""
    try:
        e = line_energy(quant_line(element, meta.beam_energy_kev, energy_max(meta)))
    except (KeyError, ValueError):
        return None
    half = width_fwhm * float(fwhm_kev(e, meta.detector.energy_resolution_mn_ka_ev))
    lo = max(0, meta.channel_of(e - half))
    hi = min(meta.channels, meta.channel_of(e + half) + 1)
    return (lo, hi) if hi > lo else None


def gaussian_profile(energy_kev: float, meta: ScanMeta) -> np.ndarray:
    """A unit-area line profile on the channel grid (integrated over each channel's width)."""
    from scipy.special import erf

    sigma = float(fwhm_kev(energy_kev, meta.detector.energy_resolution_mn_ka_ev)) / 2.3548
    edges = meta.energy_offset_kev + meta.energy_scale_kev * (np.arange(meta.channels + 1) - 0.5)
    cdf = 0.5 * (1 + erf((edges - energy_kev) / (np.sqrt(2) * sigma)))
    return np.diff(cdf)


def family_profile(line: str, meta: ScanMeta) -> np.ndarray:
    """The family's spectrum per unit intensity of its main line (weights as in exspy)."""
    out = np.zeros(meta.channels)
    for _, (energy, weight) in family_lines(line).items():
        out += weight * gaussian_profile(energy, meta)
    return out


def bremsstrahlung(meta: ScanMeta) -> np.ndarray:
    """A smooth continuum: Kramers' (E0 − E)/E, rolled off below ~1 keV by window absorption.

    Normalised to unit sum over the channels above 0.1 keV.
    """
    e = meta.energy_axis_kev
    shape = np.where(e > 0.1, (meta.beam_energy_kev - e) / np.maximum(e, 0.1), 0.0)
    shape *= 1.0 - np.exp(-((np.maximum(e, 0.0) / 0.9) ** 3))
    total = shape.sum()
    return shape / total if total > 0 else shape


def synthesize_spectrum(weight_fractions: dict[str, float], meta: ScanMeta, kfactors: KFactors,
                        total_counts: float, background_fraction: float = 0.15) -> np.ndarray:
    """Expected counts per channel for a composition (weight fractions, any normalisation).

    The element lines share ``(1 − background_fraction) · total_counts`` with main-line
    intensities I_A ∝ w_A / k_A; the background gets the rest.
    """
    emax = energy_max(meta)
    total_w = sum(weight_fractions.values())
    raw = {}
    for element, w in weight_fractions.items():
        line = quant_line(element, meta.beam_energy_kev, emax)
        raw[line] = (w / total_w) / kfactors.values[line]
    # I_A (the named line's intensity) = c · w_A/k_A exactly; the family's other lines ride on top,
    # so c is set by the total that all lines together must carry.
    c = (1.0 - background_fraction) * total_counts / sum(r * _family_weight(line) for line, r in raw.items())
    spectrum = np.zeros(meta.channels)
    for line, r in raw.items():
        spectrum += c * r * family_profile(line, meta)
    return spectrum + background_fraction * total_counts * bremsstrahlung(meta)


def _family_weight(line: str) -> float:
    """Sum of the family's weights relative to the main line (so totals split as intended)."""
    return sum(w for _, w in family_lines(line).values())
