"""Element identification, configurational entropy and the follow-up verdict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edxlive.service import hsio
from edxlive.service.pipeline.elements import ElementError, identify_elements, validate_elements
from edxlive.service.pipeline.entropy import configurational_entropy
from edxlive.service.pipeline.quantify import Composition
from edxlive.service.pipeline.verdict import Member, build_verdict


def _sum_spectrum(path: Path):  # type: ignore[no-untyped-def]
    sig = hsio.load_eds(path)
    meta = hsio.meta_from_signal(sig, path.stem, frames=1)
    return np.asarray(sig.data).reshape(-1, meta.channels).sum(axis=0, dtype=np.float64), meta


def test_sio2_is_identified_as_si_and_o(shared_data: Path) -> None:
    """No elements in the file's metadata, calibration ~+35 eV off: Si and O, plus the C film and Cu grid."""
    spec, meta = _sum_spectrum(shared_data / "hspy" / "SiO2_EDS_Spectrum_Image.hspy")
    assert not meta.elements
    found = set(identify_elements(spec, meta))
    assert {"Si", "O"} <= found
    assert found <= {"Si", "O", "C", "Cu", "N"}


def test_chevkinite_major_elements(shared_data: Path) -> None:
    spec, meta = _sum_spectrum(shared_data / "bruker" / "30x30_instructively_packed_16bit_compressed.bcf")
    found = set(identify_elements(spec, meta))
    assert {"O", "Si", "Ca", "Ti", "Fe"} <= found


def test_unknown_element_names_the_remedy() -> None:
    assert validate_elements(["cu", " Zn", "S"]) == ["Cu", "Zn", "S"]
    with pytest.raises(ElementError, match="Xx") as err:
        validate_elements(["Cu", "Xx"])
    assert "\n" not in str(err.value)


def test_entropy_of_an_ideal_six_cation_sulfide() -> None:
    at = {el: 50 / 6 for el in ("Cu", "Zn", "Ag", "In", "Cd", "Mn")} | {"S": 50.0}
    s = configurational_entropy(at)
    assert s.per_site_R == pytest.approx(math.log(6))
    assert s.per_atom_R == pytest.approx(0.5 * math.log(6))  # ≈ 0.9 R, as the reference paper quotes
    assert s.ideal_site_R == pytest.approx(math.log(6))


def test_entropy_anions_are_configurable() -> None:
    at = {"Cu": 25.0, "Fe": 25.0, "O": 50.0}
    assert configurational_entropy(at, anions=["O"]).per_site_R == pytest.approx(math.log(2))
    # with the default anion (S) oxygen counts as a cation site: a different, larger value
    assert configurational_entropy(at).per_site_R > math.log(2)
    assert configurational_entropy({}).per_site_R == 0.0


def _comp(at: dict[str, tuple[float, float]], counts: float = 1e5) -> Composition:
    return Composition(at, {}, {}, counts, False)


def _member(wf: str, cid: int, at: dict[str, tuple[float, float]], area: float, cpp: float = 40.0) -> Member:
    return Member(wf, cid, _comp(at), area, cpp, "phase")


def test_two_distinct_phases_warrant_follow_up() -> None:
    a = {"Cu": (25.0, 0.5), "Fe": (25.0, 0.5), "S": (50.0, 0.6)}
    b = {"Zn": (40.0, 0.5), "Cd": (10.0, 0.4), "S": (50.0, 0.6)}
    v = build_verdict([_member("pca_gmm", 0, a, 0.5), _member("pca_gmm", 1, b, 0.5)], 0.9, {})
    assert v["follow_up"] is True
    assert any("differ" in r for r in v["reasons"])


def test_clusters_within_three_sigma_are_one_phase() -> None:
    a = {"Cu": (25.0, 1.0), "Fe": (25.0, 1.0), "S": (50.0, 1.0)}
    b = {"Cu": (26.5, 1.0), "Fe": (23.5, 1.0), "S": (50.0, 1.0)}
    v = build_verdict([_member("pca_gmm", 0, a, 0.5), _member("pca_gmm", 1, b, 0.5)], 0.9, {})
    assert v["follow_up"] is False
    assert len([ph for ph in v["phases"] if ph["role"] == "phase"]) == 1


@pytest.mark.parametrize(("ari", "outside", "warned"), [(0.92, 0.49, True), (0.94, 0.75, False), (0.4, 0.9, True),
                                                      (0.92, None, False)])
def test_the_agreement_reason_looks_past_the_film(ari: float, outside: float | None, warned: bool) -> None:
    """A film filling the map keeps the all-pixel ARI high while the workflows split the particles
    differently: the ARI outside the shared largest cluster says so."""
    a = {"Cu": (25.0, 0.5), "Fe": (25.0, 0.5), "S": (50.0, 0.6)}
    v = build_verdict([_member("pca_gmm", 0, a, 0.5)], ari, {}, outside)
    (reason,) = [r for r in v["reasons"] if r.startswith("agreement")]
    assert ("disagree" in reason or "differently" in reason) is warned, reason
    assert ("outside the largest cluster" in reason) is (outside is not None and ari >= 0.5)


def test_vacuum_and_support_are_not_phases() -> None:
    a = {"Cu": (25.0, 0.5), "Fe": (25.0, 0.5), "S": (50.0, 0.6)}
    vacuum = Member("pca_gmm", 1, Composition({}, {}, {}, 3.0, True), 0.2, 0.1, "vacuum")
    carbon = Member("pca_gmm", 2, _comp({"C": (97.0, 1.0), "Cu": (3.0, 0.5)}), 0.3, 5.0, "support")
    v = build_verdict([_member("pca_gmm", 0, a, 0.5), vacuum, carbon], None, {})
    assert v["follow_up"] is False
    roles = sorted(ph["role"] for ph in v["phases"])
    assert roles == ["phase", "support", "vacuum"]
