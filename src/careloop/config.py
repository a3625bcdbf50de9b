"""One typed settings object, read from CARELOOP_* environment variables at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from careloop.adapters.field_crypto import decode_key, parse_keyring


class Settings(BaseSettings):
    # Inputs stay out of error messages: they may hold keys or a database password.
    model_config = SettingsConfigDict(
        env_prefix="CARELOOP_", extra="ignore", hide_input_in_errors=True
    )

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
    # How long an in-process worker (careloop serve) may hold back while the API is
    # serving requests before it runs a step anyway; 0 = never hold back.
    worker_yield_seconds: float = Field(default=1.0, ge=0, le=60)
    # Webhook targets on private, loopback or link-local addresses are refused (SSRF)
    # unless this is set, for development against local receivers only.
    webhooks_allow_private: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    duplicate_window_days: int = Field(default=30, ge=1, le=3650)
    inbound_tolerance_seconds: int = Field(default=300, ge=10, le=3600)
    # Field encryption at rest (docs/encryption.md): "k2:<base64>,k1:<base64>", the
    # first key seals, every listed key opens; unset = off. The index key keys the
    # blind index of searchable encrypted identifiers and never rotates with them.
    field_keys: SecretStr | None = None
    field_index_key: SecretStr | None = None

    # Authentication (docs/authentication.md). None: on in production, off elsewhere.
    require_totp_for_staff: bool | None = None
    login_max_failures: int = Field(default=5, ge=1, le=100)
    login_lockout_minutes: int = Field(default=15, ge=1, le=24 * 60)
    login_rate_limit: int = Field(default=10, ge=1, le=10_000)
    login_rate_window_seconds: int = Field(default=60, ge=1, le=3600)
    session_lifetime_minutes: int = Field(default=12 * 60, ge=5, le=7 * 24 * 60)
    session_idle_timeout_minutes: int = Field(default=30, ge=1, le=24 * 60)
    token_max_lifetime_days: int = Field(default=365, ge=1, le=3650)
    token_rotation_grace_minutes: int = Field(default=60, ge=0, le=7 * 24 * 60)
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_redirect_uri: str | None = None
    oidc_scopes: tuple[str, ...] = ("openid", "profile", "email")
    # The ID-token claim that names an existing careloop username the first time an
    # identity signs in; later sign-ins match on (issuer, subject) alone.
    oidc_link_claim: str = "preferred_username"

    def totp_required_for_staff(self) -> bool:
        if self.require_totp_for_staff is None:
            return self.environment == "production"
        return self.require_totp_for_staff

    @model_validator(mode="after")
    def _check_single_sign_on(self) -> Settings:
        if self.oidc_issuer is None:
            return self
        if not self.oidc_client_id or not self.oidc_redirect_uri:
            raise ValueError(
                "CARELOOP_OIDC_ISSUER needs CARELOOP_OIDC_CLIENT_ID and CARELOOP_OIDC_REDIRECT_URI"
            )
        if "openid" not in self.oidc_scopes:
            raise ValueError("CARELOOP_OIDC_SCOPES must include 'openid'")
        urls = {"ISSUER": self.oidc_issuer, "REDIRECT_URI": self.oidc_redirect_uri}
        insecure = [name for name, url in urls.items() if not url.startswith("https://")]
        if self.environment == "production" and insecure:
            raise ValueError(f"CARELOOP_OIDC_{insecure[0]} must be an https:// URL in production")
        return self

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
        self._check_field_keys()
        return self

    def _check_field_keys(self) -> None:
        keys = self.field_keys.get_secret_value().strip() if self.field_keys else ""
        index_key = self.field_index_key.get_secret_value() if self.field_index_key else ""
        if not keys:
            if index_key:
                raise ValueError(
                    "CARELOOP_FIELD_INDEX_KEY is set but CARELOOP_FIELD_KEYS is not: "
                    "field encryption needs both"
                )
            return
        try:
            parse_keyring(keys)
        except ValueError as error:
            raise ValueError(f"CARELOOP_FIELD_KEYS: {error}") from None
        if not index_key:
            raise ValueError(
                "CARELOOP_FIELD_INDEX_KEY must be set when CARELOOP_FIELD_KEYS is: it keys "
                "the blind index that keeps encrypted member IDs searchable "
                "(`careloop keys generate` prints one)"
            )
        try:
            decode_key(index_key)
        except ValueError as error:
            raise ValueError(f"CARELOOP_FIELD_INDEX_KEY {error}") from None

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'careloop.db').resolve()}"
