"""The pure parts: the state model, colours, half blocks, and the graphics-protocol map path."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from edxlive.clients.dashboard import maps
from edxlive.clients.dashboard.app import DEBOUNCE_S, Dashboard
from edxlive.clients.dashboard.halfblock import fit, resample, strips
from edxlive.clients.dashboard.palette import match_colours, percentiles
from edxlive.clients.dashboard.state import DashboardState
from tests import procs
from tests.dashboard import scenario


def _state(items: list) -> DashboardState:  # type: ignore[type-arg]
    st = DashboardState()
    for item in items:
        st.apply(item)
    return st


def test_an_older_revision_arriving_late_is_ignored() -> None:
    s = scenario.Scenario()
    st = _state([s.result(1.0, revision=2, gmm_k=5)])
    assert st.apply(s.result(2.0, revision=1, gmm_k=3)) == set()
    assert st.result is not None and st.result.revision == 2 and st.control.gmm_k == 5


def test_reanalyze_names_the_scan_on_screen_and_keeps_every_knob_asked() -> None:
    st = _state(scenario.scan_done())
    st.ask("gmm_k", 5)
    st.ask("min_cluster_size", 9)
    assert st.reanalyze_params() == {"scan_id": scenario.SCAN_ID, "gmm_k": 5, "min_cluster_size": 9}


def test_disconnect_drops_a_pending_revision() -> None:
    st = _state(scenario.scan_done())
    st.control.pending_revision = 1
    st.apply(scenario.disconnected())
    assert not st.connected and st.control.pending_revision is None


def test_rates_come_from_two_statuses_of_one_daemon() -> None:
    st = _state(scenario.mid_scan())  # two statuses, 1 s apart on the daemon's clock
    assert st.rates["events"] == pytest.approx(1500.0)


def test_scan_phase_follows_the_documents() -> None:
    assert _state(scenario.mid_scan()).scan_phase == "acquiring"
    assert _state(scenario.scan_done()).scan_phase == "done"


def test_a_phase_keeps_its_colour_across_workflows() -> None:
    labels = scenario.labels()
    mapping = match_colours(labels["pca_gmm"], labels["umap_hdbscan"])
    assert mapping == {0: 1, 1: 0, 2: 2, 3: 3}  # UMAP's 0 is GMM's particle 1, and takes its colour


@pytest.mark.parametrize("n", [*range(1, 12), 100, 101, 4095, 4096])
def test_percentiles_are_numpys_to_the_bit(n: int) -> None:
    rng = np.random.default_rng(n)
    for values in (rng.random(n), rng.poisson(3, n).astype(float), rng.normal(0, 1e6, n), np.full(n, 7.0)):
        for q in ((1, 99), (0, 100), (50,), (25, 75), (99.9,)):
            assert np.array_equal(percentiles(values.copy(), q), np.percentile(values, q))


def test_count_maps_are_drawn_without_numpy_ma() -> None:
    """np.percentile imports numpy.ma on its way: ~15 ms before the daemon's first map."""
    code = ("import sys, numpy as np; from edxlive.clients.dashboard.maps import count_rgb; "
            "count_rgb(np.random.default_rng(0).poisson(3, (64, 64))); assert 'numpy.ma' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=procs.child_env())


def test_half_blocks_keep_pixels_square() -> None:
    assert fit((16, 16), 80, 20) == (40, 20)  # two pixels per cell, vertically
    assert fit((16, 32), 20, 20) == (20, 5)
    rows = strips(np.zeros((4, 4, 3), dtype=np.uint8), 10, 10)
    assert len(rows) == 5 and all(r.cell_length == 10 for r in rows)  # centred, padded


def test_shrinking_a_label_map_keeps_the_majority_colour_and_a_count_map_averages() -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:, :, 0] = 200  # one cluster...
    rgb[0, 0] = (0, 0, 255)  # ...with a stray pixel of another in the top-left 2x2 block
    crisp = resample(rgb, 2, 2, crisp=True)
    assert (crisp[..., 0] == 200).all() and (crisp[..., 2] == 0).all()  # no speckle, no blend
    smooth = resample(rgb, 2, 2)
    assert tuple(smooth[0, 0]) == (150, 0, 64) and tuple(smooth[1, 1]) == (200, 0, 0)
    assert resample(rgb, 8, 8).shape == (8, 8, 3)  # enlarging repeats pixels


def test_graphics_protocol_maps_get_the_map_aspect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the terminal speaks Sixel/Kitty, maps go to textual-image, sized like the half blocks."""
    from textual_image.widget import Image

    monkeypatch.setitem(maps.GRAPHICS, "enabled", True)

    async def drive() -> None:
        app = Dashboard(feed=False)
        async with app.run_test(size=(120, 40)) as pilot:
            app.apply_items(scenario.scan_done())
            assert len(app.query(Image)) == 3  # count, element, component: the results view is built when shown
            for key, panel in (("1", "#live"), ("2", "#results")):
                await pilot.press(key)
                await pilot.pause()
                assert len(app.query(Image)) == {"#live": 3, "#results": 5}[panel]  # and the two cluster maps
                for view in app.query_one(panel).query(maps.MapView):
                    image = view.query_one(Image)
                    assert image.image is not None and image.image.size[0] >= maps.GRAPHICS_MIN_SIDE
                    want = fit(scenario.BINNED, view.size.width, view.size.height - 1)
                    assert min(want) > 0
                    assert (image.styles.width.value, image.styles.height.value) == want

    asyncio.run(drive())


def test_knob_keys_send_one_debounced_request_with_every_knob() -> None:
    """Three presses of `+` send one request, for the final k; `]` then sends both knobs."""
    sent: list[tuple[str, dict]] = []  # type: ignore[type-arg]

    async def drive() -> None:
        app = Dashboard(feed=False)
        async with app.run_test(size=(80, 24)) as pilot:
            app.use_feed = True  # as if connected, with the request captured instead of sent
            app._request = lambda kind, params: sent.append((kind, params))  # type: ignore[method-assign]
            app.apply_items(scenario.scan_done())  # k 4, min size 8
            for key in ("plus", "plus", "plus"):
                await pilot.press(key)
            assert sent == [] and "sending shortly" in str(app.query_one("#control").content)  # type: ignore[attr-defined]
            await pilot.pause(DEBOUNCE_S + 0.4)
            assert sent == [("reanalyze", {"scan_id": scenario.SCAN_ID, "gmm_k": 7})]
            await pilot.press("right_square_bracket")
            await pilot.pause(DEBOUNCE_S + 0.4)
            assert sent[-1] == ("reanalyze", {"scan_id": scenario.SCAN_ID, "gmm_k": 7, "min_cluster_size": 9})
            await pilot.press("minus", "left_square_bracket")
            await pilot.pause(DEBOUNCE_S + 0.4)
            assert sent[-1][1] == {"scan_id": scenario.SCAN_ID, "gmm_k": 6, "min_cluster_size": 8}

    asyncio.run(drive())


def test_the_docs_show_every_view() -> None:
    """docs/dashboard.md shows a screenshot of each view, and each is a Textual SVG export."""
    docs = procs.REPO / "docs"
    text = (docs / "dashboard.md").read_text()
    for view in ("live", "results", "service", "help"):
        name = f"img/dashboard-{view}.svg"
        assert f"]({name})" in text
        assert (docs / name).read_text().lstrip().startswith("<svg")
