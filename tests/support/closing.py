"""A test helper that closes itself at the end of a ``with`` block."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ClosedOnExit:
    """``with Thing(...) as thing:`` calls ``thing.close()`` at the end, whatever happens."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
