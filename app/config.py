"""Settings: one typed class, read from the environment and an optional ``.env`` file.

Everything is validated at start-up. A bad value stops the service with one line that
names the variable (see ``load_settings``), never with a traceback and never with the
value of a secret.
"""

from __future__ import annotations

import re
import secrets
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.access.tokens import TokensFileError, read_tokens_file

MIN_TOKEN_LENGTH = 16
# How a MEGA_SESSION value begins (app.storage.mega.session writes and reads the rest).
SESSION_PREFIX = "mega-session-v1."
# Values people paste from examples and forget to change; running with one of them
# would publish the service to anyone who read the same example.
_PLACEHOLDER = re.compile(r"change|example|placeholder|your[-_ ]|secret|xxxx|token-here", re.I)

_HINTS = {
    "auth_token": (
        f"set it to a random secret of at least {MIN_TOKEN_LENGTH} characters, e.g. the output of "
        'python -c "import secrets; print(secrets.token_urlsafe(32))"'
    ),
    "storage_backend": "use 'mega' or 'local'",
    "mega_email": "set MEGA_EMAIL and MEGA_PASSWORD, or STORAGE_BACKEND=local",
    "mega_password": "set MEGA_EMAIL and MEGA_PASSWORD, or STORAGE_BACKEND=local",
    "mega_session": "print a fresh one with: python server.py mega-session",
    "max_upload_bytes": "give a size such as 1073741824, 500MB or 2GiB",
    "cors_origins": "e.g. CORS_ORIGINS=https://example.com,https://app.example.org",
    "log_level": "use one of critical, error, warning, info, debug",
    "log_format": "use text or json",
    "ticket_secret": "set it to a random secret of at least 32 characters",
    "redis_url": "e.g. redis://localhost:6379/0",
}


class ConfigError(Exception):
    """Invalid settings, described in one line that is safe to print."""


class Settings(BaseSettings):
    """All settings of the service; environment variable names are the field names in capitals."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", validate_default=True
    )

    # The unlimited token named "default" (the contract of existing clients); optional
    # when TOKENS_FILE names the clients instead.
    auth_token: SecretStr | None = Field(
        default=None, description="Clients send it as X-Auth-Token or Bearer token."
    )
    tokens_file: Path | None = None
    ticket_secret: SecretStr | None = None
    # May carry a password: never printed.
    redis_url: SecretStr | None = None
    metrics_token: SecretStr | None = None
    log_format: Literal["text", "json"] = "text"
    storage_backend: Literal["mega", "local"] = "mega"
    mega_email: str | None = None
    mega_password: SecretStr | None = None
    # The base32 secret MEGA shows when two-factor authentication is turned on; the
    # current code is computed from it at each log-in.
    mega_totp_secret: SecretStr | None = None
    # A session printed by `python server.py mega-session`: used instead of logging in.
    mega_session: SecretStr | None = None
    mega_api_url: str = "https://g.api.mega.co.nz"
    mega_folder: str = "Paimon/uploads"
    mega_session_file: Path = Path("data/mega-session.json")
    # MEGA network behaviour: per-request timeouts, the retry policy (per API request
    # and per upload region) and the total time one upload may take.
    mega_connect_timeout: float = Field(default=10.0, gt=0, le=300)
    mega_read_timeout: float = Field(default=60.0, gt=0, le=3600)
    mega_retry_attempts: int = Field(default=8, ge=1, le=100)
    mega_retry_initial_seconds: float = Field(default=0.5, ge=0, le=60)
    mega_retry_max_seconds: float = Field(default=15.0, ge=0, le=600)
    mega_upload_deadline_seconds: float = Field(default=1800.0, gt=0, le=86400)
    mega_upload_restarts: int = Field(default=3, ge=0, le=20)
    # No piece is sent further than this past the earliest one MEGA has not confirmed
    # (MEGA's SDK keeps 256 MiB; its upload servers refuse pieces beyond with -4).
    mega_upload_window_bytes: ByteSize = Field(
        default=ByteSize(256 * 1024**2), ge=1024**2, le=256 * 1024**2
    )
    # How long one log-in may take, proof of work included. MEGA may ask for about 57,000
    # hashes of 12 MiB (easiness 100): about 8 minutes on one core, twice that on half a CPU.
    mega_login_deadline_seconds: float = Field(default=3600.0, gt=0, le=86400)
    # How long an upload waits for a log-in in progress before it is answered 503.
    mega_login_wait_seconds: float = Field(default=15.0, ge=0, le=600)
    # The upload pipeline: region POSTs in flight per upload, and the size of a region
    # (whole MEGA chunks). Memory per upload is about (parallel + 1) x region. Measured on
    # one worker with 4 PUTs and 4 POSTs at once: peak RSS 183 MB with 4 MiB regions, 231 MB
    # with 8 MiB, so two workers fit a 512 MB instance; a 256 MiB PUT was no slower.
    mega_upload_parallel: int = Field(default=3, ge=1, le=16)
    mega_upload_region_bytes: ByteSize = Field(
        default=ByteSize(4 * 1024**2), ge=1024**2, le=64 * 1024**2
    )
    local_storage_dir: Path = Path("data/files")
    temp_upload_dir: Path = Path(tempfile.gettempdir()) / "paimon-uploads"
    max_upload_bytes: ByteSize = ByteSize(1024**3)
    max_concurrent_uploads: int = Field(default=4, ge=1, le=1024)
    client_idle_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    # A body must average at least this rate once it has been arriving for
    # CLIENT_IDLE_TIMEOUT_SECONDS, so that a trickle cannot hold an upload slot forever;
    # 0 turns the check off.
    client_min_bytes_per_second: int = Field(default=256, ge=0, le=1024**3)
    # How long an upload waits for a free slot before 503.
    upload_slot_wait_seconds: float = Field(default=10.0, ge=0, le=600)
    public_base_url: str | None = None
    # Exposure to the internet (DEPLOYMENT.md, "Exposure"): HTTP protocol limits applied
    # by the server itself (app/serving/protocol.py) and the brake on wrong tokens.
    max_request_line_bytes: int = Field(default=8 * 1024, ge=1024, le=1024**2)
    max_request_head_bytes: int = Field(default=32 * 1024, ge=4 * 1024, le=4 * 1024**2)
    request_head_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    max_connections_per_client: int = Field(default=64, ge=0, le=1_000_000)
    auth_failures_per_minute: int = Field(default=20, ge=1, le=1_000_000)
    # Origins (scheme://host[:port]) whose pages may call the API from a browser; none by
    # default, so another site's page cannot use a visitor's token. Comma-separated.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # -- resumable uploads (tus 1.0 at /tus/) ------------------------------------------------
    # How long a tus upload may take from its creation; after that it is gone. MEGA's SDK
    # gives up an unfinished upload URL after 47 h 55 min (app/storage/mega/resumable.py),
    # so one day stays well inside it.
    tus_expiry_seconds: float = Field(default=86400.0, ge=1, le=86400)
    # A PATCH with Upload-Checksum is held in memory until it is checked (nothing of it
    # reaches storage before): larger ones get 413.
    tus_checksum_max_bytes: ByteSize = Field(
        default=ByteSize(16 * 1024**2), ge=64 * 1024, le=256 * 1024**2
    )
    # Where open tus uploads are remembered without REDIS_URL (a small file each, shared
    # by the workers of one machine); with REDIS_URL they are kept in Redis.
    tus_state_dir: Path = Path("data/tus-uploads")

    @field_validator("auth_token", "ticket_secret", "metrics_token")
    @classmethod
    def _token_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if token != token.strip() or not token.isprintable():
            raise ValueError("contains spaces or control characters")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"is shorter than {MIN_TOKEN_LENGTH} characters")
        if _PLACEHOLDER.search(token):
            raise ValueError("is a placeholder from an example, not a secret")
        return value

    @field_validator("ticket_secret")
    @classmethod
    def _secret_is_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("is shorter than 32 characters")
        return value

    @field_validator("redis_url")
    @classmethod
    def _is_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.match(r"(rediss?|unix)://", value.get_secret_value()):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("log_level", "storage_backend", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "mega_email",
        "public_base_url",
        "auth_token",
        "tokens_file",
        "ticket_secret",
        "redis_url",
        "metrics_token",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("mega_api_url", "public_base_url")
    @classmethod
    def _is_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an http:// or https:// URL without query or fragment")
        return value.rstrip("/")

    @field_validator("mega_totp_secret", "mega_session", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("mega_totp_secret")
    @classmethod
    def _totp_is_base32(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = re.sub(r"[\s-]", "", value.get_secret_value()).upper().rstrip("=")
        if len(text) < 16 or not re.fullmatch(r"[A-Z2-7]+", text):
            raise ValueError("is not a base32 secret such as MEGA shows when 2FA is turned on")
        return SecretStr(text)

    @field_validator("mega_session")
    @classmethod
    def _session_is_ours(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip().startswith(SESSION_PREFIX):
            raise ValueError("is not a session printed by the mega-session command")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _are_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.fullmatch(r"https?://[^\s/?#]+", origin.rstrip("/")):
                raise ValueError("must be origins such as https://example.com, comma-separated")
        return [origin.rstrip("/") for origin in value]

    @field_validator("mega_folder")
    @classmethod
    def _folder_is_a_plain_path(cls, value: str) -> str:
        parts = [part.strip() for part in value.strip("/").split("/")]
        if not all(parts) or any(part in {".", ".."} for part in parts):
            raise ValueError("must be a path such as Paimon/uploads, without empty or dot parts")
        return "/".join(parts)

    @field_validator("max_upload_bytes")
    @classmethod
    def _positive_size(cls, value: ByteSize) -> ByteSize:
        if value <= 0:
            raise ValueError("must be greater than zero")
        return value

    @model_validator(mode="after")
    def _someone_may_upload(self) -> Settings:
        if self.auth_token is None and self.tokens_file is None:
            raise ValueError(f"AUTH_TOKEN is not set ({_HINTS['auth_token']}; or set TOKENS_FILE)")
        if self.tokens_file is not None:
            try:
                read_tokens_file(self.tokens_file, int(self.max_upload_bytes))
            except TokensFileError as error:
                raise ValueError(f"TOKENS_FILE {error}") from None
        return self

    @model_validator(mode="after")
    def _mega_has_credentials(self) -> Settings:
        if self.storage_backend == "mega":
            if not self.mega_email:
                raise ValueError("MEGA_EMAIL is not set but STORAGE_BACKEND is mega")
            if self.mega_password is None or not self.mega_password.get_secret_value():
                raise ValueError("MEGA_PASSWORD is not set but STORAGE_BACKEND is mega")
        return self


def describe_errors(error: ValidationError) -> str:
    """One line naming each bad variable and what is wrong; input values are never shown."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        field = str(item["loc"][0]) if item["loc"] else ""
        message = "is not set" if item["type"] == "missing" else item["msg"]
        message = message.removeprefix("Value error, ")
        if field:
            problem = f"{field.upper()} {message}"
            hint = _HINTS.get(field)
        else:
            problem = message
            hint = _HINTS["mega_email"] if "MEGA_" in message else None
        problems.append(f"{problem} ({hint})" if hint else problem)
    return "; ".join(problems)


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, raising ConfigError with a one-line description."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(describe_errors(error)) from None


def check_served_settings(settings: Settings) -> None:
    """What the service needs beyond valid values once it is served to a network.

    Links to files stored locally point back at this service. Built from the request's
    Host header, a client could make the service answer with a link to a host of its
    choosing, so they come from PUBLIC_BASE_URL only.
    """
    if settings.storage_backend == "local" and settings.public_base_url is None:
        raise ConfigError(
            "PUBLIC_BASE_URL is not set but STORAGE_BACKEND is local (the links it returns "
            "point back at this service: set the address clients use, e.g. "
            "https://files.example.org or http://localhost:8080)"
        )


def generate_token() -> str:
    """A fresh random token for a development run that has none configured."""
    return secrets.token_urlsafe(32)
