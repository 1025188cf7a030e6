"""A deterministic scan, as the daemon would publish it: protocol documents for snapshot tests.

Every document is built with the protocol's own models, then encoded and decoded, so the
dashboard sees exactly what comes off the wire, with fixed ids, clocks and arrays (no daemon, no
randomness that changes between runs). The scan: a 96x96 map (binned 2 -> 48x48, so an 80x24
terminal has to shrink it) of two sulfide particles on a carbon film with a hole, 8 frames; both
workflows find the two phases.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edxlive.clients.feed import FeedEvent
from edxlive.service import protocol as p

DAEMON_UID = "edxlive-4242-5ca1ab1e0000"
ACQ_SOURCE = "acq-4241-0ddba11f0000"
SCAN_ID = "hes-042"
FOLDER = "/srv/edxlive/data/20250301-101500_hes-042"
T0 = 1_740_824_100.0  # 2025-03-01 10:15:00 UTC: fixed, so no clock reaches a snapshot
SHAPE = (96, 96)
BINNED = (48, 48)
S = BINNED[0] / 16  # the geometry below is drawn on a 16x16 grid
FRAMES = 8
CHANNELS = 1024
OFFSET_KEV, SCALE_KEV = -0.02, 0.02
ELEMENTS = ["C", "S", "Fe", "Cu", "Zn", "Cd"]
LINES_KEV = {"C": 0.277, "S": 2.307, "Fe": 6.404, "Cu": 8.048, "Zn": 8.639, "Cd": 3.134}


def _masks() -> dict[str, np.ndarray]:
    """Where each region is on the binned 16x16 grid."""
    y, x = np.mgrid[0:BINNED[0], 0:BINNED[1]] / S
    a = (y - 5.0) ** 2 + (x - 9.5) ** 2 < 3.2**2  # Cu-Zn-S particle
    b = (y - 11.0) ** 2 + (x - 4.0) ** 2 < 2.6**2  # Fe-Cd-S particle
    hole = (y >= 12) & (x >= 12) & ~a & ~b  # a hole in the carbon film
    film = ~(a | b | hole)
    return {"film": film, "a": a, "b": b, "hole": hole}


# Counts per binned pixel per element line at the end of the scan, per region.
LINE_COUNTS = {
    "film": {"C": 5.0, "S": 0.05, "Fe": 0.02, "Cu": 0.05, "Zn": 0.02, "Cd": 0.01},
    "a": {"C": 1.0, "S": 30.0, "Fe": 0.5, "Cu": 16.0, "Zn": 13.0, "Cd": 0.5},
    "b": {"C": 1.0, "S": 24.0, "Fe": 11.0, "Cu": 0.6, "Zn": 0.8, "Cd": 9.0},
    "hole": {"C": 0.1, "S": 0.0, "Fe": 0.0, "Cu": 0.02, "Zn": 0.0, "Cd": 0.0},
}


def element_maps(done: np.ndarray) -> np.ndarray:
    """(elements, ny, nx) line-window counts; ``done`` is the share of the dose each pixel has had."""
    masks = _masks()
    out = np.zeros((len(ELEMENTS), *BINNED), dtype=np.float32)
    for region, mask in masks.items():
        for i, el in enumerate(ELEMENTS):
            out[i][mask] = LINE_COUNTS[region][el]
    # A fixed texture (no RNG): counting noise that looks like counting noise, identical every run.
    y, x = np.mgrid[0:BINNED[0], 0:BINNED[1]]
    texture = 1.0 + 0.25 * np.sin(1.7 * x + 2.3 * y) * np.cos(0.9 * x - 1.3 * y)
    return (out * texture * done).astype(np.float32)


def dose_done(fraction: float) -> np.ndarray:
    """Share of the final dose per binned pixel after ``fraction`` of the frames (raster order)."""
    frames_done = fraction * FRAMES
    full, part = int(frames_done), frames_done - int(frames_done)
    rows_in_frame = round(part * BINNED[0])
    done = np.full(BINNED, full / FRAMES, dtype=np.float64)
    done[:rows_in_frame] += 1 / FRAMES
    return done


def labels() -> dict[str, np.ndarray]:
    m = _masks()
    gmm = np.zeros(BINNED, dtype=np.int16)  # 0 film
    gmm[m["a"]], gmm[m["b"]], gmm[m["hole"]] = 1, 2, 3
    hdb = np.full(BINNED, 1, dtype=np.int16)  # other ids than GMM: the colours must still match
    hdb[m["a"]], hdb[m["b"]], hdb[m["hole"]] = 0, 2, 3
    y, x = np.mgrid[0:BINNED[0], 0:BINNED[1]]
    rim = m["a"] & ((y / S - 5.0) ** 2 + (x / S - 9.5) ** 2 > 2.6**2)
    hdb[rim & ((x + y) % 3 == 0)] = -1  # some noise at the particle's rim
    return {"pca_gmm": gmm, "umap_hdbscan": hdb}


def spectrum(region: str, n_pixels: int) -> np.ndarray:
    """Summed counts of a region: Gaussian lines (130 eV FWHM at Mn Kα, narrower below) on a
    falling bremsstrahlung background."""
    e = OFFSET_KEV + SCALE_KEV * np.arange(CHANNELS)
    out = 0.02 * np.exp(-np.clip(e, 0.1, None) / 4.0) * (e > 0.1)
    for el, kev in LINES_KEV.items():
        sigma = (0.04 + 0.006 * kev) / 2.355 * 2
        out = out + LINE_COUNTS[region][el] / (sigma * np.sqrt(2 * np.pi)) * SCALE_KEV * np.exp(
            -0.5 * ((e - kev) / sigma) ** 2)
    return (out * n_pixels).astype(np.float32)


COMPOSITIONS: dict[str, dict[str, list[float]]] = {
    "film": {"C": [99.6, 0.3], "S": [0.2, 0.1], "Fe": [0.0, 0.1], "Cu": [0.1, 0.1], "Zn": [0.0, 0.1],
             "Cd": [0.1, 0.1]},
    "a": {"C": [2.1, 0.6], "S": [49.8, 1.1], "Fe": [0.8, 0.2], "Cu": [25.4, 0.8], "Zn": [21.2, 0.8],
          "Cd": [0.7, 0.2]},
    "b": {"C": [2.4, 0.7], "S": [50.3, 1.3], "Fe": [24.1, 0.9], "Cu": [0.9, 0.3], "Zn": [1.2, 0.3],
          "Cd": [21.1, 0.9]},
    "hole": {},
}
ENTROPY = {"a": 0.94, "b": 0.97}
ROLES = {"film": "support", "a": "phase", "b": "phase", "hole": "vacuum"}


def _cluster(cid: int, region: str, n: int, total: int) -> dict[str, Any]:
    ent = ENTROPY.get(region)
    return {
        "id": cid, "n_pixels": float(n), "area_fraction": n / total, "role": ROLES[region],
        "vacuum": region == "hole", "composition_at_pct": COMPOSITIONS[region],
        "config_entropy_R": None if ent is None else {"per_cation_site": ent, "per_atom": ent / 2},
    }


def _workflow(ids: dict[str, int], lab: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    total = lab.size
    clusters = [_cluster(cid, region, int(np.count_nonzero(lab == cid)), total)
                for region, cid in sorted(ids.items(), key=lambda kv: kv[1])]
    return {"params": params, "durations_s": {"pca": 0.3, "cluster": 0.6, "quantify": 0.02},
            "noise_fraction": float(np.mean(lab < 0)), "n_clusters": len(clusters), "clusters": clusters}


class Scenario:
    """Builds the documents in publication order, each with the next seq of one daemon."""

    def __init__(self) -> None:
        self.seq = 0

    def _msg(self, model: type[p.Header], t: float, arrays: dict[str, np.ndarray] | None = None,
             **fields: Any) -> p.Message:
        self.seq += 1
        header = model(source=DAEMON_UID, seq=self.seq, time=T0 + t, **fields)
        return p.decode(p.encode(header, arrays), topics=p.OUTBOUND_TOPICS)

    def status(self, t: float, state: str, current: str | None, events: float, scans: list[dict[str, Any]],
               errors: list[str] | None = None) -> p.Message:
        counters = {"messages.scan.start": 4.0, "messages.scan.chunk": float(round(128 * events / 41_000)),
                    "messages.heartbeat": float(round(t)), "events": events, "gaps": 1.0, "duplicates": 0.0,
                    "late": 0.0}
        return self._msg(p.ServiceStatus, t, state=state, version="0.1.0", uptime_s=60.0 + t,
                         pub_endpoint="tcp://127.0.0.1:5556", control_endpoint="tcp://127.0.0.1:5557",
                         metrics_endpoint="http://127.0.0.1:9464/metrics", current_scan=current,
                         counters=counters, rejected={"out_of_range": 1}, recent_errors=errors or [],
                         scans=scans, security="open", scan_id=current)

    def started(self) -> p.Message:
        start = p.ScanStart(source=ACQ_SOURCE, seq=1, time=T0, scan_id=SCAN_ID, shape=SHAPE, channels=CHANNELS,
                            energy_offset_kev=OFFSET_KEV, energy_scale_kev=SCALE_KEV, frames=FRAMES,
                            dwell_time_s=2e-5, pixel_size_nm=0.5, elements=ELEMENTS,
                            microscope="Talos F200X", sample="HES sulfide, grid 3")
        return self._msg(p.ScanStarted, 0.0, scan_id=SCAN_ID, scan=start, binning=2, binned_shape=BINNED,
                         folder=FOLDER)

    def progress(self, t: float, fraction: float) -> p.Message:
        done = dose_done(fraction)
        maps = element_maps(done)
        count_map = (maps.sum(axis=0) + 0.3 * done).astype(np.float32)
        frame = min(int(fraction * FRAMES), FRAMES - 1)
        eta = None if fraction <= 0 else t * (1 - fraction) / fraction
        return self._msg(p.ScanProgress, t, {"count_map": count_map}, scan_id=SCAN_ID, frame=frame, frames=FRAMES,
                         fraction=fraction, counts_per_pixel=float(count_map.sum() / (SHAPE[0] * SHAPE[1])),
                         events_per_s=float(count_map.sum() / max(t, 1e-9)), eta_s=eta, gaps=1, duplicates=0,
                         rejected=1, incomplete_fraction=0.0039)

    def live(self, t: float, fraction: float) -> p.Message:
        maps = element_maps(dose_done(fraction))
        total = maps.sum(axis=0)
        comps = np.stack([total - total.mean(), maps[3] + maps[4] - maps[2] - maps[5], maps[0] - maps[1],
                          np.roll(maps[1], 3, axis=1) - maps[1]]).astype(np.float32)
        scree = np.array([0.58, 0.19, 0.07, 0.03, 0.02, 0.015, 0.012, 0.01], dtype=np.float32)
        frame = min(int(fraction * FRAMES), FRAMES - 1)
        return self._msg(p.ScanLive, t, {"scree": scree, "components": comps, "element_maps": maps},
                         scan_id=SCAN_ID, frame=frame, n_components=len(comps), elements=ELEMENTS,
                         energy_offset_kev=OFFSET_KEV, energy_scale_kev=SCALE_KEV)

    def result(self, t: float, revision: int = 0, gmm_k: int = 4, min_cluster_size: int = 8) -> p.Message:
        lab = labels()
        m = _masks()
        gmm_ids = {"film": 0, "a": 1, "b": 2, "hole": 3}
        hdb_ids = {"a": 0, "film": 1, "b": 2, "hole": 3}
        arrays: dict[str, np.ndarray] = {}
        for wf, ids in (("pca_gmm", gmm_ids), ("umap_hdbscan", hdb_ids)):
            arrays[f"labels/{wf}"] = lab[wf]
            arrays[f"spectra/{wf}"] = np.stack([spectrum(region, int(np.count_nonzero(m[region])))
                                                for region, _ in sorted(ids.items(), key=lambda kv: kv[1])])
        workflows = {
            "pca_gmm": _workflow(gmm_ids, lab["pca_gmm"], {"scaling": "robust", "n_components": 5, "k": gmm_k,
                                                           "k_source": "BIC", "random_state": 0}),
            "umap_hdbscan": _workflow(hdb_ids, lab["umap_hdbscan"], {"n_components": 4,
                                                                     "min_cluster_size": min_cluster_size}),
        }
        verdict = {
            "follow_up": True,
            "summary": "two phases whose compositions differ beyond 3 σ",
            "reasons": [
                "two phases whose compositions differ beyond 3 σ: Cu-Zn-S and Fe-Cd-S",
                "agreement between the workflows: ARI = 0.91",
                "low counts: Fe has 1.6 counts/px in its line (< 2); its maps are noisy",
            ],
        }
        return self._msg(p.ScanResult, t, arrays, scan_id=SCAN_ID, revision=revision, status="ok",
                         workflows=workflows, agreement={"ari": 0.91}, verdict=verdict,
                         energy_offset_kev=OFFSET_KEV, energy_scale_kev=SCALE_KEV, folder=FOLDER)

    def finished(self, t: float) -> p.Message:
        return self._msg(p.ScanFinished, t, scan_id=SCAN_ID, status="completed", folder=FOLDER,
                         paths=[f"{FOLDER}/result.json"], incomplete_fraction=0.0039)


EARLIER_SCAN = {"scan_id": "hes-041", "folder": "/srv/edxlive/data/20250301-100200_hes-041", "status": "completed",
                "incomplete_fraction": 0.0, "finished": T0 - 600.0, "analysis": "ok"}
ERRORS = ["rejected (out_of_range) in scan hes-042: frame 9 >= frames 8 of the scan"]


def connected() -> FeedEvent:
    return FeedEvent("connected", DAEMON_UID, "control tcp://127.0.0.1:5557, pub tcp://127.0.0.1:5556")


def mid_scan() -> list[Any]:
    """Attached at frame 4 of 8: what a dashboard holds then (snapshot, then two updates)."""
    s = Scenario()
    return [connected(), s.status(20.0, "acquiring", SCAN_ID, 18_000.0, [EARLIER_SCAN]), s.started(),
            s.live(19.0, 0.40), s.progress(20.0, 0.4375), s.status(21.0, "acquiring", SCAN_ID, 19_500.0,
                                                                    [EARLIER_SCAN], ERRORS)]


def scan_done() -> list[Any]:
    """The whole scan, analysed: what a dashboard holds once the result is in."""
    s = Scenario()
    this = {"scan_id": SCAN_ID, "folder": FOLDER, "status": "completed", "incomplete_fraction": 0.0039,
            "finished": T0 + 52.0, "analysis": "ok"}
    return [connected(), s.status(20.0, "acquiring", SCAN_ID, 18_000.0, [EARLIER_SCAN]), s.started(),
            s.live(19.0, 0.40), s.progress(20.0, 0.4375), s.live(45.0, 1.0), s.progress(45.5, 1.0),
            s.status(46.0, "analysing", None, 41_000.0, [EARLIER_SCAN, {**this, "finished": None}], ERRORS),
            s.result(52.0), s.finished(52.0), s.status(53.0, "idle", None, 41_000.0, [EARLIER_SCAN, this], ERRORS)]


def disconnected() -> FeedEvent:
    return FeedEvent("disconnected", DAEMON_UID, "nothing from the daemon for 3 s; retrying tcp://127.0.0.1:5557")
