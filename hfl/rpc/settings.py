"""Service configuration from HFL_* environment variables (pydantic-settings)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hfl.domain import SPECIALTIES
from hfl.errors import ConfigError

Role = Literal["authority", "leader", "fog", "facility", "validator"]

FACILITY_ATTACKS = ("none", "sign_flip", "scale", "gaussian", "label_flip", "alie", "ipm", "free_ride", "nan")
VALIDATOR_FAULTS = ("none", "reject_all", "accept_all", "silent")


class Settings(BaseSettings):
    """Everything a service reads from its environment. Each field is HFL_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="HFL_", extra="ignore", case_sensitive=False)

    role: Role | None = None
    node_id: str = ""
    listen: str = "0.0.0.0:50051"
    advertise_host: str = Field(default="", description="host others use to reach this node; default: own IP")
    authority: str = "authority:50051"
    leader: str = ""
    metrics_port: int = 9100
    state_dir: Path = Path("/var/lib/hfl")
    ready_file: str = ""
    log_level: str = "INFO"

    # facility
    specialty: str = ""
    dataset: str = "synthetic"
    label: str | None = None
    shard: str = ""
    n_patients: int | None = None
    byzantine: str = "none"
    byzantine_scale: float = 10.0
    drop_rate: float = 0.0

    # learning and rounds (leader)
    seed: int = 0
    model: Literal["logreg", "mlp"] = "logreg"
    hidden: int = 16
    n_features: int = 0
    rounds: int = 0
    min_facilities: int = 3
    min_fogs: int = 1
    lr: float = 0.0
    epochs: int = 0
    batch_size: int = 0
    clip_update: float = 0.0
    secagg: bool = False
    rule: str = "mean"
    f: int = 0
    round_timeout: float = 120.0
    round_interval: float = 0.0
    vote_timeout: float = 60.0

    # authority
    committee_size: int = 4
    bucket_size: int = 4
    epoch_rounds: int = 5
    pow_difficulty: int = 12

    # validator
    validation_margin: float = 0.05

    @field_validator("listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {v!r}")
        return v

    @field_validator("specialty")
    @classmethod
    def _specialty(cls, v: str) -> str:
        if v and v not in SPECIALTIES:
            raise ValueError(f"must be one of {', '.join(SPECIALTIES)}")
        return v

    @model_validator(mode="after")
    def _faults(self) -> Settings:
        allowed = VALIDATOR_FAULTS if self.role == "validator" else FACILITY_ATTACKS
        if self.byzantine not in allowed:
            raise ValueError(f"HFL_BYZANTINE={self.byzantine!r} is not valid for a {self.role}; "
                             f"choose one of {', '.join(allowed)}")
        return self

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def resolved_advertise_host(self) -> str:
        if self.advertise_host:
            return self.advertise_host
        host = self.listen.rpartition(":")[0]
        if host not in ("0.0.0.0", "[::]", "::"):
            return host
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"

    def resolved_node_id(self) -> str:
        return self.node_id or f"{self.role}-{socket.gethostname()}"


def load_settings(**overrides: object) -> Settings:
    """Read settings; turn validation errors into one plain ConfigError line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = "HFL_" + "_".join(str(x) for x in err["loc"]).upper() if err["loc"] else "settings"
            parts.append(f"{loc}: {err['msg']}")
        raise ConfigError("bad configuration: " + "; ".join(parts)) from None
