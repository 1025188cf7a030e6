"""The live PCA is exact: at any moment it equals a batch PCA of the same scaled data.

Tolerance: component loadings |cos θ| ≥ 1 − 1e-9 against scikit-learn's PCA for the leading
components whose eigenvalues are separated (relative gap > 1e-6), and explained-variance ratios
within 1e-10 absolute. Both come from float64 arithmetic on identical data, so only rounding differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from edxlive.clients.sources import load_source
from edxlive.service.pipeline import livepca
from edxlive.service.pipeline.accumulate import Accumulator
from edxlive.service.pipeline.livepca import LivePCA

K = 6


def _stream(src, factor: int, chunk: int) -> tuple[Accumulator, LivePCA, list]:  # type: ignore[no-untyped-def]
    meta = src.meta
    acc = Accumulator(meta.shape, meta.channels, factor, meta.frames)
    live = LivePCA(acc.binned_shape, meta.channels, meta.energy_offset_kev, meta.energy_scale_kev)
    refreshes = []
    n = meta.shape[0] * meta.shape[1]
    for i, frame in src.iter_frames():
        for first in range(0, n, chunk):
            stop = min(first + chunk, n)
            offsets, chans = frame.events(first, stop)
            delta = acc.add_events(i, first, stop - first, offsets, chans)
            live.update(delta.bins, delta.channels, delta.counts)
        refreshes.append(live.refresh(K))  # once per frame, as the daemon does at least
    return acc, live, refreshes


def _assert_matches_batch(live: LivePCA) -> None:
    comps = live.refresh(K)
    batch = PCA(n_components=K, svd_solver="full").fit(live.scaled())
    np.testing.assert_allclose(comps.explained_variance_ratio[:K], batch.explained_variance_ratio_, atol=1e-10)
    ev = batch.explained_variance_
    separated = [j for j in range(K - 1) if (ev[j] - ev[j + 1]) / ev[0] > 1e-6]
    for j in separated:
        cos = abs(float(comps.components[j] @ batch.components_[j]))
        assert cos >= 1 - 1e-9, f"component {j}: |cos| = {cos}"


def test_live_equals_batch_on_real_data(shared_data: Path) -> None:
    src = load_source(str(shared_data / "bruker" / "test_TEM.bcf"), frames=4, seed=0)
    acc, live, refreshes = _stream(src, factor=2, chunk=700)
    assert len(refreshes) == 4
    # X is exactly the binned cube, rebinned to the live channels
    assert live.X.sum() == acc.binned_cube()[..., live.live_of >= 0].sum()
    _assert_matches_batch(live)


def test_live_equals_batch_on_a_multiphase_phantom() -> None:
    src = load_source("sulfide", frames=3, seed=0)
    _, live, _ = _stream(src, factor=2, chunk=4096)
    _assert_matches_batch(live)


def test_chunking_does_not_change_the_statistics() -> None:
    src = load_source("tiny", frames=2, seed=0)
    _, a, _ = _stream(src, factor=2, chunk=64)
    _, b, _ = _stream(src, factor=2, chunk=1000)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_allclose(a.S, b.S, rtol=1e-12)
    np.testing.assert_allclose(a.S, a.X.T @ a.X, rtol=1e-12)


def test_sparse_update_and_recompute_give_the_same_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    """S from the buffered delta (sparse frames) and S recomputed as XᵀX (dense frames) are equal:
    integer counts make every float64 product and sum exact."""
    monkeypatch.setattr(livepca, "DELTA_MAX_FRACTION", 1.0)  # every refresh from the delta
    src = load_source("tiny", frames=3, seed=1)
    _, a, _ = _stream(src, factor=2, chunk=64)
    assert a._delta is not None
    b = LivePCA(a.binned_shape, src.meta.channels, src.meta.energy_offset_kev, src.meta.energy_scale_kev)
    rows, cols = np.nonzero(a.X)
    counts = a.X[rows, cols]
    chans = np.flatnonzero(b.live_of >= 0)[::b.rebin][cols]  # one full-resolution channel per live channel
    b._delta = None  # force the recompute path
    b.update(rows, chans, counts.astype(np.int64))
    np.testing.assert_array_equal(b.X, a.X)
    np.testing.assert_array_equal(b.S, a.S)


def test_x_turns_float64_before_a_float32_cell_could_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """X is float32 while no cell can pass 2**24 counts, then float64; S is the same exact XᵀX
    from float32 blocks, float64 blocks or float64 X."""
    src = load_source("tiny", frames=2, seed=0)
    _, a, _ = _stream(src, factor=2, chunk=64)
    assert a.X.dtype == np.float32
    exact = a.X.astype(np.float64).T @ a.X.astype(np.float64)
    np.testing.assert_array_equal(a.S, exact)
    monkeypatch.setattr(livepca, "F32_EXACT", 1024)  # rows·m² < 1024 leaves too few rows: float64 blocks
    np.testing.assert_array_equal(a._gram(), exact)
    monkeypatch.setattr(livepca, "F32_EXACT", 50)  # a cell may pass 50: X turns float64
    _, b, _ = _stream(src, factor=2, chunk=64)
    assert b.X.dtype == np.float64
    np.testing.assert_array_equal(b.X, a.X)
    np.testing.assert_array_equal(b.S, exact)



def test_a_refresh_mid_frame_reads_only_the_rows_swept_and_stays_exact() -> None:
    """Early in a scan's first frame only the rows swept so far hold counts: the Gram and the
    scores skip the others (zero), and the result is the full computation's, bit for bit."""
    src = load_source("sulfide", frames=2, seed=0)
    meta = src.meta
    acc = Accumulator(meta.shape, meta.channels, 2, meta.frames)
    live = LivePCA(acc.binned_shape, meta.channels, meta.energy_offset_kev, meta.energy_scale_kev)
    n = meta.shape[0] * meta.shape[1]
    _, frame = next(iter(src.iter_frames()))
    for first in range(0, n // 3, 4096):  # the first third of frame 0
        stop = min(first + 4096, n // 3)
        live.add(acc.add_events(0, first, stop - first, *frame.events(first, stop)))
    comps = live.refresh(K)
    assert 0 < live._hi < live.X.shape[0] // 2  # rows past the sweep were skipped
    X = live.X.astype(np.float64)
    np.testing.assert_array_equal(live.S, X.T @ X)
    w = live.channel_weights()
    mu = live._mean() * w
    full = live.X @ (comps.components * w).T.astype(live.X.dtype) - mu @ comps.components.T
    np.testing.assert_array_equal(comps.maps, full.T.reshape(K, *live.binned_shape))
    _assert_matches_batch(live)
