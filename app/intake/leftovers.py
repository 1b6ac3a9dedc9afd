"""Files a crashed upload left behind, told apart from files a live upload still writes.

Every in-flight file (a spooled upload, a ``.partial`` file on local storage) is held
under an exclusive ``flock`` by the process writing it. A file that can be locked belongs
to no live upload: its writer was killed (``kill -9``, out of memory, power loss).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def remove_if_abandoned(path: Path) -> bool:
    """Delete ``path`` unless a live upload holds its lock; never follows a symlink.

    True when it was removed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False  # gone already, a symlink, or not ours to open
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a running upload owns it
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
