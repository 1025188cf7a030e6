"""The analysis reads the cube a block of rows at a time (memory: a 1024²-binned cube may be larger
than the machine's memory, and is a read-only memmap of accumulated.npy in the daemon's worker).
Every blocked path gives the numbers of the whole-matrix computation it replaced, bit for bit, on
inputs of more than one block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from edxlive.clients.phantoms import make_phantom
from edxlive.service.pipeline import preprocess, spectra, subsample
from edxlive.service.pipeline.accumulate import offline_bin
from edxlive.service.pipeline.analyze import analyze_cube
from edxlive.service.pipeline.blocks import release
from edxlive.service.pipeline.pca_gmm import PROJECT_ROWS, pca_scores
from edxlive.service.pipeline.results import AnalysisParams
from edxlive.service.pipeline.subsample import assign_rest, sample_rows


def _dose(shape: tuple[int, int]) -> np.ndarray:
    """A frame lost over one line (dose 0.5) and pixels never observed."""
    dose = np.ones(shape)
    dose[5, :] = 0.5
    dose[7, 3:20] = 0.0
    return dose


@pytest.fixture(scope="module")
def tiny96() -> tuple[np.ndarray, object]:
    ph = make_phantom("tiny", seed=1, shape=(96, 96))  # 9216 pixels: more than two blocks
    return offline_bin(ph.counts, 1), ph.meta


def test_phantom_written_in_blocks_is_the_phantom_in_memory(tmp_path: Path) -> None:
    kw = dict(seed=2, shape=(70, 53), channels=1024, counts_per_pixel=60.0)
    whole = make_phantom("sulfide", **kw)  # type: ignore[arg-type]
    blocked = make_phantom("sulfide", **kw, out=tmp_path / "accumulated.npy")  # type: ignore[arg-type]
    assert isinstance(blocked.counts, np.memmap) and blocked.counts.dtype == np.uint32
    np.testing.assert_array_equal(blocked.counts, whole.counts)
    np.testing.assert_array_equal(blocked.truth_labels, whole.truth_labels)


def test_cube_sums_are_the_whole_sums(tiny96: tuple[np.ndarray, object]) -> None:
    cube, _ = tiny96
    flat = cube.reshape(-1, cube.shape[-1])
    spectrum, totals = spectra.cube_sums(flat)
    np.testing.assert_array_equal(spectrum, flat.sum(axis=0, dtype=np.float64))
    np.testing.assert_array_equal(totals, flat.sum(axis=1, dtype=np.float64))


@pytest.mark.parametrize("scaling", ["poisson", "robust"])
def test_scaled_rows_read_any_way_are_the_same(tiny96: tuple[np.ndarray, object], scaling: str) -> None:
    cube, meta = tiny96
    rows = preprocess.prepare(cube, meta, scaling, _dose(cube.shape[:2]), fit_rows=2000, random_state=3).rows
    whole = np.asarray(rows)
    assert whole.dtype == np.float32 and whole.shape == rows.shape
    pick = sample_rows(len(rows), 1500, 7)
    np.testing.assert_array_equal(rows[pick], whole[pick])
    for step in (preprocess.BLOCK_ROWS, PROJECT_ROWS, 1000):
        np.testing.assert_array_equal(np.vstack([part for _, part in rows.blocks(step)]), whole)


def test_pca_projection_in_blocks_is_the_whole_transform(tiny96: tuple[np.ndarray, object]) -> None:
    """Fitted on a sample, projected a block at a time: the scores of one transform of the whole
    matrix (one BLAS thread, as analyze_cube runs)."""
    from sklearn.decomposition import PCA

    cube, meta = tiny96
    prepared = preprocess.prepare(cube, meta, "poisson", _dose(cube.shape[:2]))
    X = prepared.X
    assert len(X) > 2 * PROJECT_ROWS
    with threadpool_limits(limits=1):
        got = pca_scores(prepared.rows, random_state=3, fit_rows=2000)
        fit = sample_rows(len(X), 2000, 3)
        pca = PCA(n_components=20, svd_solver="randomized", random_state=3).fit(X[fit])
        want = pca.transform(X).astype(np.float64)
    np.testing.assert_array_equal(got.all_scores, want)
    np.testing.assert_array_equal(got.scree, pca.explained_variance_ratio_)


def test_cluster_sums_in_one_pass_over_observed_rows(tiny96: tuple[np.ndarray, object]) -> None:
    """Soft and hard weights over the observed pixels only: the sums of the observed rows copied
    out (the old way), both sums from one read of each block."""
    cube, _ = tiny96
    flat = cube.reshape(-1, cube.shape[-1])
    observed = _dose(cube.shape[:2]).reshape(-1) > 0
    rng = np.random.default_rng(0)
    soft = rng.dirichlet(np.ones(3), size=int(observed.sum()))
    hard = spectra.one_hot(rng.integers(-1, 4, size=int(observed.sum())), 4)
    got_soft, got_hard = spectra.weighted_sums(flat, [soft, hard], np.flatnonzero(observed))
    copied = flat[observed]
    [want_soft] = spectra.weighted_sums(copied, [soft])
    np.testing.assert_array_equal(got_soft, want_soft)
    np.testing.assert_array_equal(got_hard, hard.T @ copied.astype(np.float64))  # integers: exact


def test_assignment_in_blocks_is_one_vote_over_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    features = np.vstack([rng.normal(c, 1.0, (700, 4)) for c in (0.0, 2.0, 4.0)])
    rows = np.sort(rng.choice(len(features), 300, replace=False))
    labels = (features[rows, 0] > 1.0).astype(np.int64) + (features[rows, 0] > 3.0)
    whole = assign_rest(features, rows, labels)
    monkeypatch.setattr(subsample, "ASSIGN_BLOCK_ROWS", 97)  # many blocks, the last one short
    np.testing.assert_array_equal(assign_rest(features, rows, labels), whole)
    np.testing.assert_array_equal(whole[rows], labels)


def test_analysis_of_a_read_only_memmap_equals_the_cube_in_memory(tmp_path: Path) -> None:
    """The daemon's worker analyses np.load(accumulated.npy, mmap_mode="r"): same result as the
    cube in memory, gaps and unobserved pixels included, and the file is never written to."""
    ph = make_phantom("tiny", seed=4, shape=(96, 96), out=tmp_path / "accumulated.npy")
    cube = np.load(tmp_path / "accumulated.npy", mmap_mode="r")  # as the daemon's worker loads it
    assert not cube.flags.writeable
    dose = _dose(cube.shape[:2])
    params = AnalysisParams(umap_epochs=50)
    from_file = analyze_cube(cube, ph.meta, params, dose=dose)
    in_memory = analyze_cube(np.array(cube), ph.meta, params, dose=dose)
    for name, wf in in_memory.workflows.items():
        other = from_file.workflows[name]
        np.testing.assert_array_equal(other.labels, wf.labels)
        np.testing.assert_array_equal(other.mean_spectra, wf.mean_spectra)
        assert [c.to_json() for c in other.clusters] == [c.to_json() for c in wf.clusters]
    assert from_file.agreement == in_memory.agreement


def _rss_file() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))


def test_read_blocks_of_a_memmap_leave_the_resident_set(tmp_path: Path) -> None:
    """A pass over a read-only memmap maps the whole file into the process; release() unmaps
    what was read (the values stay readable: the page cache still holds them)."""
    path = tmp_path / "cube.npy"
    np.save(path, np.arange(16 * 2**20, dtype=np.uint32).reshape(-1, 1024))  # 64 MiB
    flat = np.load(path, mmap_mode="r")
    before = _rss_file()
    total = int(flat.sum(dtype=np.uint64))
    assert _rss_file() - before > 48 * 2**20
    release(flat, slice(None))
    assert _rss_file() - before < 8 * 2**20
    assert int(flat.sum(dtype=np.uint64)) == total
    spectrum, _ = spectra.cube_sums(flat)  # releases block by block
    assert _rss_file() - before < 8 * 2**20
    assert spectrum.sum() == total


def test_release_leaves_arrays_in_memory_and_writable_maps_alone(tmp_path: Path) -> None:
    np.save(tmp_path / "cube.npy", np.zeros((64, 1024), dtype=np.uint32))
    for a in (np.ones((64, 1024), dtype=np.uint32), np.load(tmp_path / "cube.npy", mmap_mode="c")):
        a[3] = 7  # a copy-on-write map's change lives only in this process: it must not be dropped
        release(a, slice(None))
        assert (a[3] == 7).all()
