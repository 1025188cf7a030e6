"""Configurational entropy of the cation sublattice: S/R = −Σ xᵢ ln xᵢ over cation fractions.

Reported per cation site and per atom. The per-atom value multiplies by the cation share of all
atoms (½ for MS), as the reference paper quotes it: an ideal 6-cation MS gives ½·ln 6 ≈ 0.9R.
The ideal maximum, ln(n cations), is given beside both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ANIONS_DEFAULT = ("S",)
CATION_FLOOR_AT_PCT = 0.5  # cations below this are noise, not sublattice members


@dataclass
class Entropy:
    per_site_R: float
    per_atom_R: float
    ideal_site_R: float
    ideal_atom_R: float
    cations: dict[str, float]
    anions: list[str]
    cation_share: float

    def to_json(self) -> dict[str, Any]:
        return {"per_cation_site": round(self.per_site_R, 4), "per_atom": round(self.per_atom_R, 4),
                "ideal_per_cation_site": round(self.ideal_site_R, 4), "ideal_per_atom": round(self.ideal_atom_R, 4),
                "cation_fractions": {k: round(v, 4) for k, v in self.cations.items()}, "anions": self.anions}


def configurational_entropy(at_pct: Mapping[str, float], anions: Sequence[str] = ANIONS_DEFAULT) -> Entropy:
    anion_set = set(anions)
    cations = {el: v for el, v in at_pct.items() if el not in anion_set and v >= CATION_FLOOR_AT_PCT}
    total = sum(at_pct.values())
    cation_total = sum(cations.values())
    if cation_total <= 0 or total <= 0:
        return Entropy(0.0, 0.0, 0.0, 0.0, {}, list(anions), 0.0)
    x = {el: v / cation_total for el, v in cations.items()}
    s = -sum(f * math.log(f) for f in x.values() if f > 0)
    share = cation_total / total
    ideal = math.log(len(x)) if x else 0.0
    return Entropy(s, s * share, ideal, ideal * share, x, list(anions), share)
