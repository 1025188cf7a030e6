"""Cliff–Lorimer k-factors: from a user file, or computed from first principles.

Convention (exspy's): C_A / C_B = k_AB · I_A / I_B, with C in weight fraction and I the
intensity of the named line. A k-factor is stored per line; only ratios matter.

Theoretical default (see docs/quantification.md). For a thin film the generated intensity of a
line per unit weight fraction is I_A ∝ Q_A · ω_A · a_A · ε(E_A) / A_A, so

    k_A ∝ A_A / (Q_A · ω_A · a_A · ε(E_A))

- Q: ionisation cross-section of the line's shell at the beam energy: Bethe's formula with
  Powell's constants and the relativistic correction for the incident electron
  (Williams & Carter, Transmission Electron Microscopy, ch. 35).
- ω: fluorescence yield and a: the line's share of the shell's radiative decays (xraylib).
- ε: detector efficiency: transmission of a 100 nm polymer (C) + 30 nm Al window and a 20 nm Si
  dead layer, times absorption in 450 µm of Si (xraylib mass attenuation). Super-X-like.
- A: atomic weight.
Normalised so that Si Kα = 1. Accuracy: typically 10–20 % against measured k-factors for K
lines, worse for L and M lines; that is why a user file always wins.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edxlive.service.pipeline import xray
from edxlive.service.pipeline.meta import DetectorMeta, ScanMeta

ELECTRON_REST_KEV = 510.999

THEORETICAL = ("theoretical: Bethe cross-section (Powell constants, relativistic), xraylib fluorescence "
               "yields and line fractions, Super-X-like detector efficiency; normalised to Si_Ka = 1")


class KFactorError(ValueError):
    """A k-factor problem, in one line, with the remedy."""


@dataclass
class KFactors:
    values: dict[str, float]
    source: str


def load_kfactors(path: Path) -> KFactors:
    """Read a TOML file with a ``[kfactors]`` table such as ``"Cu_Ka" = 1.60``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise KFactorError(f"k-factor file {path} does not exist; give a TOML file with a [kfactors] table") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KFactorError(f"k-factor file {path} is not valid TOML ({exc}); "
                           'write lines like "Cu_Ka" = 1.60 under [kfactors]') from None
    table = data.get("kfactors")
    if not isinstance(table, dict) or not table:
        raise KFactorError(f"k-factor file {path} has no [kfactors] table; add one with lines like \"Cu_Ka\" = 1.60")
    values = {}
    for line, k in table.items():
        _check_line(line, path)
        if not isinstance(k, int | float) or not math.isfinite(k) or k <= 0:
            raise KFactorError(f"k-factor file {path}: {line} = {k!r} must be a positive number")
        values[line] = float(k)
    return KFactors(values, f"file: {path}")


def _check_line(line: str, path: Path) -> None:
    element, _, name = line.partition("_")
    if element not in xray.known_elements() or f"{element}_{name}" not in xray.element_lines(element):
        raise KFactorError(f"k-factor file {path}: {line!r} is not an X-ray line; use names like Cu_Ka, Ag_La, Pb_Ma")


def resolve_kfactors(lines: list[str], meta: ScanMeta, path: Path | None) -> KFactors:
    """The k-factors for ``lines``: the user's file when given (every line must be in it), else theory."""
    if path is None:
        return theoretical_kfactors(lines, meta.beam_energy_kev, meta.detector)
    kf = load_kfactors(path)
    missing = [ln for ln in lines if ln not in kf.values]
    if missing:
        raise KFactorError(f"k-factor file {path} lacks {', '.join(missing)}; add them (never assumed 1.0)")
    return KFactors({ln: kf.values[ln] for ln in lines}, kf.source)


def theoretical_kfactors(lines: list[str], beam_energy_kev: float = 200.0,
                         detector: DetectorMeta | None = None) -> KFactors:
    ref = _generated(["Si_Ka"][0], beam_energy_kev)
    return KFactors({ln: ref / _generated(ln, beam_energy_kev) for ln in lines}, THEORETICAL)


def _generated(line: str, e0: float) -> float:
    """Relative detected intensity per unit weight fraction of the line's element."""
    element = line.split("_")[0]
    z = xray.atomic_number(element)
    shell, n_electrons, b, c = _shell(line)
    edge = _edge_kev(z, shell)
    q = _bethe(e0, edge, n_electrons, b, c)
    omega, fraction = _yield_and_fraction(z, line, shell)
    eff = detector_efficiency(xray.line_energy(line))
    return q * omega * fraction * eff / xray.atomic_weight(element)


def _shell(line: str) -> tuple[str, int, float, float]:
    fam = xray.family(line)
    # (shell, electrons in it, Powell's b_s, c_s)
    return {"K": ("K", 2, 0.35, 1.0), "L": ("L3", 4, 0.25, 1.0), "M": ("M5", 6, 0.25, 1.0)}[fam]


def _bethe(e0: float, edge: float, n: int, b: float, c: float) -> float:
    """Bethe cross-section with the relativistic velocity of the incident electron (arbitrary units)."""
    gamma = 1.0 + e0 / ELECTRON_REST_KEV
    beta2 = 1.0 - 1.0 / gamma**2
    e_kin = 0.5 * ELECTRON_REST_KEV * beta2  # the non-relativistic "energy" m v² / 2 that Bethe uses
    u = e_kin / edge
    if u <= 1.0:
        return 0.0
    return n * b / (e_kin * edge) * (math.log(c * u) + math.log(gamma**2) - beta2 + 1e-12)


def _edge_kev(z: int, shell: str) -> float:
    import xraylib

    return float(xraylib.EdgeEnergy(z, getattr(xraylib, f"{shell}_SHELL")))


def _yield_and_fraction(z: int, line: str, shell: str) -> tuple[float, float]:
    import xraylib

    name = line.split("_")[1]
    transitions = {"Ka": ("KL3_LINE", "KL2_LINE"), "La": ("L3M5_LINE", "L3M4_LINE"), "Ma": ("M5N7_LINE", "M5N6_LINE")}
    try:
        omega = float(xraylib.FluorYield(z, getattr(xraylib, f"{shell}_SHELL")))
        fraction = sum(float(xraylib.RadRate(z, getattr(xraylib, t))) for t in transitions.get(name, ()))
    except ValueError:
        omega, fraction = 0.0, 0.0
    if omega <= 0 or fraction <= 0:  # xraylib lacks data for some light-element L/M lines
        omega = omega or _omega_estimate(z, shell)
        fraction = fraction or 0.8
    return omega, fraction


def _omega_estimate(z: int, shell: str) -> float:
    """Bambynek-style fit ω = Z⁴/(a + Z⁴) where tables are missing."""
    a = {"K": 1.12e6, "L3": 1.0e8, "M5": 1.0e9}[shell]
    return z**4 / (a + z**4)


def detector_efficiency(energy_kev: float) -> float:
    """Window + dead layer transmission times Si absorption (thicknesses in cm, densities g/cm³)."""
    import xraylib

    def mu(z: int) -> float:
        return float(xraylib.CS_Total(z, max(energy_kev, 0.1)))

    window = math.exp(-mu(6) * 1.4 * 100e-7 - mu(13) * 2.70 * 30e-7)
    dead = math.exp(-mu(14) * 2.33 * 20e-7)
    absorbed = 1.0 - math.exp(-mu(14) * 2.33 * 0.045)
    return window * dead * absorbed
