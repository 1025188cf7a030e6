"""The analysis's inputs and outputs as plain dataclasses, and their JSON form (result.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edxlive.service.pipeline.entropy import Entropy
from edxlive.service.pipeline.meta import ScanMeta
from edxlive.service.pipeline.quantify import Composition

WORKFLOWS = ("pca_gmm", "umap_hdbscan")


@dataclass
class AnalysisParams:
    workflows: list[str] = field(default_factory=lambda: list(WORKFLOWS))
    scaling: str = "robust"  # the better at low counts, measured in benchmarks/bench_scaling.py
    gmm_k: int | None = None
    gmm_k_max: int = 8
    min_cluster_size: int | None = None
    umap_epochs: int | None = None
    random_state: int | None = 0
    elements: list[str] = field(default_factory=list)
    kfactors: Path | None = None
    anions: list[str] = field(default_factory=lambda: ["S"])
    faithful: bool = False
    # fast mode only (faithful fits every pixel on <= 1024 channels): models are fitted on at most
    # fit_rows pixels and the rest assigned; the clustering features are summed down to at most
    # cluster_channels energy channels (quantification always uses the full resolution)
    fit_rows: int | None = 8192
    cluster_channels: int = 1024
    # fast mode only: both workflows' clustering features averaged over neighbouring pixels, edge-aware
    # (Gaussian, σ in binned pixels; 0 = off); measured in docs/analysis.md §3. Cluster sums stay raw.
    smoothing_px: float = 1.0


@dataclass
class ClusterResult:
    id: int
    n_pixels: float
    area_fraction: float
    counts_per_pixel: float
    composition: Composition | None
    entropy: Entropy | None
    role: str = "phase"  # phase | vacuum | support
    quantified_pixels: float | None = None  # the pixels whose summed counts were quantified (the interior)

    def to_json(self) -> dict[str, Any]:
        comp = self.composition
        return {
            "id": self.id, "n_pixels": round(float(self.n_pixels), 2), "area_fraction": self.area_fraction,
            "counts_per_pixel": self.counts_per_pixel, "role": self.role,
            "quantified_pixels": round(float(self.n_pixels if self.quantified_pixels is None
                                             else self.quantified_pixels), 2),
            "vacuum": self.role == "vacuum",
            "composition_at_pct": {} if comp is None or comp.vacuum else
            {el: [round(v, 3), round(s, 3)] for el, (v, s) in comp.at_pct.items()},
            "composition_wt_pct": {} if comp is None or comp.vacuum else
            {el: [round(v, 3), round(s, 3)] for el, (v, s) in comp.wt_pct.items()},
            "line_intensities": {} if comp is None else
            {ln: [round(v, 1), round(s, 1)] for ln, (v, s) in comp.intensities.items()},
            "warnings": [] if comp is None else list(comp.warnings),
            "config_entropy_R": None if self.entropy is None else self.entropy.to_json(),
        }


@dataclass
class WorkflowResult:
    name: str
    labels: np.ndarray  # int16 (ny_b, nx_b), -1 = noise / unobserved
    mean_spectra: np.ndarray  # (n_clusters, channels): summed raw counts per cluster
    clusters: list[ClusterResult]
    params: dict[str, Any]
    durations_s: dict[str, float]
    noise_fraction: float
    extras: dict[str, Any] = field(default_factory=dict)
    memberships: np.ndarray | None = None  # (ny_b, nx_b, k) soft memberships (GMM); 0 where unobserved

    def to_json(self) -> dict[str, Any]:
        soft = {"memberships": f"memberships_{self.name}.npy"} if self.memberships is not None else {}
        return {
            "labels": f"labels_{self.name}.npy", **soft, "params": self.params,
            "durations_s": {k: round(v, 3) for k, v in self.durations_s.items()},
            "noise_fraction": self.noise_fraction, "n_clusters": len(self.clusters),
            "clusters": [c.to_json() for c in self.clusters], **self.extras,
        }


@dataclass
class AnalysisResult:
    meta: ScanMeta
    workflows: dict[str, WorkflowResult]
    agreement: dict[str, Any]
    verdict: dict[str, Any]
    elements: list[str]
    elements_source: str
    kfactors: dict[str, float]
    kfactors_source: str
    quantification_method: str
    energy_shift_kev: float = 0.0
    durations_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "elements": self.elements, "elements_source": self.elements_source,
            "kfactors": {"values": self.kfactors, "source": self.kfactors_source},
            "quantification_method": self.quantification_method,
            "energy_calibration_shift_kev": round(self.energy_shift_kev, 4),
            "workflows": {name: wf.to_json() for name, wf in self.workflows.items()},
            "agreement": self.agreement, "verdict": self.verdict,
            "durations_s": {k: round(v, 3) for k, v in self.durations_s.items()},
        }
