"""Configuration: the shipped example is valid and complete; bad input is one line and exit status 2.

The example config (systemd/edxlive.toml) goes through the real ``load_settings``; its commented
keys (``# key = value``: those unset by default) are uncommented and loaded too, and together
they must list every key of ``Settings``, so the example cannot fall behind the code.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edxlive.service.config import CONFIG_ENV, ConfigError, Settings, load_settings
from tests import procs

EXAMPLE = procs.REPO / "systemd" / "edxlive.toml"
COMMENTED_KEY = re.compile(r"^# (\w+ = .*)$")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No EDXLIVE_* settings from the caller's environment; EDXLIVE_CONFIG restored afterwards."""
    for name in list(os.environ):
        if name.startswith("EDXLIVE_") and "__" in name:
            monkeypatch.delenv(name)
    monkeypatch.setenv(CONFIG_ENV, "")  # load_settings sets it; monkeypatch puts the old value back
    yield


def keys_by_section(text: str) -> dict[str, set[str]]:
    """Every ``key = value`` line, commented or not, under its [section]."""
    found: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m.group(1)
            found[section] = set()
        elif m := re.match(r"^(?:# )?(\w+) = ", line):
            found[section].add(m.group(1))
    return found


@pytest.mark.usefixtures("clean_env")
def test_example_config_is_valid_and_lists_every_key(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE)
    assert settings.storage.data_dir == Path("/var/lib/edxlive")
    assert settings.security.server_secret_key is None  # open, on localhost, until keys are made
    assert settings.model_dump() == _defaults_except_data_dir(settings)  # the example documents the defaults

    expected = {name: set(field.annotation.model_fields)  # type: ignore[union-attr]
                for name, field in Settings.model_fields.items()}
    assert keys_by_section(EXAMPLE.read_text()) == expected

    # The commented alternatives are valid too: uncomment every "# key = value" and load again.
    uncommented = tmp_path / "all.toml"
    uncommented.write_text("\n".join(COMMENTED_KEY.sub(r"\1", line) for line in EXAMPLE.read_text().splitlines()))
    full = load_settings(uncommented)
    assert full.analysis.gmm_k == 4 and full.security.client_keys_dir == Path("/etc/edxlive/keys/clients")
    assert all(v is not None for table in full.model_dump().values() for v in table.values())


def _defaults_except_data_dir(settings: Settings) -> dict:
    defaults = Settings.model_construct(**{name: field.default_factory()  # type: ignore[misc]
                                          for name, field in Settings.model_fields.items()}).model_dump()
    defaults["storage"]["data_dir"] = settings.storage.data_dir
    return defaults


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(("toml", "expected"), [
    ("[binning]\nfactor = 0\n", "binning.factor = 0 (from {file}): Input should be greater than or equal to 1"),
    ('[logging]\nformat = "xml"\n', "logging.format = 'xml' (from {file}): Input should be 'text' or 'json'"),
    ('[analysis]\nworkflows = ["pca_gmm", "kmeans"]\n', "analysis.workflows[1] = 'kmeans'"),
    ("[binning]\nfactr = 2\n", "binning.factr is not a known key (from {file}); [binning] has factor"),
    ("[bogus]\nx = 1\n", "'bogus' is not a config section (from {file}); the sections are inbound, outbound"),
    ("binning = 3\n", "binning (from {file}) must be a [binning] table"),
    ('[security]\nserver_secret_key = "/k"\n', "security.server_secret_key needs security.publisher_keys_dir"),
    ("[binning\nfactor = 2\n", "cannot read config file {file}: Expected ']'"),
])
def test_bad_file_is_one_clear_line(tmp_path: Path, toml: str, expected: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    message = str(info.value)
    assert "\n" not in message and expected.format(file=bad) in message


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(("name", "value", "expected"), [
    ("EDXLIVE_BINNING__FACTOR", "abc", "binning.factor = 'abc' (from EDXLIVE_BINNING__FACTOR): Input should be"),
    ("EDXLIVE_BINNIN__FACTOR", "3", "environment variable EDXLIVE_BINNIN__FACTOR: 'binnin' is not a config section"),
    ("EDXLIVE_ANALYSIS__WORKFLOWS", "pca_gmm", "EDXLIVE_ANALYSIS__WORKFLOWS='pca_gmm' is not a JSON list"),
])
def test_bad_environment_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                           expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_settings()


def _serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in procs.child_env(**env).items() if not (k.startswith("EDXLIVE_") and "__" in k)}
    clean.update(env)
    return subprocess.run([*procs.CMD, "serve", *args], capture_output=True, text=True, timeout=120, env=clean,
                          check=False)


def test_bad_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "edxlive.toml"
    bad.write_text("[binning]\nfactor = 0\n")
    out = _serve("--config", str(bad), "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"edxlive: error: invalid config value for binning.factor = 0 (from {bad}): "
                                       "Input should be greater than or equal to 1"]
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_unreadable_key_file_exits_2_with_one_line(tmp_path: Path) -> None:
    """Key files are read when the daemon starts (a dashboard need not read the daemon's key)."""
    cfg = tmp_path / "edxlive.toml"
    cfg.write_text(f'[security]\nserver_secret_key = "{tmp_path}/missing.key_secret"\n'
                   f'publisher_keys_dir = "{tmp_path}"\nclient_keys_dir = "{tmp_path}"\n')
    out = _serve("--config", str(cfg), "--data-dir", str(tmp_path / "data"), "--metrics-port", "0")
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("edxlive: error:")]
    assert len(lines) == 1 and "security.server_secret_key" in lines[0] and "edxlive keys DIR" in lines[0]


def test_print_config_says_where_each_value_came_from(tmp_path: Path) -> None:
    cfg = tmp_path / "edxlive.toml"
    cfg.write_text("[binning]\nfactor = 4\n[live]\npca_components = 6\n")
    out = _serve("--config", str(cfg), "--print-config", "--metrics-port", "0",
                 EDXLIVE_LIVE__PCA_COMPONENTS="5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "factor = 4  # file" in lines
    assert "pca_components = 5  # env" in lines  # the environment wins over the file
    assert "port = 0  # cli" in lines
    assert "# gmm_k is not set  # default" in lines
    import tomllib

    assert tomllib.loads(out.stdout)["binning"]["factor"] == 4  # the output is itself a valid config


@pytest.mark.parametrize("option", [["--connect", "tcp://192.168.10.20:5555"], ["--pub", "tcp://*:5556"],
                                    ["--control", "tcp://0.0.0.0:5557"]])
def test_without_keys_only_localhost(tmp_path: Path, option: list[str]) -> None:
    """Open mode (no CURVE keys) never listens or connects off this machine: refused at start, exit 2."""
    out = _serve(*option, "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and "is not on localhost" in out.stderr
    assert "security.server_secret_key" in out.stderr  # the remedy
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("option", "expected"), [
    ("--metrics-port", "metrics.address/metrics.port: cannot listen on 127.0.0.1:{port} (Address already in use)"),
    ("--pub", "cannot open a ZeroMQ endpoint: Address already in use (addr='tcp://127.0.0.1:{port}')"),
])
def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path, option: str, expected: str) -> None:
    """Another program on the port: one line, status 2 (systemd does not restart into the same clash)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        value = str(port) if option == "--metrics-port" else f"tcp://127.0.0.1:{port}"
        args = {"--pub": "tcp://127.0.0.1:0", "--control": "tcp://127.0.0.1:0", "--metrics-port": "0", option: value}
        out = _serve(*[x for kv in args.items() for x in kv], "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"edxlive: error: {expected.format(port=port)}"), out.stderr
    assert "Traceback" not in out.stderr
