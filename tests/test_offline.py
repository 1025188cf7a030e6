"""`edxlive analyze`: real files in, a result folder out, and one clear line for every bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.procs import CMD, child_env


def _analyze(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*CMD, "analyze", *args, "-q"], capture_output=True, text=True, timeout=timeout,
                          env=child_env(), check=False)


def _one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("velox/Test_SI_16x16_ReducedData_215kx.emd", ["no spectrum stream", "without pruning"]),
        ("hspy/SiO2_HAADF_Image.hspy", ["SiO2_HAADF_Image.hspy"]),
    ],
)
def test_wrong_files_get_one_line(shared_data: Path, tmp_path: Path, name: str, needles: list[str]) -> None:
    _one_line_error(_analyze(str(shared_data / name), "--out", str(tmp_path / "r")), *needles)


def test_missing_file(tmp_path: Path) -> None:
    _one_line_error(_analyze(str(tmp_path / "nope.bcf")), "nope.bcf")


def test_bad_settings_are_refused(shared_data: Path, tmp_path: Path) -> None:
    f = str(shared_data / "bruker" / "test_TEM.bcf")
    _one_line_error(_analyze(f, "--elements", "Cu,Qq"), "Qq")
    _one_line_error(_analyze(f, "--workflow", "kmeans"), "kmeans")
    _one_line_error(_analyze(f, "--gmm-k", "0"), "gmm")
    bad = tmp_path / "k.toml"
    bad.write_text('[kfactors]\n"Cu_Ka" = "one"\n')
    _one_line_error(_analyze(f, "--kfactors", str(bad), "--elements", "Cu,O"), str(bad))


def test_single_spectrum_is_quantified(shared_data: Path, tmp_path: Path) -> None:
    out = _analyze(str(shared_data / "hspy" / "EDS_TEM_FePt_nanoparticles.hspy"), "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "r" / "result.json").read_text())
    text = json.dumps(doc)
    assert "Fe" in text and "Pt" in text


def test_spectrum_image_result_folder(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "r"
    out = _analyze(str(shared_data / "hspy" / "SiO2_EDS_Spectrum_Image.hspy"), "--out", str(folder),
                   "--workflow", "pca_gmm")
    assert out.returncode == 0, out.stderr
    doc = json.loads((folder / "result.json").read_text())
    assert doc["elements_source"].startswith("identified")
    assert {"Si", "O"} <= set(doc["elements"])
    for name in ("spectrum_image.zspy", "labels_pca_gmm.npy", "memberships_pca_gmm.npy",
                 "mean_spectra_pca_gmm.hspy", "quantification.csv"):
        assert (folder / name).exists(), name
    import hyperspy.api as hs

    spectra = hs.load(folder / "mean_spectra_pca_gmm.hspy")
    assert spectra.metadata.Signal.signal_type == "EDS_TEM"


def test_many_files_from_a_folder_each_get_a_result_folder(shared_data: Path, tmp_path: Path) -> None:
    """A folder expands to its files; each gets <out>/<stem>; a bad file fails alone (exit 1)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("bruker/16x16_12bit_packed_8bit.bcf", "bruker/test_TEM.bcf", "hspy/SiO2_HAADF_Image.hspy"):
        (inputs / Path(name).name).symlink_to(shared_data / name)
    out = _analyze(str(inputs), "--out", str(tmp_path / "r"), "--workflow", "pca_gmm", "--executor", "local")
    assert out.returncode == 1, out.stderr
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["16x16_12bit_packed_8bit", "test_TEM"]
    for folder in (tmp_path / "r").iterdir():
        assert (folder / "result.json").is_file()
    assert out.stdout.count("results: ") == 2
    assert "SiO2_HAADF_Image.hspy" in out.stderr and out.stderr.count("error: ") == 1


def test_bad_executor_is_one_line(tmp_path: Path) -> None:
    _one_line_error(_analyze(str(tmp_path / "a.bcf"), "--executor", "dask"), "--executor", "tcp://")
