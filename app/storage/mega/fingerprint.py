"""MEGA's file fingerprint, the node attribute ``c``, computed while a file streams past.

MEGA's apps write ``c`` on every upload and read it to show a file's date, to find
copies of one file and to sync (the SDK's ``File::sendPutnodesOfUpload`` in
``src/file.cpp``).
It is four CRC32 "lanes" of the content plus the modification time, as the SDK's
``FileFingerprint::genfingerprint`` (``src/filefingerprint.cpp``) computes them:

* up to 16 bytes: the bytes themselves, zero-padded to 16;
* up to 8192 bytes (``MAXFULL``): lane ``i`` is the CRC32 of the ``i``-th quarter,
  ``data[i * size / 4 : (i + 1) * size / 4]``;
* larger: lane ``i`` is the CRC32 of 32 windows of 64 bytes, window ``(i, j)`` at
  ``(size - 64) * (i * 32 + j) / 127`` (64-bit arithmetic, ``computeSparseOffset64``).

Each lane is stored big-endian (``htonl``). ``c`` is base64url of the 16 CRC bytes
followed by the mtime in ``Serialize64`` form (one byte counting the value's bytes,
then those bytes, least significant first; ``src/serialize64.cpp``).

The size is known before the first byte and the bytes arrive in order, so each window is
taken into its lane's CRC as it passes: no second read of the data, and little kept.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

TINY = 16  # sizeof crc: four 32-bit lanes
MAXFULL = 8192
LANES = 4
BLOCKS = 32  # windows per lane: MAXFULL / (64 * 4)
WINDOW = 64  # bytes per window: 4 * sizeof crc
_DENOMINATOR = LANES * BLOCKS - 1  # 127


def window_offsets(size: int) -> list[int]:
    """Where the 128 sampled windows of a large file begin, lane by lane (ascending)."""
    last = size - WINDOW
    return [min(last, last * index // _DENOMINATOR) for index in range(LANES * BLOCKS)]


class Fingerprint:
    """The CRC part of MEGA's fingerprint of a ``size``-byte file, fed its bytes in order,
    in pieces of any size (``add``), read once all of them came (``crc``).

    A lane's CRC runs over its windows as they complete, so what is kept between pieces
    is small: four running CRCs and the part of one window seen so far (the whole file
    up to ``MAXFULL`` bytes). ``state`` and ``resume`` carry it from one process to
    another (a resumable upload's pieces may arrive anywhere).
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("a file size is not negative")
        self.size = size
        self._seen = 0
        self._whole = bytearray() if size <= MAXFULL else None
        self._offsets = window_offsets(size) if size > MAXFULL else []
        self._lanes = [0] * LANES
        self._window = bytearray()  # the part seen of the first window not complete yet
        self._next = 0  # that window's index

    @classmethod
    def resume(cls, size: int, state: dict[str, Any] | None) -> Fingerprint:
        """The fingerprint as ``state`` (from ``state()``) left it; a fresh one for None."""
        fingerprint = cls(size)
        if state:
            fingerprint._seen = int(state["seen"])
            fingerprint._next = int(state["next"])
            fingerprint._lanes = [int(lane) for lane in state["lanes"]]
            kept = base64.b64decode(state["kept"])
            if fingerprint._whole is not None:
                fingerprint._whole = bytearray(kept)
            else:
                fingerprint._window = bytearray(kept)
        return fingerprint

    def state(self) -> dict[str, Any]:
        """What ``resume`` needs: at most ``MAXFULL`` bytes, usually under 100."""
        kept = self._whole if self._whole is not None else self._window
        return {
            "seen": self._seen,
            "next": self._next,
            "lanes": list(self._lanes),
            "kept": base64.b64encode(bytes(kept)).decode("ascii"),
        }

    def add(self, piece: bytes | bytearray | memoryview) -> None:
        """The next ``len(piece)`` bytes of the file."""
        start, end = self._seen, self._seen + len(piece)
        if end > self.size:
            raise ValueError("more bytes than the file's size")
        self._seen = end
        if self._whole is not None:
            self._whole += piece
            return
        while self._next < len(self._offsets) and self._offsets[self._next] < end:
            offset = self._offsets[self._next]
            lo = max(offset + len(self._window), start)
            hi = min(offset + WINDOW, end)
            if lo < hi:
                self._window += piece[lo - start : hi - start]
            if len(self._window) < WINDOW:
                return  # the window goes on in the next piece
            lane = self._next // BLOCKS
            self._lanes[lane] = zlib.crc32(self._window, self._lanes[lane])
            self._window.clear()
            self._next += 1

    def crc(self) -> bytes:
        """The 16 CRC bytes; every byte of the file must have been added."""
        if self._seen != self.size:
            raise ValueError("the fingerprint has not seen the whole file")
        if self._whole is not None:
            if self.size <= TINY:
                return bytes(self._whole) + bytes(TINY - self.size)
            return b"".join(
                _lane(self._whole[i * self.size // LANES : (i + 1) * self.size // LANES])
                for i in range(LANES)
            )
        return b"".join(lane.to_bytes(4, "big") for lane in self._lanes)


def _lane(data: bytes | bytearray) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def serialize64(value: int) -> bytes:
    """``Serialize64::serialize``: a count byte, then the value's bytes, low first."""
    value &= (1 << 64) - 1  # the SDK casts the mtime to uint64_t
    data = value.to_bytes(8, "little").rstrip(b"\0")
    return bytes([len(data)]) + data


def fingerprint_attribute(crc: bytes, mtime: int) -> str:
    """The value of ``c`` for CRC bytes ``crc`` (``Fingerprint.crc``) and a modification
    time in Unix seconds (the upload time, or the one the client gave)."""
    if len(crc) != TINY:
        raise ValueError("a fingerprint's CRC has 16 bytes")
    raw = crc + serialize64(mtime)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
