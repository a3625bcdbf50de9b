"""One typed settings object, read from CARELOOP_* environment variables at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARELOOP_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("./careloop-data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is a SQLite file in data_dir"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_upload_bytes: int = Field(default=20_000_000, ge=1024)
    allowed_upload_types: tuple[str, ...] = (
        "application/pdf",
        "image/tiff",
        "image/png",
        "image/jpeg",
        "text/plain",
        "application/xml",
        "application/json",
    )
    audit_chains: int = Field(default=16, ge=1, le=1024)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    run_worker: bool = True
    # Webhook targets on private, loopback or link-local addresses are refused (SSRF)
    # unless this is set, for development against local receivers only.
    webhooks_allow_private: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    duplicate_window_days: int = Field(default=30, ge=1, le=3650)
    inbound_tolerance_seconds: int = Field(default=300, ge=10, le=3600)

    @model_validator(mode="after")
    def _refuse_insecure_production(self) -> Settings:
        if self.environment == "production" and (
            self.database_url is None or self.database_url.startswith("sqlite")
        ):
            raise ValueError(
                "production needs CARELOOP_DATABASE_URL pointing at PostgreSQL; "
                "the embedded SQLite default is for a single clinic or a demo"
            )
        if self.environment == "production" and self.webhooks_allow_private:
            raise ValueError(
                "CARELOOP_WEBHOOKS_ALLOW_PRIVATE is for development only: in production it "
                "would let a webhook subscription reach internal services (SSRF)"
            )
        return self

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'careloop.db').resolve()}"
