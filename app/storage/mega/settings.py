"""What the MEGA client derives from its settings.

``app.config.MegaSettings`` is the one place where every MEGA value and default is
written (and documented); this module only derives the retry policy from them, so
nothing further down restates a number. ``MEGA_DEFAULTS`` (the defaults, read from that
model) serves the keyword defaults of classes that scripts and tests build without the
service's settings.
"""

from __future__ import annotations

from app.config import MEGA_DEFAULTS, MegaSettings

from .retry import RetryPolicy

# One API call never retries for longer than this, unless its caller's deadline is nearer.
API_CALL_DEADLINE_S = 120.0


def retry_policy(mega: MegaSettings = MEGA_DEFAULTS) -> RetryPolicy:
    """The retry policy of ``mega``'s settings (by default, of the defaults)."""
    # One API request never retries for longer than a whole upload may take.
    deadline_s = min(API_CALL_DEADLINE_S, mega.upload_deadline_seconds)
    return RetryPolicy(
        attempts=mega.retry_attempts,
        deadline_s=deadline_s,
        initial_s=mega.retry_initial_seconds,
        max_s=mega.retry_max_seconds,
    )


def pool_size(mega: MegaSettings, concurrent_uploads: int) -> int:
    """HTTP connections to keep: every upload's region POSTs at once, with room for the
    API calls."""
    return max(16, mega.upload_parallel * concurrent_uploads + 4)
