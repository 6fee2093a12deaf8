"""Settings of `orthofed serve`: flags, else ORTHOFED_* environment variables, else defaults."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scenarios.tracking_spec import INSTALL_HINT
from server.runs.layout import PROJECT_ROOT


class ServeSettings(BaseSettings):
    """What the API server may do and where."""

    model_config = SettingsConfigDict(env_prefix="ORTHOFED_", extra="forbid", frozen=True)

    runs_dir: Path = Field(Path("runs"), description="Runs and the metrics store.")
    host: str = Field("127.0.0.1", description="Interface to bind (loopback by default).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    concurrency: int = Field(1, ge=0, le=64, description="Runs executing at once; more wait "
                             "(0: accept and queue runs but start none, a paused server).")
    token: SecretStr | None = Field(
        None, description="When set, requests that change something need "
        "`Authorization: Bearer <token>`; reads stay open."
    )
    scenarios_dir: Path = Field(
        PROJECT_ROOT / "scenarios",
        description="Shipped scenarios (POST /runs?shipped=NAME) and the folder relative data "
        "paths of a posted scenario resolve against.",
    )
    data_dirs: tuple[Path, ...] = Field(
        (PROJECT_ROOT.parent / "shared" / "data",),
        description="Besides scenarios_dir, the only folders a posted scenario may read.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1, description="Largest scenario body accepted.")
    max_clients: int | None = Field(
        None, ge=1, description="Most clients (federation.num_clients) one posted run may "
        "ask for; None: no cap beyond the schema's.")
    max_rounds: int | None = Field(
        None, ge=1, description="Most rounds one posted run may ask for, over all tasks of a "
        "stream; None: no cap beyond the schema's.")
    superlink: str | None = Field(
        None, description="HOST:PORT of a running federation's SuperLink (e.g. "
        "ORTHOFED_SUPERLINK=superlink:9200 in compose.yaml): posted runs train there, on "
        "its SuperNodes, instead of in a local simulation. Its ServerApp and SuperNodes "
        "must see runs_dir and the data at the same paths.")
    superlink_ca: FilePath | None = Field(
        None, description="The CA certificate the SuperLink's TLS is verified against "
        "(ORTHOFED_SUPERLINK_CA; `orthofed credentials` makes one); None: the SuperLink "
        "is insecure.")
    ssl_certfile: FilePath | None = Field(
        None, description="Serve HTTPS with this certificate (PEM); with ssl_keyfile.")
    ssl_keyfile: FilePath | None = Field(
        None, description="The private key of ssl_certfile (PEM).")
    tensorboard: bool = Field(
        False, description="Posted runs without a `tracking` section write TensorBoard event "
        "files in their run folder (scenario tracking.tensorboard).")
    mlflow: bool = Field(
        False, description="Posted runs without a `tracking` section log to MLflow "
        "(scenario tracking.mlflow), in mlflow_uri.")
    mlflow_uri: str | None = Field(
        None, min_length=1, description="The MLflow tracking URI of posted runs (a server, "
        "or sqlite:///path.db); None: sqlite:///<runs_dir>/mlflow.db. A posted scenario may "
        "name a tracking server (http, https) of its own, never a local store.")
    sweep_workers: int = Field(
        1, ge=1, le=256, description="Runs at once of each posted sweep (POST /sweeps: "
        "`orthofed sweep FILE --workers N`); a sweep's runs do not count against concurrency.")
    max_local_steps: int | None = Field(
        None, ge=1, description="Most local steps per client per round (federation."
        "local_steps) one posted run may ask for; None: no cap.")

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value):
        return None if value == "" else value  # compose passes ORTHOFED_TOKEN= when unset

    @field_validator("superlink", mode="before")
    @classmethod
    def _superlink_is_host_port(cls, value):
        from server.orchestration.launcher import superlink_address

        return None if value in (None, "") else superlink_address(str(value))

    @model_validator(mode="after")
    def _https_needs_both_files(self) -> ServeSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            given, missing = (("ssl_certfile", "ssl_keyfile") if self.ssl_keyfile is None
                              else ("ssl_keyfile", "ssl_certfile"))
            raise ValueError(f"{missing}: needed with {given} (HTTPS takes both), got none")
        return self

    @model_validator(mode="after")
    def _tracking_libraries_are_installed(self) -> ServeSettings:
        for field in ("tensorboard", "mlflow"):
            if getattr(self, field) and importlib.util.find_spec(field) is None:
                raise ValueError(f"{field}: needs the {field} package, which is not installed: "
                                 f"{INSTALL_HINT}")
        return self

    def readable_roots(self) -> list[Path]:
        return [self.scenarios_dir, *self.data_dirs]
