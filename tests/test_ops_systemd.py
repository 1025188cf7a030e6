"""The packaged systemd unit: systemd's own tools check it, and its command line really runs.

``systemd-analyze verify`` also checks that ExecStart's binary exists. The unit names the
documented install location (/opt/edxlive/.venv/bin/edxlive), absent on a build machine, so the
check runs on a copy whose ExecStart names this environment's installed ``edxlive`` script:
everything else in the file is verified as shipped. Where systemd's tools are absent the tests
say so and skip.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import procs

SYSTEMD = procs.REPO / "systemd"
UNIT = SYSTEMD / "edxlive.service"
EXAMPLE_CONFIG = SYSTEMD / "edxlive.toml"
INSTALLED_BINARY = "/opt/edxlive/.venv/bin/edxlive"
INSTALLED_CONFIG = "/etc/edxlive/edxlive.toml"


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every line, in order: unit files repeat keys, so no dict."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def service(key: str) -> list[str]:
    return [v for s, k, v in directives(UNIT.read_text()) if s == "Service" and k == key]


def installed_edxlive() -> Path:
    """This environment's console script, as pip installed it beside the interpreter."""
    script = Path(sys.executable).parent / "edxlive"
    assert script.is_file(), f"{script} missing: install the package (pip install -e .)"
    return script


def unit_for_this_machine(tmp_path: Path) -> Path:
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_BINARY} " in text
    copy = tmp_path / "edxlive.service"  # verify wants the unit's own name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={installed_edxlive()} "))
    return copy


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: systemd is not installed here, so the unit cannot be checked by it")
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = systemd_tool("systemd-analyze")
    out = subprocess.run([tool, "verify", str(unit_for_this_machine(tmp_path))], capture_output=True, text=True,
                         timeout=60, check=False)
    # verify exits 0 on unknown keys and bad values too: it only warns, naming the unit. Any such line fails.
    ours = [line for line in (out.stdout + out.stderr).splitlines() if "edxlive" in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


def test_unit_hardening_scores_ok(tmp_path: Path) -> None:
    """systemd's own exposure score (0 = locked down, 10 = unrestricted) stays in its "OK" band."""
    tool = systemd_tool("systemd-analyze")
    if "--offline" not in subprocess.run([tool, "--help"], capture_output=True, text=True, check=False).stdout:
        pytest.skip("this systemd-analyze cannot review a unit file offline (systemd < 250)")
    out = subprocess.run([tool, "security", "--offline=true", "--threshold=20", str(unit_for_this_machine(tmp_path))],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr  # threshold is on a 0-100 scale: 20 = 2.0


def test_unit_is_a_watched_notify_service_with_a_graceful_stop() -> None:
    assert service("Type") == ["notify"]
    assert service("NotifyAccess") == ["main"]  # only the daemon, not its analysis workers, speaks for it
    assert service("Restart") == ["on-failure"]
    assert service("RestartPreventExitStatus") == ["2"]  # a config error: restarting cannot fix it
    watchdog = _seconds(service("WatchdogSec")[0])
    assert 10 <= watchdog <= 300
    assert service("KillSignal") == ["SIGTERM"]
    # SIGTERM to the daemon only: it waits for its analysis worker, which must not die mid-write.
    assert service("KillMode") == ["mixed"]
    assert _seconds(service("TimeoutStopSec")[0]) >= 120


def test_unit_is_hardened() -> None:
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "StateDirectory": "edxlive", "CacheDirectory": "edxlive",
                       "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "User": "edxlive",
                       "CapabilityBoundingSet": ""}.items():
        assert service(key) == [value], key
    assert service("MemoryMax") and service("MemoryMax")[0].endswith("G")
    assert not service("MemoryDenyWriteExecute")  # numba's JIT writes executable code
    env = dict(e.split("=", 1) for e in service("Environment"))
    assert env["EDXLIVE_STORAGE__DATA_DIR"] == "/var/lib/edxlive"  # the StateDirectory
    assert env["NUMBA_CACHE_DIR"].startswith("/var/cache/edxlive/")  # the CacheDirectory


def test_execstart_runs_the_documented_command_with_the_example_config() -> None:
    """The unit's command line, with its environment, against the shipped example config: it is accepted."""
    argv = shlex.split(service("ExecStart")[0])
    assert argv[0] == INSTALLED_BINARY and argv[1:] == ["serve", "--config", INSTALLED_CONFIG]
    unit_env = dict(e.split("=", 1) for e in service("Environment"))
    out = subprocess.run([str(installed_edxlive()), *argv[1:3], str(EXAMPLE_CONFIG), "--print-config"],
                         capture_output=True, text=True, timeout=60, env=procs.child_env(**unit_env), check=False)
    assert out.returncode == 0, out.stderr
    assert 'data_dir = "/var/lib/edxlive"  # env' in out.stdout
    assert 'endpoints = ["tcp://127.0.0.1:5555"]  # file' in out.stdout
    readme = (procs.REPO / "README.md").read_text()
    assert INSTALLED_BINARY.removesuffix("/bin/edxlive") in readme and INSTALLED_CONFIG in readme


def test_sysusers_file_creates_the_user(tmp_path: Path) -> None:
    tool = systemd_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    out = subprocess.run([tool, f"--root={tmp_path}", str(SYSTEMD / "edxlive.sysusers")], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert any(line.startswith("edxlive:") and ":/var/lib/edxlive:" in line for line in passwd.splitlines())
    assert any(line.startswith("edxlive:") for line in (tmp_path / "etc" / "group").read_text().splitlines())


def _seconds(value: str) -> float:
    units = {"ms": 1e-3, "s": 1, "sec": 1, "min": 60, "h": 3600}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * units[suffix]
    return float(value)
