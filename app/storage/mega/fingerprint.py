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

The size is known before the first byte and the bytes arrive in order, so the windows are
copied out as they pass: no second read of the data, at most 8 KiB kept.
"""

from __future__ import annotations

import base64
import zlib

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
    in pieces of any size (``add``), read once all of them came (``crc``)."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("a file size is not negative")
        self.size = size
        self._seen = 0
        self._whole = bytearray() if size <= MAXFULL else None
        self._offsets = window_offsets(size) if size > MAXFULL else []
        self._samples = bytearray(len(self._offsets) * WINDOW)
        self._next = 0  # the first window not complete yet

    def add(self, piece: bytes | bytearray | memoryview) -> None:
        """The next ``len(piece)`` bytes of the file."""
        start, end = self._seen, self._seen + len(piece)
        if end > self.size:
            raise ValueError("more bytes than the file's size")
        self._seen = end
        if self._whole is not None:
            self._whole += piece
            return
        index = self._next
        while index < len(self._offsets) and self._offsets[index] < end:
            offset = self._offsets[index]
            lo, hi = max(offset, start), min(offset + WINDOW, end)
            if lo < hi:
                at = index * WINDOW + (lo - offset)
                self._samples[at : at + hi - lo] = piece[lo - start : hi - start]
            if offset + WINDOW <= end:
                self._next = index + 1
            index += 1

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
        lane_bytes = BLOCKS * WINDOW
        return b"".join(
            _lane(self._samples[i * lane_bytes : (i + 1) * lane_bytes]) for i in range(LANES)
        )


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
