"""Binned accumulation is exact and independent of chunking (the LiberTEM rule), on real files."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np
import pytest

from edxlive.clients.sources import ScanSource, SparseFrame, load_source, thin
from edxlive.service import hsio
from edxlive.service.pipeline.accumulate import Accumulator, offline_bin

# Real files with their per-frame replay, and files whose counts are split by binomial thinning.
FILES = [
    ("bruker/test_TEM.bcf", 3),
    ("velox/EMDReader_SpectrumImage_Si.emd", None),  # the Talos file: 5 real frames
    ("velox/Test_SI_16x16_215kx.emd", None),  # 2 real frames
    ("bruker/30x30_instructively_packed_16bit_compressed.bcf", 4),  # 30 px: ×4 leaves a partial edge bin
]


@functools.cache
def _source(path: str, frames: int | None) -> ScanSource:
    return load_source(path, frames=frames, seed=1)


def _feed(acc: Accumulator, frame: int, f: SparseFrame, bounds: list[int], channels: int, dense: bool) -> None:
    for first, stop in itertools.pairwise(bounds):
        if dense:
            acc.add_dense(frame, first, f.dense(first, stop, channels))
        else:
            offsets, chans = f.events(first, stop)
            acc.add_events(frame, first, stop - first, offsets, chans)


def _random_bounds(n_pixels: int, rng: np.random.Generator) -> list[int]:
    cuts = np.sort(rng.choice(np.arange(1, n_pixels), size=min(7, n_pixels - 1), replace=False))
    return [0, *cuts.tolist(), n_pixels]


@pytest.mark.parametrize(("name", "frames"), FILES, ids=[f[0] for f in FILES])
@pytest.mark.parametrize("factor", [1, 2, 4])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense-store", "sparse-store"])
def test_chunking_invariance(shared_data: Path, name: str, frames: int | None, factor: int, sparse: bool) -> None:
    src = _source(str(shared_data / name), frames)
    meta = src.meta
    n_pixels = meta.shape[0] * meta.shape[1]
    expected = offline_bin(src.total_counts(), factor)
    rng = np.random.default_rng(0)
    for dense in (False, True):
        acc = Accumulator(meta.shape, meta.channels, factor, meta.frames, sparse=sparse)
        for i, frame in src.iter_frames():
            _feed(acc, i, frame, _random_bounds(n_pixels, rng), meta.channels, dense)
        np.testing.assert_array_equal(acc.binned_cube(), expected)
        assert acc.incomplete_fraction() == 0.0
        assert acc.events == int(expected.sum())


@pytest.mark.parametrize(("name", "frames", "downsample"), [
    ("hspy/SiO2_EDS_Spectrum_Image.hspy", 5, 1),  # 128x128x2048, split into 5 frames
    ("jeol/View000_0000006.pts", None, 8),  # 14 real sweeps, replayed frame by frame (downsampled x8)
])
def test_no_counts_lost_in_larger_files(shared_data: Path, name: str, frames: int | None, downsample: int) -> None:
    src = load_source(str(shared_data / name), frames=frames, seed=2, downsample=downsample)
    meta = src.meta
    if frames is None:
        assert src.real_frames and len(src.frames) == 14
    acc = Accumulator(meta.shape, meta.channels, 2, meta.frames)
    rng = np.random.default_rng(1)
    for i, frame in src.iter_frames():
        _feed(acc, i, frame, _random_bounds(meta.shape[0] * meta.shape[1], rng), meta.channels, dense=False)
    np.testing.assert_array_equal(acc.binned_cube(), offline_bin(src.total_counts(), 2))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-store", "sparse-store"])
def test_over_16_bit_counts(shared_data: Path, sparse: bool) -> None:
    """Counts above 65 535 per channel (uint32 in the file) come through exactly, in dense chunks."""
    src = _source(str(shared_data / "bruker" / "over16bit.bcf"), 2)
    meta = src.meta
    acc = Accumulator(meta.shape, meta.channels, 2, meta.frames, dtype=np.uint16, sparse=sparse)
    for i, frame in src.iter_frames():
        _feed(acc, i, frame, [0, 5, meta.shape[0] * meta.shape[1]], meta.channels, dense=True)
    expected = offline_bin(src.total_counts(), 2)
    assert expected.max() > 65_535
    np.testing.assert_array_equal(acc.binned_cube(), expected)


def test_real_frames_sum_to_the_file(shared_data: Path) -> None:
    """Per-frame replay of the Talos file adds up to HyperSpy's own frame sum."""
    path = shared_data / "velox" / "EMDReader_SpectrumImage_Si.emd"
    src = load_source(str(path))
    assert src.real_frames and len(src.frames) == 5
    summed = hsio.load_eds(path)
    np.testing.assert_array_equal(src.total_counts(), np.asarray(summed.data))


def test_thinning_is_exact_and_poisson_like() -> None:
    rng = np.random.default_rng(5)
    counts = rng.poisson(3.0, size=20_000).astype(np.int64) + 1
    total = SparseFrame(np.arange(counts.size), np.zeros(counts.size, np.uint16), counts)
    frames = thin(total, 10, rng)
    summed = np.zeros(counts.size, np.int64)
    for f in frames:
        summed[f.pixel] += f.count
    np.testing.assert_array_equal(summed, counts)
    # binomial thinning of Poisson(λ+1) counts: each frame's mean is a tenth of the total
    means = [f.count.sum() / counts.size for f in frames]
    assert np.allclose(means, counts.mean() / 10, rtol=0.05)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-store", "sparse-store"])
def test_duplicates_are_ignored_and_gaps_counted(sparse: bool) -> None:
    rng = np.random.default_rng(2)
    cube = rng.poisson(0.5, size=(8, 8, 32))
    f = SparseFrame.from_dense(cube)
    acc = Accumulator((8, 8), 32, 2, frames=2, sparse=sparse)
    _feed(acc, 0, f, [0, 16, 32, 48, 64], 32, dense=False)
    _feed(acc, 0, f, [16, 32], 32, dense=False)  # a duplicate chunk
    _feed(acc, 1, f, [0, 16, 32, 48], 32, dense=False)  # the last chunk of frame 1 is lost
    expected = offline_bin(cube, 2) + offline_bin(np.concatenate([cube[:6], np.zeros_like(cube[6:])]), 2)
    np.testing.assert_array_equal(acc.binned_cube(), expected)
    assert acc.missing_by_frame() == {1: 16}
    assert acc.incomplete_fraction() == pytest.approx(16 / 128)
    dose = acc.dose()
    assert dose[:3].min() == 1.0 and dose[3].max() == 0.5


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-store", "sparse-store"])
def test_counts_promote_before_overflow(sparse: bool) -> None:
    acc = Accumulator((2, 2), 4, 1, frames=2, dtype=np.uint16, sparse=sparse)
    big = np.zeros((4, 4), np.int64)
    big[0, 0] = 60_000
    acc.add_dense(0, 0, big)
    acc.add_dense(1, 0, big)
    assert acc.binned_cube()[0, 0, 0] == 120_000


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-store", "sparse-store"])
def test_views_agree_with_the_cube(sparse: bool) -> None:
    """counts_map, channel_sum and row_blocks are the cube seen differently; many merges of the
    sparse store (a tiny merge threshold) change nothing."""
    import edxlive.service.pipeline.accumulate as accumulate

    rng = np.random.default_rng(3)
    cube = rng.poisson(0.8, size=(2, 13, 11, 40))
    acc = Accumulator((13, 11), 40, 2, frames=2, sparse=sparse)
    old = accumulate.SPARSE_MIN_FLUSH
    accumulate.SPARSE_MIN_FLUSH = 16
    try:
        for frame in range(2):
            f = SparseFrame.from_dense(cube[frame])
            _feed(acc, frame, f, [0, 3, 50, 51, 143], 40, dense=bool(frame))
    finally:
        accumulate.SPARSE_MIN_FLUSH = old
    expected = offline_bin(cube.sum(axis=0), 2)
    np.testing.assert_array_equal(acc.binned_cube(), expected)
    np.testing.assert_array_equal(acc.counts_map, expected.sum(axis=2).ravel())
    np.testing.assert_array_equal(acc.channel_sum(5, 17), expected[..., 5:17].sum(axis=2).ravel())
    blocks = list(acc.row_blocks(max_bytes=1))
    assert len(blocks) == expected.shape[0]
    np.testing.assert_array_equal(np.concatenate(blocks), expected)


def test_large_scans_are_kept_sparse() -> None:
    acc = Accumulator((1024, 1024), 4096, 2, frames=20)
    assert acc.sparse and acc.nnz == 0
    assert Accumulator.nbytes_for((1024, 1024), 4096, 2, 20) < 2**30
    assert not Accumulator((512, 512), 2048, 2, frames=20).sparse


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-store", "sparse-store"])
@pytest.mark.parametrize("into_sparse", [False, True], ids=["into-dense", "into-sparse"])
def test_checkpoint_cells_restore_exactly(sparse: bool, into_sparse: bool) -> None:
    """A checkpoint holds the non-zero cells; restoring them into either store gives the same scan back."""
    rng = np.random.default_rng(5)
    acc = Accumulator((12, 10), 64, 2, frames=3, dtype=np.uint16, sparse=sparse)
    for frame in range(2):
        n = 400
        acc.add_events(frame, 0, 120, rng.integers(0, 120, n).astype("<u4"), rng.integers(0, 64, n).astype("<u2"))
    keys, counts = acc.nonzero_cells()
    assert keys.size == np.count_nonzero(acc.cube)
    back = Accumulator((12, 10), 64, 2, frames=3, dtype=np.uint16, sparse=into_sparse)
    back.restore(keys, counts, acc.coverage)
    np.testing.assert_array_equal(back.binned_cube(), acc.binned_cube())
    np.testing.assert_array_equal(back.counts_map, acc.counts_map)
    np.testing.assert_array_equal(back.coverage, acc.coverage)
    assert back.events == acc.events == 800
    with pytest.raises(ValueError, match="does not fit"):
        Accumulator((4, 4), 64, 2, frames=3).restore(keys, counts, acc.coverage)


def test_a_finished_scans_memory_is_reused_zeroed_and_never_while_in_use() -> None:
    """The next scan of the same size gets the last one's cube memory, zeroed (no first touch of
    fresh pages), but never while any array still looks at it."""
    import edxlive.service.pipeline.accumulate as accumulate

    rng = np.random.default_rng(7)

    def scan() -> Accumulator:
        acc = Accumulator((64, 64), 512, 1, frames=1)  # an 8 MiB cube: the mmap'd store
        acc.add_events(0, 0, 4096, np.sort(rng.integers(0, 4096, 5000)).astype("<u4"),
                       rng.integers(0, 512, 5000).astype("<u2"))
        return acc

    def address(a: np.ndarray) -> int:
        return a.__array_interface__["data"][0]

    first = scan()
    view = first.cube[10:20]  # e.g. a caller still holding part of the finished scan's cube
    kept = view.copy()
    where = address(first.cube)
    del first
    second = Accumulator((64, 64), 512, 1, frames=1)
    assert address(second.cube) != where and not second.cube.any()
    np.testing.assert_array_equal(view, kept)
    del view, second
    third = Accumulator((64, 64), 512, 1, frames=1)
    assert address(third.cube) == where and not third.cube.any()  # the first scan's, now free
    third_at = address(third.cube)
    third.cube[:] = 9
    del third
    fourth = scan()
    assert address(fourth.cube) == third_at  # reused, and zero before the new counts
    assert int(fourth.cube.sum()) == fourth.events == 5000
    fourth.cube[:] = 9
    del fourth
    while accumulate.zero_spares():  # the daemon's idle ticks: zeroed ahead of the next scan
        pass
    fifth = Accumulator((64, 64), 512, 1, frames=1)
    assert address(fifth.cube) == third_at and not fifth.cube.any()


def test_events_outside_the_chunk_are_refused_before_anything_is_written() -> None:
    acc = Accumulator((8, 8), 16, 2, frames=1)
    for offsets, chans in [([0, 64], [1, 1]), ([0, 1], [1, 16]), ([-1, 0], [1, 1])]:
        with pytest.raises(ValueError, match="outside"):
            acc.add_events(0, 0, 64, np.array(offsets), np.array(chans))
    assert acc.events == 0 and not acc.cube.any() and not acc.coverage.any()


def test_a_sparse_scan_and_its_checkpoint_copy_fit_the_default_budget() -> None:
    """A 2048x2048 x 4096 raw scan (1024x1024 binned): the store and the checkpoint's copy are
    budgeted by their non-zero cells, not as a dense 16 GiB cube, so the default budget takes it."""
    from edxlive.service.config import Settings

    shape, channels = (2048, 2048), 4096
    need = Accumulator.nbytes_for(shape, channels, 2, 20) + Accumulator.nonzero_nbytes_for(shape, channels, 2)
    assert need < Settings().limits.memory_budget_bytes
