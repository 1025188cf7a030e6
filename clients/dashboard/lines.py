"""Element line energies for marking cluster-mean spectra.

From xraylib (a small C library, already a dependency) rather than the service's own
``pipeline.xray``: the dashboard may not import the pipeline (import-linter contract).
"""

from __future__ import annotations

from functools import cache


@cache
def marker_line(element: str, e_max_kev: float) -> tuple[str, float] | None:
    """The strongest line family visible below ``e_max_kev``: Kα, else Lα, else Mα."""
    try:
        import xraylib

        z = xraylib.SymbolToAtomicNumber(element)
    except Exception:
        return None
    for name, line in (("Kα", xraylib.KA1_LINE), ("Lα", xraylib.LA1_LINE), ("Mα", xraylib.MA1_LINE)):
        try:
            energy = float(xraylib.LineEnergy(z, line))
        except Exception:
            continue
        if 0.1 < energy < e_max_kev:
            return f"{element} {name}", energy
    return None
