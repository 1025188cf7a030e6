"""Configuration: a TOML file plus EDXLIVE_* environment variables (pydantic-settings).

Precedence, highest first: explicit overrides (CLI flags) > environment > TOML file > defaults.
Nested keys use a double underscore in the environment: ``EDXLIVE_ANALYSIS__GMM_K=4``.
Every default suits a first run on one machine: all endpoints on localhost, data in the
platform's user data folder, theoretical k-factors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_data_path
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "EDXLIVE_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InboundConfig(_Section):
    """Where the acquisition PC publishes. The daemon's SUB socket connects to each."""

    endpoints: list[str] = Field(default_factory=lambda: ["tcp://127.0.0.1:5555"])
    heartbeat_timeout_s: float = Field(default=10.0, gt=0)


class OutboundConfig(_Section):
    """Where clients attach. Port 0 binds an ephemeral port, read back and written to daemon.json."""

    pub: str = "tcp://127.0.0.1:5556"
    control: str = "tcp://127.0.0.1:5557"
    status_interval_s: float = Field(default=1.0, gt=0)
    progress_interval_s: float = Field(default=0.25, gt=0)
    live_interval_s: float = Field(default=2.0, gt=0)
    sndhwm: int = Field(default=100, ge=1)


class StorageConfig(_Section):
    data_dir: Path = Field(default_factory=lambda: user_data_path("edxlive", appauthor=False))
    spectrum_format: Literal["zspy", "hspy"] = "zspy"
    checkpoint_interval_s: float = Field(default=30.0, ge=0)


class BinningConfig(_Section):
    factor: int = Field(default=2, ge=1, le=16)


class LiveConfig(_Section):
    pca_components: int = Field(default=8, ge=1, le=64)
    energy_min_kev: float = Field(default=0.2, ge=0)
    energy_max_kev: float = Field(default=20.0, gt=0)
    element_maps: bool = True


Workflow = Literal["pca_gmm", "umap_hdbscan"]


class AnalysisConfig(_Section):
    workflows: list[Workflow] = Field(default_factory=lambda: ["pca_gmm", "umap_hdbscan"])
    scaling: Literal["poisson", "robust"] = "robust"  # measured: docs/analysis.md
    gmm_k: int | None = Field(default=None, ge=1, le=32)
    gmm_k_max: int = Field(default=8, ge=2, le=32)
    min_cluster_size: int | None = Field(default=None, ge=2)
    umap_epochs: int | None = Field(default=None, ge=10)
    smoothing_px: float = Field(default=1.0, ge=0, le=5)  # docs/analysis.md, "Spatial smoothing"
    random_state: int | None = 0
    executor: str = "local"
    workers: int = Field(default=1, ge=1, le=64)
    warmup: bool = True

    @field_validator("executor")
    @classmethod
    def _executor(cls, v: str) -> str:
        if v != "local" and not v.startswith(("tcp://", "tls://", "inproc://")):
            raise ValueError("executor must be 'local' or a Dask scheduler address like tcp://host:8786")
        return v


class QuantConfig(_Section):
    elements: list[str] = Field(default_factory=list)
    kfactors: Path | None = None
    anions: list[str] = Field(default_factory=lambda: ["S"])
    beam_energy_kev: float | None = Field(default=None, gt=0)


class LimitsConfig(_Section):
    max_pixels: int = Field(default=2048 * 2048, ge=1)
    max_channels: int = Field(default=8192, ge=1)
    max_frames: int = Field(default=10_000, ge=1)
    max_message_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(default=1024 * 1024, ge=1024)
    memory_budget_bytes: int = Field(default=8 * 1024**3, ge=1024**2)


class MetricsConfig(_Section):
    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class SecurityConfig(_Section):
    """CURVE keys (docs/operations.md). Without ``server_secret_key`` the daemon runs open, on localhost only.

    The daemon is the CURVE server on every socket and each peer a client (service/security.py says
    why). The daemon reads the first three keys; the clients on this machine (simulate or a bridge,
    tail, dashboard) read the last three. Only the shape is checked here: files are read when used,
    so a dashboard never fails over a daemon key it need not read.
    """

    server_secret_key: Path | None = None  # the daemon's key pair (server.key_secret)
    publisher_keys_dir: Path | None = None  # public keys of the acquisition PCs allowed to feed
    client_keys_dir: Path | None = None  # public keys of the dashboards and scripts allowed to read
    server_public_key: Path | None = None  # the daemon's public key (server.key), for clients
    client_secret_key: Path | None = None  # this dashboard's or tail's key pair
    publisher_secret_key: Path | None = None  # this acquisition publisher's key pair

    @model_validator(mode="after")
    def _complete(self) -> SecurityConfig:
        dirs = {"publisher_keys_dir": self.publisher_keys_dir, "client_keys_dir": self.client_keys_dir}
        if self.server_secret_key is not None:
            missing = [k for k, v in dirs.items() if v is None]
            if missing:
                raise ValueError(f"security.server_secret_key needs security.{missing[0]} too "
                                 "(the folder of allowed public keys)")
        elif any(v is not None for v in dirs.values()):
            raise ValueError("key folders without security.server_secret_key: set it, or remove the folders")
        for key in ("client_secret_key", "publisher_secret_key"):
            if getattr(self, key) is not None and self.server_public_key is None:
                raise ValueError(f"security.{key} needs security.server_public_key (the daemon's server.key)")
        return self


class LoggingConfig(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDXLIVE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    inbound: InboundConfig = Field(default_factory=InboundConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    binning: BinningConfig = Field(default_factory=BinningConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get(CONFIG_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


class ConfigError(ValueError):
    """An invalid configuration, with one line that names the key and what is allowed."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings. Raises ConfigError with a one-line message."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if config_file is not None:
        if not Path(config_file).is_file():
            raise ConfigError(f"config file {config_file} does not exist; pass an existing TOML file")
        os.environ[CONFIG_ENV] = str(config_file)
    _check_env_sections()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc.errors()[0])) from None
    except SettingsError as exc:  # an environment value that is not valid JSON where JSON is needed
        raise ConfigError(_env_parse_error(exc)) from None
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"cannot read config file {os.environ.get(CONFIG_ENV)}: {exc}; fix the TOML syntax") from None


def _sections() -> dict[str, type[BaseModel]]:
    return {name: field.annotation for name, field in Settings.model_fields.items()}  # type: ignore[misc]


def _check_env_sections() -> None:
    """``EDXLIVE_<SECTION>__<KEY>`` with a misspelt section would be ignored silently: refuse it."""
    sections = _sections()
    for name in os.environ:
        if name.startswith("EDXLIVE_") and "__" in name:
            section = name[len("EDXLIVE_"):].split("__", 1)[0].lower()
            if section not in sections:
                raise ConfigError(f"environment variable {name}: {section!r} is not a config section; "
                                  f"the sections are {', '.join(sections)}")


def _origin(section: str, key: str | None) -> str:
    """Where a key's value came from, for error messages: the environment variable or the file."""
    env = f"EDXLIVE_{section.upper()}" + (f"__{key.upper()}" if key else "")
    if env in os.environ:
        return f" (from {env})"
    path = os.environ.get(CONFIG_ENV)
    return f" (from {path})" if path else ""


def _explain(err: Any) -> str:
    """One line for pydantic's first error: the dotted key, the value given, what is allowed."""
    loc = [str(x) for x in err.get("loc", ())]
    key = ".".join(loc[:2]) + "".join(f"[{x}]" for x in loc[2:]) or "config"
    section, field = loc[0] if loc else "config", loc[1] if len(loc) > 1 else None
    sections = _sections()
    if err.get("type") == "extra_forbidden":
        if field is None:
            return (f"{section!r} is not a config section{_origin(section, None)}; "
                    f"the sections are {', '.join(sections)}")
        known = ", ".join(sections[section].model_fields) if section in sections else ""
        return f"{key} is not a known key{_origin(section, field)}; [{section}] has {known}"
    if field is None and err.get("type") == "model_type":
        return f"{section}{_origin(section, None)} must be a [{section}] table of keys, not a single value"
    given = err.get("input")
    value = f" = {given!r}" if field is not None and not isinstance(given, dict) else ""
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"invalid config value for {key}{value}{_origin(section, field)}: {msg}"


def _env_parse_error(exc: Exception) -> str:
    """pydantic-settings names only the section; find the environment variable that is not JSON."""
    import json

    for name, value in os.environ.items():
        if not name.startswith("EDXLIVE_") or "__" not in name:
            continue
        try:
            json.loads(value)
        except ValueError:
            section, key = name[len("EDXLIVE_"):].lower().split("__", 1)
            model = _sections().get(section)
            field = model.model_fields.get(key) if model else None
            if field is not None and "list" in str(field.annotation):
                return (f"environment variable {name}={value!r} is not a JSON list; write it as JSON, "
                        f"e.g. {name}='[\"a\", \"b\"]'")
    return f"cannot read the EDXLIVE_* environment: {exc}"


def build_settings(config_file: Path | None = None, *, connect: list[str] | None = None,
                   data_dir: Path | None = None, pub: str | None = None, control: str | None = None,
                   metrics_port: int | None = None) -> Settings:
    """CLI flags over environment over TOML file over defaults."""
    settings = load_settings(config_file)
    overrides = {
        ("inbound", "endpoints"): connect or None,
        ("storage", "data_dir"): data_dir,
        ("outbound", "pub"): pub,
        ("outbound", "control"): control,
        ("metrics", "port"): metrics_port,
    }
    from pydantic import ValidationError

    for (section, key), value in overrides.items():
        if value is None:
            continue
        try:
            setattr(getattr(settings, section), key, value)
        except ValidationError as exc:
            raise ConfigError(f"invalid value for {section}.{key}: {exc.errors()[0].get('msg')}") from None
        _CLI_KEYS.add(f"{section}.{key}")
    return settings


_CLI_KEYS: set[str] = set()


def value_sources(config_file: Path | None) -> dict[str, str]:
    """Where each key's value came from: cli, env, file or default."""
    import tomllib

    file_keys: set[str] = set()
    path = config_file or os.environ.get(CONFIG_ENV)
    if path and Path(path).is_file():
        data = tomllib.loads(Path(path).read_text())
        file_keys = {f"{s}.{k}" for s, table in data.items() if isinstance(table, dict) for k in table}
    sources = {}
    for section, model in Settings.model_fields.items():
        for key in model.annotation.model_fields:  # type: ignore[union-attr]
            dotted = f"{section}.{key}"
            env = f"EDXLIVE_{section.upper()}__{key.upper()}"
            sources[dotted] = ("cli" if dotted in _CLI_KEYS else "env" if env in os.environ
                               else "file" if dotted in file_keys else "default")
    return sources


def print_settings(settings: Settings, config_file: Path | None = None) -> None:
    """The effective configuration as TOML (valid TOML: it can be saved as a config file), each value
    annotated with where it came from."""
    import json

    sources = value_sources(config_file)
    dumped = settings.model_dump(mode="json")
    for section, table in dumped.items():
        print(f"[{section}]")
        for key, value in table.items():
            source = sources.get(f"{section}.{key}", "default")
            # TOML has no null: an unset key is shown commented out, so the output stays valid TOML.
            line = f"# {key} is not set" if value is None else f"{key} = {json.dumps(value)}"
            print(f"{line}  # {source}")
        print()
