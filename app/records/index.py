"""The index of records: lookups by id and digest, listing pages, what is due to expire.

It is a cache of what the storage holds (MEGA is the record): built from one listing of
the storage, kept current with this service's own writes, and rebuilt now and then to
take in what changed elsewhere. Two stores hold it with the same layout:

- ``MemoryStore``: in this process (no Redis). Each process builds its own; another
  process's uploads reach it with the next rebuild, ``INDEX_REFRESH_SECONDS`` at most.
- ``RedisStore``: in Redis (``REDIS_URL``), shared by every worker and instance, so one
  build serves all and every write is seen by all at once. Deleting its keys loses
  nothing: the next check finds the index missing and builds it again.

The layout, under a prefix per storage account and folder: ``rec`` (id -> record JSON),
``ent`` (id -> the entries below, so that a rewrite removes the old ones), ``seen`` (id
-> when this index last wrote it), ``gone`` (ids deleted, with when), sorted sets ``all``
and ``tok:<token name>`` (one member ``<id>|<reference>`` per upload, scored by its time),
``due`` (ids by when a reference of theirs next expires), sets ``sha:<sha-256>`` (ids of
the files with those bytes), and ``built`` (when the last build's listing began).

A rebuild must not undo writes made while its listing was being fetched: a record
written, or deleted, after the listing began is left as the write made it.
"""

from __future__ import annotations

import base64
import bisect
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from app.records.model import Record, Reference
from app.shared_state import KEY_PREFIX, RedisState

# Deletions are remembered this long: longer than any listing takes.
GONE_KEEP_S = 24 * 3600
BATCH = 500

Entry = tuple[str, str, str, float]  # kind ("z" sorted set, "s" set), key, member, score


@dataclass(frozen=True, slots=True)
class Row:
    """One upload in a listing page: the file and the reference of that upload (None for
    a file the service stored before it kept records)."""

    record: Record
    reference: Reference | None


class Store(Protocol):
    """Where the index lives; see the module's docstring for the layout."""

    def apply(
        self, file_id: str, record: str | None, entries: list[Entry], stamp: float, unless: float
    ) -> bool:
        """Write (``record`` JSON) or remove (None) one id with its entries, atomically;
        with ``unless`` > 0, nothing happens (False) when the id was written or removed at
        or after ``unless``."""
        ...

    def apply_many(self, items: list[tuple[str, str | None, list[Entry]]], stamp: float) -> None:
        """``apply`` for many ids, each unless written or removed since ``stamp``."""
        ...

    def records(self, ids: list[str]) -> list[dict[str, Any] | None]: ...

    def members(self, key: str) -> list[str]: ...

    def after(
        self, key: str, cursor: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float]]:
        """Up to ``count`` members of a sorted set after ``cursor``, newest (highest score,
        then highest member) first."""
        ...

    def up_to(self, key: str, score: float, count: int) -> list[str]:
        """Up to ``count`` members of a sorted set scored at most ``score``, lowest first."""
        ...

    def ids(self) -> list[str]: ...

    def built(self) -> float | None: ...

    def set_built(self, when: float) -> None: ...


class RecordIndex:
    """Lookups, pages and due expiries over a ``Store``; blocking (Redis): worker threads."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    @property
    def shared(self) -> bool:
        """Whether every process sees the same index (it lives in Redis)."""
        return isinstance(self.store, RedisStore)

    def built(self) -> float | None:
        """When the listing of the last complete build began; None: never built (or the
        shared index was deleted)."""
        return self.store.built()

    def get(self, file_id: str) -> Record | None:
        found = self.store.records([file_id])[0]
        return Record.from_json(found) if found else None

    def put(self, record: Record) -> None:
        """Record this service's own write."""
        self.store.apply(record.id, _json(record), _entries(record), self.clock(), 0)

    def remove(self, file_id: str) -> None:
        """Record this service's own deletion."""
        self.store.apply(file_id, None, [], self.clock(), 0)

    def by_digest(self, sha256: str) -> list[Record]:
        ids = sorted(self.store.members(f"sha:{sha256}"))
        return [Record.from_json(found) for found in self.store.records(ids) if found]

    def due(self, now: float, count: int) -> list[str]:
        """Ids of files a reference of which has expired by ``now``."""
        return self.store.up_to("due", now, count)

    def page(
        self, token: str | None, limit: int, cursor: str | None, now: float
    ) -> tuple[list[Row], str | None]:
        """Up to ``limit`` live uploads, newest first (all, or ``token``'s), after
        ``cursor``; and the cursor of the next page, None when there is none."""
        key = "all" if token is None else f"tok:{token}"
        position = _read_cursor(cursor)
        rows: list[Row] = []
        while len(rows) < limit:
            wanted = limit - len(rows)
            batch = self.store.after(key, position, wanted)
            found = self.store.records(sorted({member.split("|")[0] for member, _ in batch}))
            records = {data["id"]: Record.from_json(data) for data in found if data}
            for member, score in batch:
                position = (score, member)
                row = _row(records, member, now)
                if row is not None:
                    rows.append(row)
            if len(batch) < wanted:
                return rows, None
        return rows, _write_cursor(position)

    def rebuild(self, records: Iterable[Record], started: float) -> int:
        """Take in a full listing of the storage that began at ``started``: add and
        replace what it lists, drop what it does not, except ids written or deleted
        since it began. Returns how many records it lists."""
        listed: set[str] = set()
        batch: list[tuple[str, str | None, list[Entry]]] = []
        for record in records:
            listed.add(record.id)
            batch.append((record.id, _json(record), _entries(record)))
            if len(batch) >= BATCH:
                self.store.apply_many(batch, started)
                batch = []
        batch += [(i, None, []) for i in self.store.ids() if i not in listed]
        for start in range(0, len(batch), BATCH):
            self.store.apply_many(batch[start : start + BATCH], started)
        self.store.set_built(started)
        return len(listed)


def _json(record: Record) -> str:
    return json.dumps(record.to_json(), separators=(",", ":"))


def _entries(record: Record) -> list[Entry]:
    entries: list[Entry] = []
    if record.sha256:
        entries.append(("s", f"sha:{record.sha256}", record.id, 0))
    for ref in record.references:
        member = f"{record.id}|{ref.secret_hash}"
        entries.append(("z", "all", member, ref.created))
        entries.append(("z", f"tok:{ref.token}", member, ref.created))
    if not record.references:
        entries.append(("z", "all", f"{record.id}|", record.created))
    expiry = record.next_expiry()
    if expiry is not None:
        entries.append(("z", "due", record.id, expiry))
    return entries


def _row(records: dict[str, Record], member: str, now: float) -> Row | None:
    file_id, _, ref_hash = member.partition("|")
    record = records.get(file_id)
    if record is None:
        return None
    if not ref_hash:
        return Row(record, None)
    for ref in record.references:
        if ref.secret_hash == ref_hash:
            return Row(record, ref) if ref.live(now) else None
    return None


def _write_cursor(position: tuple[float, str] | None) -> str | None:
    if position is None:
        return None
    text = json.dumps([position[0], position[1]], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _read_cursor(cursor: str | None) -> tuple[float, str] | None:
    """The position a cursor stands for; a damaged one starts from the beginning."""
    if not cursor:
        return None
    try:
        score, member = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(score), str(member)
    except (ValueError, TypeError):
        return None


# -- in this process ------------------------------------------------------------------


class _SortedSet:
    """Members by score. Single writes keep the order as they go; a bulk load (a rebuild)
    only records scores and sorts once, when the order is next read."""

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}
        self._order: list[tuple[float, str]] = []
        self._stale = False

    def add(self, member: str, score: float, bulk: bool = False) -> None:
        if bulk or self._stale:
            self.scores[member] = score
            self._stale = True
            return
        self.discard(member)
        self.scores[member] = score
        bisect.insort(self._order, (score, member))

    def discard(self, member: str, bulk: bool = False) -> None:
        if bulk or self._stale:
            self._stale = self.scores.pop(member, None) is not None or self._stale
            return
        score = self.scores.pop(member, None)
        if score is not None:
            del self._order[bisect.bisect_left(self._order, (score, member))]

    @property
    def order(self) -> list[tuple[float, str]]:
        if self._stale:
            self._order = sorted((score, member) for member, score in self.scores.items())
            self._stale = False
        return self._order


class MemoryStore:
    """The index in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, str] = {}
        self._entries: dict[str, list[Entry]] = {}
        self._seen: dict[str, float] = {}
        self._gone: dict[str, float] = {}
        self._sorted: dict[str, _SortedSet] = {}
        self._sets: dict[str, set[str]] = {}
        self._built: float | None = None

    def apply(
        self, file_id: str, record: str | None, entries: list[Entry], stamp: float, unless: float
    ) -> bool:
        with self._lock:
            return self._apply(file_id, record, entries, stamp, unless, bulk=False)

    def apply_many(self, items: list[tuple[str, str | None, list[Entry]]], stamp: float) -> None:
        with self._lock:
            for file_id, record, entries in items:
                self._apply(file_id, record, entries, stamp, stamp, bulk=True)

    def _apply(
        self,
        file_id: str,
        record: str | None,
        entries: list[Entry],
        stamp: float,
        unless: float,
        bulk: bool,
    ) -> bool:
        if unless > 0 and (file_id in self._gone or self._seen.get(file_id, 0) >= unless):
            return False
        if record is None and file_id not in self._records:
            return False  # nothing to forget (an id nobody stored: no tombstone either)
        for kind, key, member, _ in self._entries.pop(file_id, []):
            if kind == "z":
                self._sorted[key].discard(member, bulk)
            else:
                self._sets[key].discard(member)
        self._seen[file_id] = stamp
        if record is None:
            self._records.pop(file_id, None)
            self._gone[file_id] = stamp
            return True
        for kind, key, member, score in entries:
            if kind == "z":
                self._sorted.setdefault(key, _SortedSet()).add(member, score, bulk)
            else:
                self._sets.setdefault(key, set()).add(member)
        self._records[file_id] = record
        self._entries[file_id] = entries
        return True

    def records(self, ids: list[str]) -> list[dict[str, Any] | None]:
        with self._lock:
            found = [self._records.get(file_id) for file_id in ids]
        return [json.loads(text) if text else None for text in found]

    def members(self, key: str) -> list[str]:
        with self._lock:
            return list(self._sets.get(key, ()))

    def after(
        self, key: str, cursor: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float]]:
        with self._lock:
            order = self._sorted[key].order if key in self._sorted else []
            end = len(order) if cursor is None else bisect.bisect_left(order, cursor)
            return [(member, score) for score, member in reversed(order[max(0, end - count) : end])]

    def up_to(self, key: str, score: float, count: int) -> list[str]:
        with self._lock:
            order = self._sorted[key].order if key in self._sorted else []
            end = bisect.bisect_right(order, (score, "\U0010ffff"))
            return [member for _, member in order[: min(end, count)]]

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._records)

    def built(self) -> float | None:
        return self._built

    def set_built(self, when: float) -> None:
        with self._lock:
            self._built = when
            self._gone = {k: v for k, v in self._gone.items() if v > when - GONE_KEEP_S}


# -- in Redis -------------------------------------------------------------------------

# One id's write or removal, atomic across every process: old entries out, new ones in,
# unless the id was written or deleted since ``unless`` (a rebuild's listing began).
_APPLY = """
local p, id = KEYS[1], ARGV[1]
local stamp, unless = tonumber(ARGV[4]), tonumber(ARGV[5])
if unless > 0 then
    if redis.call('ZSCORE', p .. 'gone', id) then return 0 end
    if tonumber(redis.call('HGET', p .. 'seen', id) or '0') >= unless then return 0 end
end
local old = redis.call('HGET', p .. 'ent', id)
if ARGV[2] == '' and not old then return 0 end
if old then
    for _, e in ipairs(cjson.decode(old)) do
        if e[1] == 'z' then redis.call('ZREM', p .. e[2], e[3])
        else redis.call('SREM', p .. e[2], e[3]) end
    end
end
redis.call('HSET', p .. 'seen', id, ARGV[4])
if ARGV[2] == '' then
    redis.call('HDEL', p .. 'rec', id)
    redis.call('HDEL', p .. 'ent', id)
    redis.call('ZADD', p .. 'gone', stamp, id)
    return 1
end
for _, e in ipairs(cjson.decode(ARGV[3])) do
    if e[1] == 'z' then redis.call('ZADD', p .. e[2], e[4], e[3])
    else redis.call('SADD', p .. e[2], e[3]) end
end
redis.call('HSET', p .. 'rec', id, ARGV[2])
redis.call('HSET', p .. 'ent', id, ARGV[3])
return 1
"""


class RedisStore:
    """The index in Redis, shared by every worker and instance.

    Every call goes through ``RedisState.run``: an unreachable Redis raises
    ``SharedStateUnavailable`` at once, and the caller decides what to do without it.
    """

    def __init__(self, state: RedisState, namespace: str) -> None:
        self._state = state
        self._client = state.client
        self._prefix = f"{KEY_PREFIX}records:{namespace}:"
        self._apply = self._client.register_script(_APPLY)

    def _run(self, operation: Callable[[], Any]) -> Any:
        return self._state.run(operation)

    def apply(
        self, file_id: str, record: str | None, entries: list[Entry], stamp: float, unless: float
    ) -> bool:
        args = [file_id, record or "", json.dumps(entries), stamp, unless]
        return bool(self._run(lambda: self._apply(keys=[self._prefix], args=args)))

    def apply_many(self, items: list[tuple[str, str | None, list[Entry]]], stamp: float) -> None:
        def operation() -> None:
            with self._client.pipeline(transaction=False) as pipe:
                for file_id, record, entries in items:
                    args = [file_id, record or "", json.dumps(entries), stamp, stamp]
                    self._apply(keys=[self._prefix], args=args, client=pipe)
                pipe.execute()

        self._run(operation)

    def records(self, ids: list[str]) -> list[dict[str, Any] | None]:
        if not ids:
            return []
        found = self._run(lambda: self._client.hmget(self._prefix + "rec", ids))
        return [json.loads(text) if text else None for text in found]

    def members(self, key: str) -> list[str]:
        found = self._run(lambda: self._client.smembers(self._prefix + key))
        return [member.decode() for member in found]

    def after(
        self, key: str, cursor: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float]]:
        name = self._prefix + key
        result: list[tuple[str, float]] = []
        top: str | float = "+inf"
        if cursor is not None:
            score, member = cursor
            # Members with the cursor's own score come after it when they sort lower.
            same = self._run(lambda: self._client.zrevrangebyscore(name, score, score))
            result = [(m.decode(), score) for m in same if m.decode() < member][:count]
            top = f"({score}"
        if len(result) < count:
            rest = self._run(
                lambda: self._client.zrevrangebyscore(
                    name, top, "-inf", start=0, num=count - len(result), withscores=True
                )
            )
            result += [(member.decode(), float(score)) for member, score in rest]
        return result

    def up_to(self, key: str, score: float, count: int) -> list[str]:
        found = self._run(
            lambda: self._client.zrangebyscore(
                self._prefix + key, "-inf", score, start=0, num=count
            )
        )
        return [member.decode() for member in found]

    def ids(self) -> list[str]:
        return [key.decode() for key in self._run(lambda: self._client.hkeys(self._prefix + "rec"))]

    def built(self) -> float | None:
        value = self._run(lambda: self._client.get(self._prefix + "built"))
        return float(value) if value else None

    def set_built(self, when: float) -> None:
        def operation() -> None:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._prefix + "built", when)
                pipe.zremrangebyscore(self._prefix + "gone", "-inf", when - GONE_KEEP_S)
                pipe.execute()

        self._run(operation)
