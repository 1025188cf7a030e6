"""Writes an analysis's artefacts into the result folder (the layout is in docs/results.md):

labels_<workflow>.npy (int16, −1 = noise/unobserved), clusters_<workflow>.png (map + legend,
Okabe–Ito colour-blind-safe palette), mean_spectra_<workflow>.hspy (EDS_TEM signals with the
scan's metadata, one spectrum per cluster), mean_spectra_<workflow>.npy (the same numbers for
the live channel), quantification.csv (at% ± σ per cluster and workflow).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edxlive.service import storage
from edxlive.service.pipeline.results import AnalysisResult, WorkflowResult

# Okabe & Ito (2008), colour-blind safe; noise/unobserved is light grey.
PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000",
           "#999933", "#882255", "#44AA99", "#332288"]
NOISE = "#DDDDDD"


def write_analysis_outputs(folder: Path, result: AnalysisResult) -> list[Path]:
    folder = Path(folder)
    paths: list[Path] = []
    for name, wf in result.workflows.items():
        paths.append(storage.save_array(folder / f"labels_{name}.npy", wf.labels.astype(np.int16)))
        paths.append(storage.save_array(folder / f"mean_spectra_{name}.npy", wf.mean_spectra.astype(np.float32)))
        if wf.memberships is not None:
            paths.append(storage.save_array(folder / f"memberships_{name}.npy", wf.memberships))
        paths.append(write_cluster_png(folder / f"clusters_{name}.png", wf, result))
        paths.append(write_mean_spectra(folder / f"mean_spectra_{name}.hspy", wf, result))
    paths.append(write_quantification_csv(folder / "quantification.csv", result))
    return paths


def write_cluster_png(path: Path, wf: WorkflowResult, result: AnalysisResult) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n = len(wf.clusters)
    colours = [NOISE] + [PALETTE[k % len(PALETTE)] for k in range(max(n, 1))]
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    ax.imshow(wf.labels + 1, cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1, interpolation="nearest")
    ax.set_title(f"{result.meta.scan_id}: {wf.name}")
    ax.set_axis_off()
    handles = [Patch(color=PALETTE[c.id % len(PALETTE)], label=_legend(c)) for c in wf.clusters]
    if (wf.labels < 0).any():
        handles.append(Patch(color=NOISE, label=f"noise/unobserved {100 * float(np.mean(wf.labels < 0)):.0f}%"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png")

    try:
        return storage.atomic_write(path, write)
    finally:
        plt.close(fig)


def _legend(c) -> str:
    if c.role != "phase" or c.composition is None:
        return f"{c.id}: {c.role} ({100 * c.area_fraction:.0f}%)"
    top = sorted(c.composition.at_pct.items(), key=lambda kv: -kv[1][0])[:3]
    return f"{c.id}: " + " ".join(f"{el}{v:.0f}" for el, (v, _) in top) + f" ({100 * c.area_fraction:.0f}%)"


def write_mean_spectra(path: Path, wf: WorkflowResult, result: AnalysisResult) -> Path:
    from edxlive.service.hsio import signal_from_cube

    meta = result.meta
    spectra = wf.mean_spectra if len(wf.mean_spectra) else np.zeros((1, meta.channels))
    sig = signal_from_cube(spectra.astype(np.float64), meta, binned=True)
    sig.axes_manager.navigation_axes[0].name = "cluster"
    sig.axes_manager.navigation_axes[0].units = ""
    sig.axes_manager.navigation_axes[0].scale = 1
    sig.metadata.General.title = f"{meta.scan_id} {wf.name} cluster sums"
    if result.elements:
        sig.set_elements(result.elements)

    def write(tmp: Path) -> None:
        sig.save(tmp.with_suffix(".hspy"), overwrite=True)
        tmp.with_suffix(".hspy").replace(tmp)

    return storage.atomic_write(path, write)


def write_quantification_csv(path: Path, result: AnalysisResult) -> Path:
    elements = result.elements

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["workflow", "cluster", "role", "n_pixels", "area_fraction", "counts_per_pixel",
                        *[f"{el}_at_pct" for el in elements], *[f"{el}_sigma" for el in elements],
                        "entropy_per_site_R", "entropy_per_atom_R"])
            for name, wf in result.workflows.items():
                for c in wf.clusters:
                    at = c.composition.at_pct if c.composition and not c.composition.vacuum else {}
                    w.writerow([name, c.id, c.role, round(c.n_pixels, 2), round(c.area_fraction, 4),
                                round(c.counts_per_pixel, 3),
                                *[_fmt(at.get(el, (None, None))[0]) for el in elements],
                                *[_fmt(at.get(el, (None, None))[1]) for el in elements],
                                _fmt(c.entropy.per_site_R if c.entropy else None),
                                _fmt(c.entropy.per_atom_R if c.entropy else None)])

    return storage.atomic_write(path, write)


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"
