"""Settings: one typed model per concern, read from the environment and an optional ``.env``.

``Settings`` holds the service-wide values and one nested model for each part of the
service: ``access`` (who may upload and how much), ``intake`` (taking bodies in),
``records`` (expiry, the sweeper, the index), ``tus`` (resumable uploads), ``serving``
(how it meets the network),
``mega`` and ``local`` (the two backends). Each
model states its own defaults; the code that uses a value reads it from here, never
restating it. Environment variable names are the field names in capitals, with the
model's prefix (``MEGA_``, ``LOCAL_``) where it has one.

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

import redis
from pydantic import (
    AliasChoices,
    ByteSize,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from app.access.tokens import TokensFileError

MIN_TOKEN_LENGTH = 16
# How a MEGA_SESSION value begins (app.storage.mega.session writes and reads the rest).
SESSION_PREFIX = "mega-session-v1."
# Values people paste from examples and forget to change; running with one of them
# would publish the service to anyone who read the same example.
_PLACEHOLDER = re.compile(r"change|example|placeholder|your[-_ ]|secret|xxxx|token-here", re.I)
_HTTP_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")

_HINTS = {
    "AUTH_TOKEN": (
        f"set it to a random secret of at least {MIN_TOKEN_LENGTH} characters, e.g. the output of "
        'python -c "import secrets; print(secrets.token_urlsafe(32))"'
    ),
    "STORAGE_BACKEND": "use 'mega' or 'local'",
    "MEGA_EMAIL": "set MEGA_EMAIL and MEGA_PASSWORD, or STORAGE_BACKEND=local",
    "MEGA_PASSWORD": "set MEGA_EMAIL and MEGA_PASSWORD, or STORAGE_BACKEND=local",
    "MEGA_SESSION": "print a fresh one with: python server.py mega-session",
    "MAX_UPLOAD_BYTES": "give a size such as 1073741824, 500MB or 2GiB",
    "CORS_ORIGINS": "e.g. CORS_ORIGINS=https://example.com,https://app.example.org",
    "LOG_LEVEL": "use one of critical, error, warning, info, debug",
    "LOG_FORMAT": "use text or json",
    "TICKET_SECRET": "set it to a random secret of at least 32 characters",
    "REDIS_URL": "e.g. redis://localhost:6379/0",
}


class ConfigError(Exception):
    """Invalid settings, described in one line that is safe to print."""


def _blank_is_unset(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not _HTTP_URL.fullmatch(value):
        raise ValueError("must be an http:// or https:// URL without query or fragment")
    return value.rstrip("/")


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class _Group(BaseSettings):
    """A settings model read from the environment and ``.env``; ``prefix()`` is its own."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", validate_default=True
    )

    @classmethod
    def prefix(cls) -> str:
        """The prefix of its variables' names (``MEGA_``), as its ``model_config`` says."""
        return cls.model_config.get("env_prefix") or ""


class AccessSettings(_Group):
    """Who may upload and how much (app/access)."""

    # The unlimited token named "default" (the contract of existing clients); optional
    # when TOKENS_FILE names the clients instead.
    auth_token: SecretStr | None = Field(
        default=None, description="Clients send it as X-Auth-Token or Bearer token."
    )
    # Named tokens with their limits and permissions, re-read when it changes.
    tokens_file: Path | None = None
    # Signs upload tickets; tickets are off without it.
    ticket_secret: SecretStr | None = None
    # Guards /metrics when set.
    metrics_token: SecretStr | None = None
    # The largest file anyone may upload; tokens and tickets may lower it for themselves.
    max_upload_bytes: ByteSize = ByteSize(1024**3)
    # Wrong tokens from one address per minute before it is braked (DEPLOYMENT.md).
    auth_failures_per_minute: int = Field(default=20, ge=1, le=1_000_000)

    _unset_when_blank = field_validator(
        "auth_token", "tokens_file", "ticket_secret", "metrics_token", mode="before"
    )(_blank_is_unset)

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

    @field_validator("max_upload_bytes")
    @classmethod
    def _positive_size(cls, value: ByteSize) -> ByteSize:
        if value <= 0:
            raise ValueError("must be greater than zero")
        return value

    @model_validator(mode="after")
    def _someone_may_upload(self) -> AccessSettings:
        # The file itself is read where its tokens are put in force (app.access.tokens): a
        # bad file stops the first process of a service, never a gunicorn worker started later.
        if self.auth_token is None and self.tokens_file is None:
            raise ValueError(f"AUTH_TOKEN is not set ({_HINTS['AUTH_TOKEN']}; or set TOKENS_FILE)")
        return self


class RecordsSettings(_Group):
    """Upload records: expiry, the sweeper and the index (app/records; README, "Records")."""

    # Days an upload is kept when neither the request (expires_in) nor its token's
    # default_expiry_days says; unset: kept until deleted.
    default_expiry_days: float | None = Field(default=None, gt=0, le=36500)
    # How often the service deletes expired uploads while it runs: an upload is gone at
    # most this long after it expired (`python server.py sweep` does it on demand).
    sweep_interval_seconds: float = Field(default=300.0, gt=0, le=86400)
    # How often the index of uploads is rebuilt from one listing of the storage, and the
    # storage's used and total bytes asked again. Without REDIS_URL each process keeps its
    # own index: another process's uploads reach it within this time.
    index_refresh_seconds: float = Field(default=300.0, ge=1, le=86400)

    _unset_when_blank = field_validator("default_expiry_days", mode="before")(_blank_is_unset)


class TusSettings(_Group):
    """Resumable uploads, tus 1.0 at /tus/ (app/intake/resumable.py, app/api/tus.py)."""

    model_config = SettingsConfigDict(env_prefix="TUS_")

    # How long a tus upload may take from its creation; after that it is gone. MEGA's SDK
    # gives up an unfinished upload URL after 47 h 55 min (app/storage/mega/resumable.py),
    # so one day stays well inside it.
    expiry_seconds: float = Field(default=86400.0, ge=1, le=86400)
    # A PATCH with Upload-Checksum is held in memory until it is checked (nothing of it
    # reaches storage before): larger ones get 413.
    checksum_max_bytes: ByteSize = Field(
        default=ByteSize(16 * 1024**2), ge=64 * 1024, le=256 * 1024**2
    )
    # Where open tus uploads are remembered without REDIS_URL (a small file each, shared
    # by the workers of one machine); with REDIS_URL they are kept in Redis.
    state_dir: Path = Path("data/tus-uploads")


class IntakeSettings(_Group):
    """Taking request bodies in (app/intake)."""

    # Private copies of uploads in progress (mode 0700), swept of leftovers at start-up.
    temp_upload_dir: Path = Path(tempfile.gettempdir()) / "paimon-uploads"
    # Uploads this instance runs at once, across its worker processes.
    max_concurrent_uploads: int = Field(default=4, ge=1, le=1024)
    # How long an upload waits for a free slot before 503.
    upload_slot_wait_seconds: float = Field(default=10.0, ge=0, le=600)
    # A body that sends nothing for this long is cut off (408).
    client_idle_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    # A body must average at least this rate once it has been arriving for
    # CLIENT_IDLE_TIMEOUT_SECONDS, so that a trickle cannot hold an upload slot forever;
    # 0 turns the check off.
    client_min_bytes_per_second: int = Field(default=256, ge=0, le=1024**3)


class ServingSettings(_Group):
    """How the service meets the network (app/serving): where it listens, its protocol
    limits (DEPLOYMENT.md, "Exposure"), which browser origins may call it, and its logs."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_request_line_bytes: int = Field(default=8 * 1024, ge=1024, le=1024**2)
    max_request_head_bytes: int = Field(default=32 * 1024, ge=4 * 1024, le=4 * 1024**2)
    request_head_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    max_connections_per_client: int = Field(default=64, ge=0, le=1_000_000)
    # Origins (scheme://host[:port]) whose pages may call the API from a browser; none by
    # default, so another site's page cannot use a visitor's token. Comma-separated.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = "text"

    _lowered = field_validator("log_level", "log_format", mode="before")(_lower)

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


class MegaSettings(_Group):
    """The MEGA backend (app/storage/mega): the account, the folder, and how the client
    talks to MEGA. The values and defaults are here only; the client derives its retry
    policy and upload plan from them (app/storage/mega/settings.py)."""

    model_config = SettingsConfigDict(env_prefix="MEGA_")

    email: str | None = None
    password: SecretStr | None = None
    # The base32 secret MEGA shows when two-factor authentication is turned on; the
    # current code is computed from it at each log-in.
    totp_secret: SecretStr | None = None
    # A session printed by `python server.py mega-session`: used instead of logging in.
    session: SecretStr | None = None
    api_url: str = "https://g.api.mega.co.nz"
    folder: str = "Paimon/uploads"
    session_file: Path = Path("data/mega-session.json")
    # Per-request timeouts, the retry policy (per API request and per upload region) and
    # the total time one upload may take.
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    read_timeout: float = Field(default=60.0, gt=0, le=3600)
    # The SDK's BackoffTimer starts at 0.1 s; ten tries ride out about 40 s of trouble
    # (0.1 s doubling, capped at 15 s), within the upload deadline.
    retry_attempts: int = Field(default=10, ge=1, le=100)
    retry_initial_seconds: float = Field(default=0.1, ge=0, le=60)
    retry_max_seconds: float = Field(default=15.0, ge=0, le=600)
    upload_deadline_seconds: float = Field(default=1800.0, gt=0, le=86400)
    upload_restarts: int = Field(default=3, ge=0, le=20)
    # No piece is sent further than this past the earliest one MEGA has not confirmed
    # (MEGA's SDK keeps 256 MiB; its upload servers refuse pieces beyond with -4).
    upload_window_bytes: ByteSize = Field(
        default=ByteSize(256 * 1024**2), ge=1024**2, le=256 * 1024**2
    )
    # How long one log-in may take, proof of work included. MEGA may ask for about 57,000
    # hashes of 12 MiB (easiness 100): about 8 minutes on one core, twice that on half a CPU.
    login_deadline_seconds: float = Field(default=3600.0, gt=0, le=86400)
    # How long an upload waits for a log-in in progress before it is answered 503.
    login_wait_seconds: float = Field(default=15.0, ge=0, le=600)
    # The upload pipeline: region POSTs in flight per upload, and the size of a region
    # (whole MEGA chunks). Memory per upload is about (parallel + 1) x region. Measured on
    # one worker with 4 PUTs and 4 POSTs at once: peak RSS 183 MB with 4 MiB regions, 231 MB
    # with 8 MiB, so two workers fit a 512 MB instance; a 256 MiB PUT was no slower.
    upload_parallel: int = Field(default=3, ge=1, le=16)
    upload_region_bytes: ByteSize = Field(
        default=ByteSize(4 * 1024**2), ge=1024**2, le=64 * 1024**2
    )

    _unset_when_blank = field_validator("email", "totp_secret", "session", mode="before")(
        _blank_is_unset
    )
    _is_http_url = field_validator("api_url")(_http_url)

    @field_validator("totp_secret")
    @classmethod
    def _totp_is_base32(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = re.sub(r"[\s-]", "", value.get_secret_value()).upper().rstrip("=")
        if len(text) < 16 or not re.fullmatch(r"[A-Z2-7]+", text):
            raise ValueError("is not a base32 secret such as MEGA shows when 2FA is turned on")
        return SecretStr(text)

    @field_validator("session")
    @classmethod
    def _session_is_ours(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip().startswith(SESSION_PREFIX):
            raise ValueError("is not a session printed by the mega-session command")
        return value

    @field_validator("folder")
    @classmethod
    def _folder_is_a_plain_path(cls, value: str) -> str:
        parts = [part.strip() for part in value.strip("/").split("/")]
        if not all(parts) or any(part in {".", ".."} for part in parts):
            raise ValueError("must be a path such as Paimon/uploads, without empty or dot parts")
        return "/".join(parts)


# MegaSettings' defaults without reading the environment: for the keyword defaults of
# the MEGA client's classes, which scripts and tests build without the service's settings.
MEGA_DEFAULTS = MegaSettings.model_construct()


class LocalSettings(_Group):
    """The local-disk backend (app/storage/local.py)."""

    model_config = SettingsConfigDict(env_prefix="LOCAL_")

    storage_dir: Path = Path("data/files")


class Settings(_Group):
    """All settings of the service: the service-wide values and one model per concern."""

    storage_backend: Literal["mega", "local"] = "mega"
    # The address clients use; links to this service (local files, delete URLs, ShareX)
    # are built from it, never from a request's Host header. On Render, the service's own
    # address (RENDER_EXTERNAL_URL, which Render sets) serves when it is not given.
    public_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("public_base_url", "render_external_url")
    )
    # Shared state for several workers and instances. May carry a password: never printed.
    redis_url: SecretStr | None = None
    access: AccessSettings
    records: RecordsSettings
    intake: IntakeSettings
    tus: TusSettings
    serving: ServingSettings
    mega: MegaSettings
    local: LocalSettings

    _lowered = field_validator("storage_backend", mode="before")(_lower)
    _unset_when_blank = field_validator("public_base_url", "redis_url", mode="before")(
        _blank_is_unset
    )
    _is_http_url = field_validator("public_base_url")(_http_url)

    @field_validator("redis_url")
    @classmethod
    def _is_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = value.get_secret_value()
        if not re.match(r"(rediss?|unix)://", url):
            raise ValueError("must start with redis://, rediss:// or unix://")
        try:
            # The parse the service itself does later (no connection is made), so that a
            # bad URL stops start-up here in one line. redis-py's message can quote parts
            # of the URL, the password among them: it is not passed on.
            redis.ConnectionPool.from_url(url)
        except ValueError:
            raise ValueError("is not a valid URL: check its host, port and options") from None
        return value

    @model_validator(mode="after")
    def _mega_has_credentials(self) -> Settings:
        if self.storage_backend == "mega":
            if not self.mega.email:
                raise ValueError("MEGA_EMAIL is not set but STORAGE_BACKEND is mega")
            if self.mega.password is None or not self.mega.password.get_secret_value():
                raise ValueError("MEGA_PASSWORD is not set but STORAGE_BACKEND is mega")
        return self


# The nested models, by the field of Settings that holds each.
GROUPS: dict[str, type[_Group]] = {
    "access": AccessSettings,
    "records": RecordsSettings,
    "intake": IntakeSettings,
    "tus": TusSettings,
    "serving": ServingSettings,
    "mega": MegaSettings,
    "local": LocalSettings,
}


def variable_names() -> list[str]:
    """Every environment variable the settings read, in capitals."""
    names = [name.upper() for name in Settings.model_fields if name not in GROUPS]
    for model in GROUPS.values():
        names += [f"{model.prefix()}{name}".upper() for name in model.model_fields]
    return sorted(names)


def _describe(error: ValidationError, prefix: str) -> list[str]:
    """Each bad variable and what is wrong, one phrase each; input values are never shown."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        field = str(item["loc"][0]) if item["loc"] else ""
        message = "is not set" if item["type"] == "missing" else item["msg"]
        message = message.removeprefix("Value error, ")
        if field:
            name = f"{prefix}{field}".upper()
            problem, hint = f"{name} {message}", _HINTS.get(name)
        else:
            problem = message
            hint = _HINTS["MEGA_EMAIL"] if "MEGA_" in message else None
        problems.append(f"{problem} ({hint})" if hint else problem)
    return problems


def load_settings(_env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read and validate the settings, raising ConfigError with a one-line description.

    ``overrides`` are given by variable name in lower case (``mega_email``, ``port``), as
    the environment would give them; ``_env_file`` None reads no ``.env``.
    """
    try:
        return _load(_env_file, overrides)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{_env_file} is not UTF-8 text (a byte at {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{_env_file} cannot be read ({error.strerror})") from None
    except SettingsError as error:  # names the variable, never its value
        raise ConfigError(str(error)) from None


def _load(_env_file: str | Path | None, overrides: dict[str, Any]) -> Settings:
    given = dict(overrides)
    groups: dict[str, _Group] = {}
    problems: list[str] = []
    for field, model in GROUPS.items():
        prefix = model.prefix().lower()
        own = {
            name[len(prefix) :]: given.pop(name)
            for name in list(given)
            if name.startswith(prefix) and name[len(prefix) :] in model.model_fields
        }
        try:
            groups[field] = model(_env_file=_env_file, **own)  # type: ignore[call-arg]
        except ValidationError as error:
            problems += _describe(error, model.prefix())
    if not problems:
        try:
            return Settings(_env_file=_env_file, **given, **groups)  # type: ignore[call-arg]
        except ValidationError as error:
            problems += _describe(error, "")
    raise ConfigError("; ".join(problems))


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


def tokens_file_error(error: TokensFileError) -> ConfigError:
    """The start-up error for a TOKENS_FILE that cannot be used, in the usual one line."""
    return ConfigError(f"TOKENS_FILE {error}")


def generate_token() -> str:
    """A fresh random token for a development run that has none configured."""
    return secrets.token_urlsafe(32)
