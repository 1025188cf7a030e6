"""Cliff–Lorimer through exspy's own public API, for the values that edxlive reports.

exspy's ``EDSTEMSpectrum.quantification(method="CL")`` is what microscopists run offline; the
reported wt% and at% come from it (and from ``exspy.material.weight_to_atomic``), so they are the
numbers HyperSpy users would get for the same line intensities and k-factors. exspy returns no
uncertainties, so quantify.py propagates the fit covariance through the same formulas for σ.
All spectra go through in one call, as exspy's navigation dimension: its cost is per element,
not per cluster.
"""

from __future__ import annotations

import numpy as np


def exspy_cliff_lorimer(intensity: np.ndarray, k: np.ndarray, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Weight and atomic fractions (0–1) for rows of named-line intensities (spectra × lines)."""
    import exspy
    from hyperspy.signals import BaseSignal

    intensity = np.atleast_2d(np.asarray(intensity, dtype=np.float64))
    n = intensity.shape[0]
    if len(lines) == 1:  # exspy needs two lines for a ratio; one element is the whole of the sample
        return np.ones((n, 1)), np.ones((n, 1))
    elements = [line.split("_")[0] for line in lines]
    signals = []
    for j, line in enumerate(lines):
        sig = BaseSignal(intensity[:, j].copy()).T  # navigation: the spectra
        sig.metadata.set_item("Sample.elements", [elements[j]])
        sig.metadata.set_item("Sample.xray_lines", [line])
        signals.append(sig)
    holder = exspy.signals.EDSTEMSpectrum(np.zeros((n, 1)))
    # exspy divides by each line's intensity; a line clipped at zero gives inf there and 0 wt% in the end.
    with np.errstate(divide="ignore", invalid="ignore"):
        wt = holder.quantification(signals, method="CL", factors=list(map(float, k)), composition_units="weight",
                                   navigation_mask=None, plot_result=False, take_off_angle=0.0,
                                   show_progressbar=False)
    wt_pct = np.column_stack([np.atleast_1d(s.data) for s in wt])
    at_pct = np.atleast_2d(exspy.material.weight_to_atomic(wt_pct.T, elements)).T
    return wt_pct / 100.0, at_pct / 100.0
