"""`edxlive analyze FILE`: the daemon's pipeline, offline, on any spectrum image RosettaSciIO reads.

It writes the same result folder as the daemon. A single spectrum (no map) is quantified and
reported without clustering. Bad input ends in AnalyzeError: one line, problem and remedy.

Many files (several arguments, a folder, or a quoted glob) are analysed one after another, or,
with ``--executor tcp://scheduler:8786`` (or ``analysis.executor`` in the config), as one task
each on that Dask cluster. A bad file fails alone; the others go on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edxlive.service import storage
from edxlive.service.hsio import LoadError, cube_of, load_eds, meta_from_signal

WORKFLOW_CHOICES = {"both": ["pca_gmm", "umap_hdbscan"], "pca_gmm": ["pca_gmm"], "umap_hdbscan": ["umap_hdbscan"],
                    "faithful": ["pca_gmm", "umap_hdbscan"]}


class AnalyzeError(ValueError):
    """Bad input to `edxlive analyze`, in one line."""


def run_analyze(*, file: Path, out: Path | None, elements: str | None, kfactors: Path | None, workflow: str,
                gmm_k: int | None, min_cluster_size: int | None, binning: int, scaling: str | None,
                anions: str | None, seed: int | None, quiet: bool) -> Path:
    from edxlive.service.pipeline.analyze import EmptyScanError
    from edxlive.service.pipeline.elements import ElementError
    from edxlive.service.pipeline.kfactors import KFactorError

    _check(workflow, binning, gmm_k, min_cluster_size, scaling)
    try:
        sig = load_eds(Path(file), allow_single=True)
        element_list = _split(elements)
        if kfactors is not None:
            from edxlive.service.pipeline.kfactors import load_kfactors

            load_kfactors(kfactors)  # fail before any work
        from edxlive.service.pipeline.elements import validate_elements

        validate_elements(element_list)
        if sig.axes_manager.navigation_dimension == 0:
            return _single_spectrum(sig, Path(file), out, element_list, kfactors)
        return _spectrum_image(sig, Path(file), out, element_list, kfactors, workflow, gmm_k, min_cluster_size,
                               binning, scaling, _split(anions) or ["S"], seed, quiet)
    except (LoadError, ElementError, KFactorError, EmptyScanError) as exc:
        raise AnalyzeError(str(exc)) from None
    except MemoryError:
        raise AnalyzeError(f"{file}: not enough memory; bin more (--bin) or analyse a smaller region") from None


def _check(workflow: str, binning: int, gmm_k: int | None, mcs: int | None, scaling: str | None) -> None:
    if workflow not in WORKFLOW_CHOICES:
        raise AnalyzeError(f"--workflow {workflow!r} is not known; use one of {', '.join(WORKFLOW_CHOICES)}")
    if binning < 1:
        raise AnalyzeError(f"--bin {binning} must be 1 or more")
    if gmm_k is not None and gmm_k < 1:
        raise AnalyzeError(f"--gmm-k {gmm_k} must be 1 or more")
    if mcs is not None and mcs < 2:
        raise AnalyzeError(f"--min-cluster-size {mcs} must be 2 or more")
    if scaling not in (None, "poisson", "robust"):
        raise AnalyzeError(f"--scaling {scaling!r} is not known; use poisson or robust")


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").replace(" ", ",").split(",") if t.strip()]


def _folder(out: Path | None, scan_id: str) -> Path:
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        return out
    from edxlive.service.config import Settings

    return storage.scan_folder(Settings().storage.data_dir, scan_id)


def _scan_id(path: Path) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in path.stem)[:64] or "scan"


def _spectrum_image(sig: Any, path: Path, out: Path | None, elements: list[str], kfactors: Path | None,
                    workflow: str, gmm_k: int | None, mcs: int | None, binning: int, scaling: str | None,
                    anions: list[str], seed: int | None, quiet: bool) -> Path:
    from edxlive.service import report
    from edxlive.service.pipeline.accumulate import offline_bin
    from edxlive.service.pipeline.analyze import analyze_cube
    from edxlive.service.pipeline.results import AnalysisParams

    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                                 / "edxlive" / "numba"))
    meta = meta_from_signal(sig, _scan_id(path), binning=binning)
    meta.source_file = str(path)
    cube = offline_bin(cube_of(sig), binning)
    params = AnalysisParams(workflows=WORKFLOW_CHOICES[workflow], scaling=scaling or "robust", gmm_k=gmm_k,
                            min_cluster_size=mcs, random_state=seed, elements=elements, kfactors=kfactors,
                            anions=anions, faithful=workflow == "faithful")
    with _Progress(quiet) as progress:
        result = analyze_cube(cube, meta, params, progress=progress)
    folder = _folder(out, meta.scan_id)
    storage.write_spectrum_image(folder, cube, meta)
    report.write_analysis_outputs(folder, result)
    storage.write_result_json(folder, storage.result_document(meta, cube, result.to_json()))
    return folder


def _single_spectrum(sig: Any, path: Path, out: Path | None, elements: list[str], kfactors: Path | None) -> Path:
    from edxlive.service.pipeline import xray
    from edxlive.service.pipeline.analyze import choose_elements
    from edxlive.service.pipeline.kfactors import resolve_kfactors
    from edxlive.service.pipeline.quantify import METHOD, estimate_shift, quantify

    meta = meta_from_signal(sig, _scan_id(path), binning=1)
    spectrum = cube_of(sig).reshape(-1, meta.channels).sum(axis=0).astype(np.float64)
    chosen, source = choose_elements(elements, meta, spectrum)
    shift = estimate_shift(spectrum, meta, chosen)
    lines = [xray.quant_line(el, meta.beam_energy_kev, xray.energy_max(meta)) for el in chosen]
    kf = resolve_kfactors(lines, meta, kfactors)
    [comp] = quantify(spectrum[None], meta, chosen, kf, shift)
    folder = _folder(out, meta.scan_id)
    doc = storage.result_document(meta, spectrum[None, None], {
        "single_spectrum": True, "elements": chosen, "elements_source": source,
        "kfactors": {"values": kf.values, "source": kf.source}, "quantification_method": METHOD,
        "energy_calibration_shift_kev": round(shift, 4),
        "composition_at_pct": {el: [round(v, 3), round(s, 3)] for el, (v, s) in comp.at_pct.items()},
        "composition_wt_pct": {el: [round(v, 3), round(s, 3)] for el, (v, s) in comp.wt_pct.items()},
        "warnings": comp.warnings,
    })
    doc["spectrum_image"] = None
    storage.write_result_json(folder, doc)
    _single_csv(folder / "quantification.csv", comp)
    return folder


def _single_csv(path: Path, comp: Any) -> None:
    rows = ["element,at_pct,sigma,wt_pct,wt_sigma"] + [
        f"{el},{v:.4f},{s:.4f},{comp.wt_pct[el][0]:.4f},{comp.wt_pct[el][1]:.4f}" for el, (v, s) in comp.at_pct.items()]

    def write(tmp: Path) -> None:
        tmp.write_text("\n".join(rows) + "\n")

    storage.atomic_write(path, write)


class _Progress:
    """A rich progress bar on stderr for the analysis stages (off with --quiet or without a terminal)."""

    def __init__(self, quiet: bool) -> None:
        import sys

        self.enabled = not quiet and sys.stderr.isatty()

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TimeElapsedColumn

        self._bar = Progress("[bold]{task.description}", BarColumn(), TimeElapsedColumn(),
                             console=Console(stderr=True), transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("analysing", total=1.0)
        return lambda stage, fraction: self._bar.update(task, completed=fraction, description=stage)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files from the arguments: a folder gives its files, a quoted glob its matches."""
    import glob

    files: list[Path] = []
    for path in paths:
        text = str(path)
        if Path(text).is_dir():
            files += sorted(p for p in Path(text).iterdir() if p.is_file() and not p.name.startswith("."))
        elif any(c in text for c in "*?[") and not Path(text).exists():
            matches = sorted(Path(m) for m in glob.glob(text) if Path(m).is_file())
            if not matches:
                raise AnalyzeError(f"{text}: no file matches; check the pattern")
            files += matches
        else:
            files.append(Path(text))
    if not files:
        raise AnalyzeError("no input file; give FILE arguments, a folder or a quoted glob")
    return files


def resolve_executor(executor: str | None) -> str:
    """--executor, else analysis.executor from the config (the $EDXLIVE_CONFIG file or
    EDXLIVE_ANALYSIS__EXECUTOR; local by default)."""
    if executor is None:
        from pydantic import ValidationError

        from edxlive.service.config import Settings

        try:
            return Settings().analysis.executor
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise AnalyzeError(f"the configuration is invalid ({reason}); fix it or give --executor") from None
    if executor != "local" and not executor.startswith(("tcp://", "tls://", "inproc://")):
        raise AnalyzeError(f"--executor {executor!r}: use local or a Dask scheduler address like tcp://host:8786")
    return executor


def run_many(files: list[Path], out: Path | None, executor: str, **options: Any) -> list[tuple[Path, Path | str]]:
    """Analyse each file; (file, result folder) or (file, the one-line error). Results keep input order.

    Each file gets its own folder: ``<out>/<file stem>`` under --out, else a new scan folder under
    the data dir, named here (not on a worker, whose config may differ)."""
    outs = [_many_out(f, out, i) for i, f in enumerate(files)] if len(files) > 1 or out is None else [out]
    if executor == "local":
        return [(f, _one(f, o, options)) for f, o in zip(files, outs, strict=True)]
    return _on_dask(files, outs, executor, options)


def _many_out(path: Path, out: Path | None, index: int) -> Path:
    if out is None:
        from edxlive.service.config import Settings

        return storage.scan_folder(Settings().storage.data_dir, _scan_id(path))
    name = _scan_id(path)
    return Path(out) / (name if index == 0 or not (Path(out) / name).exists() else f"{name}-{index}")


def _one(path: Path, out: Path, options: dict[str, Any]) -> Path | str:
    try:
        return run_analyze(file=path, out=out, **options)
    except AnalyzeError as exc:
        return str(exc)
    except Exception as exc:  # one broken file must not stop the others
        return f"{path}: {type(exc).__name__}: {exc}"


def _on_dask(files: list[Path], outs: list[Path], executor: str, options: dict[str, Any]
             ) -> list[tuple[Path, Path | str]]:
    """One task per file on the cluster; the files and --out must be at the same path on the workers."""
    from distributed import Client

    try:
        client = Client(executor, timeout=10, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise AnalyzeError(f"--executor {executor}: no Dask scheduler answers ({exc}); start it or use local") from None
    with client:
        opts = {**options, "quiet": True}
        futures = [client.submit(_one, f.resolve(), o.resolve(), opts, pure=False)
                   for f, o in zip(files, outs, strict=True)]
        results: list[Path | str] = []
        for fut in futures:
            exc = fut.exception()
            results.append(f"{type(exc).__name__}: {exc}" if exc is not None else fut.result())
    return list(zip(files, results, strict=True))
