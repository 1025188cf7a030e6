"""The ``edxlive`` console script: one entry point, one subcommand per job.

This module is the composition root, the one place allowed to reach into both
``edxlive.service`` and ``edxlive.clients`` (see the import contracts in pyproject.toml).
Every command imports its implementation lazily, so that ``edxlive dashboard`` and
``edxlive tail`` start without loading the science stack.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="edxlive",
    help="Live STEM-EDX phase analysis beside the microscope.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 2) -> None:
    """Bad input ends in one clear line on stderr and a non-zero status, never a traceback."""
    typer.echo(f"edxlive: error: {message}", err=True)
    raise typer.Exit(code)


def curve_keys(role: str, secret: Path | None, server: Path | None) -> None:
    """Check a client's CURVE key files, from the options or the configuration, before it starts.

    Key files given as options travel on as the configuration's environment variables
    (EDXLIVE_SECURITY__*): the one channel that the simulator's publisher, tail's feed and the
    dashboard's feed all read (clients/curve.py), whichever module opens the socket.
    """
    import os

    if (secret is None) != (server is None):
        fail(f"give both --{role}-key and --server-key, or neither")
    if secret is not None and server is not None:
        os.environ[f"EDXLIVE_SECURITY__{role.upper()}_SECRET_KEY"] = str(secret.resolve())
        os.environ["EDXLIVE_SECURITY__SERVER_PUBLIC_KEY"] = str(server.resolve())
    from edxlive.clients.curve import CurveKeyError, keys_from_config

    try:
        keys_from_config(role)  # type: ignore[arg-type]
    except CurveKeyError as exc:
        fail(str(exc))


@app.command()
def demo(
    frames: Annotated[int, typer.Option(help="Frames in the demo scan.")] = 10,
    scan_seconds: Annotated[float, typer.Option(help="How long the demo scan takes.")] = 20.0,
    phantom: Annotated[str, typer.Option(help="Built-in phantom to scan.")] = "sulfide",
    no_dashboard: Annotated[bool, typer.Option("--no-dashboard", help="Print progress instead of opening the dashboard.")] = False,
    data_dir: Annotated[Path | None, typer.Option(help="Where the result folder goes.")] = None,
) -> None:
    """Daemon + simulator + dashboard on localhost with a built-in phantom: start here."""
    from edxlive.clients.demo import run_demo

    raise typer.Exit(run_demo(frames=frames, scan_seconds=scan_seconds, phantom=phantom,
                              dashboard=not no_dashboard, data_dir=data_dir))


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")] = None,
    connect: Annotated[list[str] | None, typer.Option(help="Acquisition endpoint(s) to subscribe to (overrides config).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Result folders go here (overrides config).")] = None,
    pub: Annotated[str | None, typer.Option(help="Outbound PUB endpoint; port 0 picks a free port.")] = None,
    control: Annotated[str | None, typer.Option(help="Control ROUTER endpoint; port 0 picks a free port.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port; 0 picks a free port.")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Show the effective configuration and exit.")] = False,
) -> None:
    """Run the daemon."""
    from edxlive.service.config import ConfigError, build_settings, print_settings

    try:
        settings = build_settings(config, connect=connect, data_dir=data_dir, pub=pub,
                                  control=control, metrics_port=metrics_port)
    except ConfigError as exc:
        fail(str(exc))
    if print_config:
        print_settings(settings, config)
        return
    if settings.security.server_secret_key is None:  # open mode: refuse off-machine endpoints before anything starts
        from edxlive.service.security import require_localhost

        try:
            require_localhost(settings)
        except ConfigError as exc:
            fail(str(exc))
    from edxlive.service.daemon import serve_forever

    raise typer.Exit(serve_forever(settings))


@app.command()
def simulate(
    source: Annotated[str, typer.Argument(help="A spectrum image file (.bcf .emd .pts .hspy .zspy) or a phantom name (see --list-phantoms).")] = "sulfide",
    endpoint: Annotated[str, typer.Option(help="PUB endpoint to bind; port 0 picks a free port.")] = "tcp://127.0.0.1:5555",
    frames: Annotated[int | None, typer.Option(help="Split the counts into N frames (files without real frames).")] = None,
    scan_seconds: Annotated[float, typer.Option(help="Pace the scan to last this long.")] = 10.0,
    fast: Annotated[bool, typer.Option("--fast", help="Send as fast as possible.")] = False,
    chunk_pixels: Annotated[int | None, typer.Option(help="Pixels per chunk (default: one scan line).")] = None,
    encoding: Annotated[str, typer.Option(help="events or dense.")] = "events",
    loop: Annotated[bool, typer.Option("--loop", help="Repeat the scan until interrupted.")] = False,
    scans: Annotated[int, typer.Option(help="Number of scans to send back to back.")] = 1,
    drop: Annotated[float, typer.Option(help="Probability of dropping each chunk (fault injection).")] = 0.0,
    duplicate: Annotated[float, typer.Option(help="Probability of sending a chunk twice.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Random seed for thinning and faults.")] = None,
    scan_id: Annotated[str | None, typer.Option(help="Scan id (default: derived from the source and time).")] = None,
    wait_subscribers: Annotated[int, typer.Option(help="Wait for this many subscribers before sending.")] = 1,
    wait_timeout: Annotated[float, typer.Option(help="Seconds to wait for subscribers.")] = 60.0,
    bin_energy: Annotated[int, typer.Option(help="Rebin energy by this factor when loading (large files).")] = 1,
    downsample: Annotated[int, typer.Option(help="Spatial downsampling when loading JEOL .pts.")] = 1,
    list_phantoms: Annotated[bool, typer.Option("--list-phantoms", help="List the built-in phantoms and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    publisher_key: Annotated[Path | None, typer.Option(help="CURVE: this publisher's .key_secret file (with --server-key).")] = None,
    server_key: Annotated[Path | None, typer.Option(help="CURVE: the daemon's public server.key.")] = None,
) -> None:
    """Publish protocol v1 as the acquisition PC would, from a file or a phantom."""
    curve_keys("publisher", publisher_key, server_key)
    from edxlive.clients.simulate import SimulateError, run_simulate

    try:
        code = run_simulate(
            source=source, endpoint=endpoint, frames=frames, scan_seconds=scan_seconds, fast=fast,
            chunk_pixels=chunk_pixels, encoding=encoding, loop=loop, scans=scans, drop=drop,
            duplicate=duplicate, seed=seed, scan_id=scan_id, wait_subscribers=wait_subscribers,
            wait_timeout=wait_timeout, bin_energy=bin_energy, downsample=downsample,
            list_phantoms=list_phantoms, quiet=quiet,
        )
    except SimulateError as exc:
        fail(str(exc))
    raise typer.Exit(code)


@app.command()
def analyze(
    files: Annotated[list[Path], typer.Argument(help="Spectrum images that RosettaSciIO reads, folders, or quoted globs.", metavar="FILE...")],
    out: Annotated[Path | None, typer.Option(help="Result folder (default: beside the data dir); with many files, one sub-folder each.")] = None,
    elements: Annotated[str | None, typer.Option(help="Comma-separated elements, e.g. Cu,Zn,S.")] = None,
    kfactors: Annotated[Path | None, typer.Option(help="TOML file with a [kfactors] table.")] = None,
    workflow: Annotated[str, typer.Option(help="pca_gmm, umap_hdbscan, both, or faithful.")] = "both",
    gmm_k: Annotated[int | None, typer.Option(help="GMM clusters (default: BIC's mixture, components with a single mode merged).")] = None,
    min_cluster_size: Annotated[int | None, typer.Option(help="HDBSCAN smallest cluster, in binned pixels.")] = None,
    bin: Annotated[int, typer.Option("--bin", help="Spatial binning factor.")] = 2,
    scaling: Annotated[str | None, typer.Option(help="poisson or robust.")] = None,
    anions: Annotated[str | None, typer.Option(help="Comma-separated anions for the entropy (default S).")] = None,
    seed: Annotated[int | None, typer.Option(help="random_state for GMM/UMAP.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    executor: Annotated[str | None, typer.Option(help="local, or a Dask scheduler tcp://host:8786 (default: analysis.executor).")] = None,
) -> None:
    """Run the same pipeline offline on saved files; writes the same result folder for each."""
    from edxlive.service.offline import AnalyzeError, expand_inputs, resolve_executor, run_analyze, run_many

    options = dict(elements=elements, kfactors=kfactors, workflow=workflow, gmm_k=gmm_k,
                   min_cluster_size=min_cluster_size, binning=bin, scaling=scaling, anions=anions, seed=seed,
                   quiet=quiet)
    try:
        paths = expand_inputs(files)
        where = resolve_executor(executor)
        if len(paths) == 1 and where == "local":
            typer.echo(f"results: {run_analyze(file=paths[0], out=out, **options)}")
            return
        outcomes = run_many(paths, out, where, **options)
    except AnalyzeError as exc:
        fail(str(exc))
    for path, outcome in outcomes:
        typer.echo(f"results: {outcome}" if isinstance(outcome, Path) else f"error: {path}: {outcome}",
                   err=not isinstance(outcome, Path))
    if any(not isinstance(outcome, Path) for _, outcome in outcomes):
        raise typer.Exit(1)


@app.command()
def dashboard(
    connect: Annotated[str | None, typer.Option(help="Daemon control endpoint, e.g. tcp://host:5557 (default: the local daemon).")] = None,
    client_key: Annotated[Path | None, typer.Option(help="CURVE: this client's .key_secret file (with --server-key).")] = None,
    server_key: Annotated[Path | None, typer.Option(help="CURVE: the daemon's public server.key.")] = None,
) -> None:
    """The terminal dashboard."""
    curve_keys("client", client_key, server_key)
    import gc

    gc.disable()  # for the start: the app turns it back on (run_dashboard says why)
    from edxlive.clients.dashboard.app import run_dashboard

    raise typer.Exit(run_dashboard(connect, gc_paused=True))


@app.command()
def tail(
    connect: Annotated[str | None, typer.Option(help="Daemon control endpoint (default: the local daemon).")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    until: Annotated[str | None, typer.Option(help="Stop after the first message of this topic, e.g. scan.finished.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    arrays: Annotated[bool, typer.Option("--arrays", help="Include array payloads as lists.")] = False,
    client_key: Annotated[Path | None, typer.Option(help="CURVE: this client's .key_secret file (with --server-key).")] = None,
    server_key: Annotated[Path | None, typer.Option(help="CURVE: the daemon's public server.key.")] = None,
) -> None:
    """Print the daemon's outbound messages as JSON lines, for scripts."""
    curve_keys("client", client_key, server_key)
    from edxlive.clients.tail import run_tail

    raise typer.Exit(run_tail(connect, count=count, until=until, timeout=timeout, arrays=arrays))


@app.command()
def keys(
    directory: Annotated[Path, typer.Argument(help="Folder for the CURVE key pairs.")],
    name: Annotated[list[str] | None, typer.Option(help="Key pair names (default: server, publisher, client).")] = None,
) -> None:
    """Generate CURVE key pairs for the daemon, the acquisition PC and the dashboards."""
    from edxlive.service.security import generate_keys

    for path in generate_keys(directory, name or ["server", "publisher", "client"]):
        typer.echo(str(path))


def main() -> None:
    from edxlive.service.logs import quiet_third_party_warnings

    quiet_third_party_warnings()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
