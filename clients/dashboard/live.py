"""Live view: the scan filling in (progress, total-count map, element maps, live PCA)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Select, Sparkline, Static

from edxlive.clients.dashboard.format import duration, rate
from edxlive.clients.dashboard.maps import MapView, count_rgb
from edxlive.clients.dashboard.state import DashboardState


class LiveView(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.element = 0
        self.component = 0
        self._elements: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("waiting for a scan…", id="scan-line", markup=False)
        with Horizontal(id="progress-row"):
            yield ProgressBar(total=1.0, show_eta=False, id="progress")
            yield Static("", id="frame-count", markup=False)
        yield Static("", id="stats", markup=False)
        with Horizontal(id="live-maps"):
            yield MapView("total counts", id="count-map")
            with Vertical(id="element-panel"):
                yield Select([], prompt="element", compact=True, allow_blank=True, id="element-picker")
                yield MapView("element map", id="element-map")
            with Vertical(id="pca-panel"):
                yield MapView("PCA component", id="component-map")
                yield Static("scree", id="scree-title", markup=False)
                yield Sparkline([], id="scree")

    # ------------------------------------------------------------------ updates

    def update_scan(self, st: DashboardState) -> None:
        sid = st.scan_id
        if sid is None:
            self.query_one("#scan-line", Static).update("waiting for a scan…")
            return
        sample = f" · sample {st.sample}" if st.sample else ""
        shape = ""
        if st.started is not None:
            ny, nx = st.started.scan.shape
            shape = f" · {ny}×{nx} px, bin {st.started.binning}"
        self.query_one("#scan-line", Static).update(f"scan {sid}{sample}{shape} · {st.scan_phase}")

    def update_progress(self, st: DashboardState) -> None:
        pr = st.progress
        bar = self.query_one("#progress", ProgressBar)
        if pr is None:
            bar.update(progress=0.0)
            self.query_one("#frame-count", Static).update("")
            self.query_one("#stats", Static).update("")
            self.query_one("#count-map", MapView).set_rgb(None)
            return
        bar.update(total=1.0, progress=min(1.0, max(0.0, pr.fraction)))
        frames = f"frame {min(pr.frame + 1, pr.frames)}/{pr.frames}"
        self.query_one("#frame-count", Static).update(f" {frames} · ETA {duration(pr.eta_s)}")
        lost = f" · incomplete {pr.incomplete_fraction:.1%}" if pr.incomplete_fraction else ""
        self.query_one("#stats", Static).update(
            f"{pr.counts_per_pixel:.2f} counts/px · {rate(pr.events_per_s)} events/s · gaps {pr.gaps}"
            f" · duplicates {pr.duplicates} · rejected {pr.rejected}{lost}")
        if st.count_map is not None:
            self.query_one("#count-map", MapView).set_rgb(count_rgb(st.count_map))

    def update_live(self, st: DashboardState) -> None:
        arrays = st.live_arrays
        names = list(st.live.elements) if st.live is not None else []
        if names != self._elements:
            self._elements = names
            picker = self.query_one("#element-picker", Select)
            with picker.prevent(Select.Changed):
                picker.set_options([(el, i) for i, el in enumerate(names)])
                if names:
                    self.element = min(self.element, len(names) - 1)
                    picker.value = self.element
        self._draw_element(arrays)
        self._draw_component(arrays)
        scree = arrays.get("scree")
        values = [] if scree is None else [float(v) for v in scree[:16]]
        self.query_one("#scree", Sparkline).data = values
        text = " ".join(f"{100 * v:.0f}" for v in values[:6])
        self.query_one("#scree-title", Static).update(f"scree % {text}" if values else "scree")

    def _draw_element(self, arrays: dict) -> None:
        maps = arrays.get("element_maps")
        view = self.query_one("#element-map", MapView)
        if maps is None or not self._elements or self.element >= len(maps):
            view.set_title("element map (none yet)")
            view.set_rgb(None)
            return
        view.set_title(f"{self._elements[self.element]} line window  (e: next)")
        view.set_rgb(count_rgb(maps[self.element]))

    def _draw_component(self, arrays: dict) -> None:
        comps = arrays.get("components")
        view = self.query_one("#component-map", MapView)
        if comps is None or len(comps) == 0:
            view.set_title("PCA component (none yet)")
            view.set_rgb(None)
            return
        self.component %= len(comps)
        view.set_title(f"PC{self.component + 1} of {len(comps)}  (c: next)")
        view.set_rgb(count_rgb(comps[self.component]))

    # ------------------------------------------------------------------ picking

    def next_element(self, st: DashboardState) -> None:
        if self._elements:
            self.element = (self.element + 1) % len(self._elements)
            picker = self.query_one("#element-picker", Select)
            with picker.prevent(Select.Changed):
                picker.value = self.element
            self._draw_element(st.live_arrays)

    def next_component(self, st: DashboardState) -> None:
        self.component += 1
        self._draw_component(st.live_arrays)

    def on_select_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, int):
            self.element = event.value
            self._draw_element(self.app.state.live_arrays)  # type: ignore[attr-defined]
