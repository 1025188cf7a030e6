"""Results view: cluster maps of both workflows, mean spectra, quantification table, verdict."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.color import Color
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from edxlive.clients.dashboard.format import pm
from edxlive.clients.dashboard.lines import marker_line
from edxlive.clients.dashboard.maps import MapView, label_rgb
from edxlive.clients.dashboard.palette import NOISE_COLOUR, cluster_colour, hex_rgb, match_colours
from edxlive.clients.dashboard.state import WORKFLOWS, DashboardState

SHORT = {"pca_gmm": "PCA+GMM", "umap_hdbscan": "UMAP+HDBSCAN"}


def colour_maps(st: DashboardState) -> dict[str, dict[int, int]]:
    """Palette index per cluster per workflow: pca_gmm keeps its ids, the others follow by overlap."""
    out: dict[str, dict[int, int]] = {}
    ref = st.labels.get(WORKFLOWS[0])
    for wf in st.workflows():
        ids = [int(c["id"]) for c in st.clusters(wf)]
        if wf == WORKFLOWS[0] or ref is None or wf not in st.labels:
            out[wf] = {i: i for i in ids}
        else:
            out[wf] = match_colours(ref, st.labels[wf])
            for i in ids:
                out[wf].setdefault(i, i)
    return out


def legend(st: DashboardState, wf: str, colours: dict[int, int]) -> Text:
    text = Text()
    for c in st.clusters(wf):
        cid = int(c["id"])
        tag = " vac" if c.get("vacuum") else (" sup" if c.get("role") == "support" else "")
        text.append("██", style=cluster_colour(colours.get(cid, cid)))
        text.append(f"{cid} {100 * float(c.get('area_fraction', 0)):.0f}%{tag}  ")
    labels = st.labels.get(wf)
    if labels is not None and np.any(labels < 0):
        text.append("██", style=NOISE_COLOUR)
        text.append(f"noise {100 * float(np.mean(labels < 0)):.0f}%")
    return text


class ResultsView(VerticalScroll):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.workflow = WORKFLOWS[0]

    def compose(self) -> ComposeResult:
        yield Static("no result yet: it appears when a scan has been analysed", id="result-head", markup=False)
        with Horizontal(id="cluster-maps"):
            for wf in WORKFLOWS:
                with Vertical(classes="cluster-panel", id=f"panel-{wf}"):
                    yield MapView(SHORT[wf], crisp=True, id=f"map-{wf}")
                    yield Static("", id=f"legend-{wf}", classes="legend")
        with Horizontal(id="result-bottom"):
            # No cursor: a highlighted row would hide the colour swatch that ties it to the maps.
            yield DataTable(id="quant", zebra_stripes=True, cursor_type="none")
            with VerticalScroll(id="verdict-box"):
                yield Static("", id="verdict")
        yield PlotextPlot(id="spectra")

    def select_next_workflow(self, st: DashboardState) -> None:
        names = st.workflows() or list(WORKFLOWS)
        i = names.index(self.workflow) if self.workflow in names else -1
        self.workflow = names[(i + 1) % len(names)]
        self.update_result(st)

    def update_result(self, st: DashboardState) -> None:
        r = st.result
        if r is None:
            return
        ari = r.agreement.get("ari")
        ari_text = f" · ARI {ari:.2f}" if isinstance(ari, int | float) else ""
        status = "ok" if r.status == "ok" else f"FAILED: {r.reason}"
        self.query_one("#result-head", Static).update(
            f"scan {r.scan_id} · revision {r.revision} · {status}{ari_text} · table/spectra: "
            f"{SHORT.get(self.workflow, self.workflow)} (w)")
        colours = colour_maps(st)
        for wf in WORKFLOWS:
            view = self.query_one(f"#map-{wf}", MapView)
            params = st.result.workflows.get(wf, {}).get("params", {}) if st.result else {}
            knob = f"k={params['k']}" if "k" in params else (
                f"min size {params['min_cluster_size']}" if "min_cluster_size" in params else "")
            mark = "▶ " if wf == self.workflow else ""
            view.set_title(f"{mark}{SHORT[wf]} {knob}".rstrip())
            labels = st.labels.get(wf)
            view.set_rgb(None if labels is None else label_rgb(labels, colours.get(wf)))
            self.query_one(f"#legend-{wf}", Static).update(legend(st, wf, colours.get(wf, {})))
        self._fill_table(st, colours.get(self.workflow, {}))
        self._fill_verdict(st)
        self._plot_spectra(st, colours.get(self.workflow, {}))

    def _fill_table(self, st: DashboardState, colours: dict[int, int]) -> None:
        table = self.query_one("#quant", DataTable)
        table.clear(columns=True)
        clusters = st.clusters(self.workflow)
        elements: list[str] = []
        for c in clusters:
            for el in c.get("composition_at_pct", {}) or {}:
                if el not in elements:
                    elements.append(el)
        table.add_columns("cluster", "area %", *(f"{el} at%" for el in elements), "S_conf/R")
        for c in clusters:
            cid = int(c["id"])
            comp: dict[str, Any] = c.get("composition_at_pct") or {}
            role = " vacuum" if c.get("vacuum") else (" support" if c.get("role") == "support" else "")
            name = Text.assemble(("██", cluster_colour(colours.get(cid, cid))), f" {cid}{role}")
            cells = [pm(*comp[el]) if el in comp else "–" for el in elements]
            entropy = c.get("config_entropy_R") or {}
            s = entropy.get("per_cation_site")
            table.add_row(name, f"{100 * float(c.get('area_fraction', 0)):.1f}", *cells,
                          "–" if s is None else f"{s:.2f}", key=str(cid))

    def _fill_verdict(self, st: DashboardState) -> None:
        v = st.result.verdict if st.result else {}
        text = Text()
        if not v:
            text.append("no verdict (analysis failed or not run)")
        else:
            follow = bool(v.get("follow_up"))
            text.append(" FOLLOW UP " if follow else " no follow-up ",
                        style="bold black on #009E73" if follow else "bold black on #E69F00")
            for reason in v.get("reasons", []):
                text.append(f"\n• {reason}")
        self.query_one("#verdict", Static).update(text)

    def _plot_spectra(self, st: DashboardState, colours: dict[int, int]) -> None:
        plot = self.query_one("#spectra", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        spectra = st.spectra.get(self.workflow)
        clusters = st.clusters(self.workflow)
        plt.title(f"cluster-mean spectra, {SHORT.get(self.workflow, self.workflow)} (counts/px, log)")
        if spectra is None or spectra.size == 0:
            plot.refresh()
            return
        energy = st.energy_axis(spectra.shape[1])
        sizes = [max(float(c.get("n_pixels", 1)), 1.0) for c in clusters] or [1.0] * len(spectra)
        top = 1e-9
        for i, spectrum in enumerate(spectra):
            cid = int(clusters[i]["id"]) if i < len(clusters) else i
            y = np.log10(1 + spectrum / (sizes[i] if i < len(sizes) else 1.0))
            top = max(top, float(y.max()))
            plt.plot(energy.tolist(), y.tolist(), color=hex_rgb(cluster_colour(colours.get(cid, cid))),
                     marker="braille", label=str(cid))
        # plotext gives text a white background unless told; the plot's own background is the
        # theme's surface colour (textual-plotext's "auto" theme).
        surface = Color.parse(self.app.theme_variables.get("surface", "#1e1e1e")).rgb
        for el in _elements(clusters):
            line = marker_line(el, float(energy[-1]))
            if line is not None:
                plt.vertical_line(line[1], color="gray")
                plt.text(el, line[1], top, color="gray", background=surface, alignment="center")
        plt.xlabel("keV")
        plot.refresh()


def _elements(clusters: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for c in clusters:
        for el in c.get("composition_at_pct") or {}:
            if el not in seen:
                seen.append(el)
    return seen
