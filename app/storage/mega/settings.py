"""The MEGA backend's own settings, built once from the service's settings.

``app.config.Settings`` is where every value and default is written (and documented);
this model only gathers the MEGA ones under short names, with no defaults of its own,
and derives the retry policy and upload limits from them, so nothing further down
restates a number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from app.config import Settings

from .retry import RetryPolicy

# One API call never retries for longer than this, unless its caller's deadline is nearer.
API_CALL_DEADLINE_S = 120.0


def setting_default(name: str) -> Any:
    """A setting's default, written once in ``app.config.Settings``; for the keyword
    defaults of classes that scripts and tests build without the settings."""
    return Settings.model_fields[name].default


def retry_policy(
    attempts: int, initial_s: float, max_s: float, upload_deadline_s: float
) -> RetryPolicy:
    # One API request never retries for longer than a whole upload may take.
    deadline_s = min(API_CALL_DEADLINE_S, upload_deadline_s)
    return RetryPolicy(attempts=attempts, deadline_s=deadline_s, initial_s=initial_s, max_s=max_s)


def default_retry_policy() -> RetryPolicy:
    """The retry policy the settings' defaults make."""
    return retry_policy(
        setting_default("mega_retry_attempts"),
        setting_default("mega_retry_initial_seconds"),
        setting_default("mega_retry_max_seconds"),
        setting_default("mega_upload_deadline_seconds"),
    )


class MegaSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    email: str
    password: SecretStr
    totp_secret: SecretStr | None
    session: SecretStr | None
    api_url: str
    folder: str
    session_file: Path
    connect_timeout_s: float
    read_timeout_s: float
    retry_attempts: int
    retry_initial_s: float
    retry_max_s: float
    upload_deadline_s: float
    upload_restarts: int
    upload_parallel: int
    upload_region_bytes: int
    upload_window_bytes: int
    login_deadline_s: float
    login_wait_s: float
    pool_size: int

    @classmethod
    def from_settings(cls, settings: Settings) -> MegaSettings:
        if settings.mega_email is None or settings.mega_password is None:
            raise ValueError("the MEGA backend needs MEGA_EMAIL and MEGA_PASSWORD")
        return cls(
            email=settings.mega_email,
            password=settings.mega_password,
            totp_secret=settings.mega_totp_secret,
            session=settings.mega_session,
            api_url=settings.mega_api_url,
            folder=settings.mega_folder,
            session_file=settings.mega_session_file,
            connect_timeout_s=settings.mega_connect_timeout,
            read_timeout_s=settings.mega_read_timeout,
            retry_attempts=settings.mega_retry_attempts,
            retry_initial_s=settings.mega_retry_initial_seconds,
            retry_max_s=settings.mega_retry_max_seconds,
            upload_deadline_s=settings.mega_upload_deadline_seconds,
            upload_restarts=settings.mega_upload_restarts,
            upload_parallel=settings.mega_upload_parallel,
            upload_region_bytes=int(settings.mega_upload_region_bytes),
            upload_window_bytes=int(settings.mega_upload_window_bytes),
            login_deadline_s=settings.mega_login_deadline_seconds,
            login_wait_s=settings.mega_login_wait_seconds,
            # Every upload's region POSTs at once, with room for the API calls.
            pool_size=max(16, settings.mega_upload_parallel * settings.max_concurrent_uploads + 4),
        )

    def retry_policy(self) -> RetryPolicy:
        return retry_policy(
            self.retry_attempts, self.retry_initial_s, self.retry_max_s, self.upload_deadline_s
        )
