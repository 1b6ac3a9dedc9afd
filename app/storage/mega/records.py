"""Records on MEGA nodes: the service's fields as custom node attributes, the listing of
the upload folder with one ``f``, public links, and the account's storage figures.

MEGA itself is the record: a fresh instance with an empty disk learns everything about
earlier uploads from the nodes. The fields follow the SDK's convention for custom
attributes (``MegaApi::setCustomNodeAttribute`` in ``src/megaapi_impl.cpp``): names of
``_`` plus at most 7 bytes, string values, so MEGA's own apps keep them when they edit a
node and keep showing its name. A longer name would lose its first bytes in the SDK's
parser (names are packed into 8 bytes, ``JSON::getnameid`` in ``src/json.cpp``), and a
value that is not a string, number, object or array ends its reading of the block, taking
the name with it (``AttrMap::fromjson`` in ``src/attrmap.cpp``).

The block is rewritten whole, from the node's current attributes, with ``a`` carrying
``at``, as both official clients do (``CommandSetAttr::getJSON`` in ``src/commands.cpp``;
``api_setattr`` in the web client's ``js/crypto.js``, which also starts from the node's
attributes it does not know, so custom ones survive its edits). A node's current
attributes are read with ``g`` on its handle, the SDK's node query
(``CommandGetFile::procresult``: the answer carries ``at``).
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from mega.crypto import a32_to_base64, base64_to_a32

from app.storage.base import RECORD_PREFIX, FileRecord, Space, StorageError

from .client import MegaClient
from .crypto import a32_bytes, attribute_block, bytes_a32, read_attribute_block, split_node_key
from .errors import ENOENT, MegaApiError, MegaBadAnswer, to_storage_error
from .upload import export_link

logger = logging.getLogger(__name__)

FILE_TYPE = 0
# A node handle is 6 bytes, a file's node key 32, both base64url (src/megaclient.cpp,
# NODEHANDLE; FILENODEKEYLENGTH): anything else names no file of ours.
_HANDLE = re.compile(r"[A-Za-z0-9_-]{8}")
_KEY = re.compile(r"[A-Za-z0-9_-]{43}")


class MegaRecords:
    """Records, links and storage figures of the files in the upload folder."""

    def __init__(
        self, client: Callable[[], MegaClient], folder: Callable[[], str], lock_dir: Path
    ) -> None:
        """``client`` and ``folder`` give the logged-in client and the folder's node id."""
        self._client = client
        self._folder = folder
        self._lock_dir = lock_dir

    @property
    def lock_dir(self) -> Path:
        return self._lock_dir

    # -- RecordKeeping -----------------------------------------------------------------

    def list_records(self) -> list[FileRecord]:
        """The files of the folder, from one ``f`` (the SDK's ``CommandFetchNodes`` sends
        ``{"a":"f","c":1,"r":1}``), with their public links from its ``ph`` list."""
        answer = _mapped(lambda: self._client().api({"a": "f", "c": 1, "r": 1}))
        nodes = answer.get("f") if isinstance(answer, dict) else None
        if not isinstance(nodes, list):
            raise to_storage_error(MegaBadAnswer())
        folder = self._folder()
        # Public handles by node (MegaClient::procphelement: h, ph, ts, [ets], [down]).
        public = {
            entry["h"]: entry["ph"]
            for entry in answer.get("ph") or []
            if isinstance(entry, dict)
            and isinstance(entry.get("h"), str)
            and isinstance(entry.get("ph"), str)
            and not entry.get("down")
        }
        files = [
            node
            for node in nodes
            if isinstance(node, dict) and node.get("t") == FILE_TYPE and node.get("p") == folder
        ]
        keys = _node_keys(files, self._client().master_key)
        link_base = self._client().link_base
        records = []
        for node, key in zip(files, keys, strict=True):
            record = _file_record(node, key, public.get(node["h"]), link_base)
            if record is not None:
                records.append(record)
        return records

    def read_record(self, file: FileRecord) -> FileRecord | None:
        attributes = self._attributes(file)
        if attributes is None:
            return None
        current, size = attributes
        name = current.get("n")
        return FileRecord(
            id=file.id,
            name=name if isinstance(name, str) else file.name,
            size=size,
            created=file.created,
            link=file.link,
            key=file.key,
            fields=_fields(current),
        )

    def write_record(self, file: FileRecord, fields: Mapping[str, str]) -> bool:
        attributes = self._attributes(file)
        if attributes is None:
            return False
        current, _ = attributes
        kept = {name: value for name, value in current.items() if not _is_field(name)}
        block = attribute_block({**kept, **fields}, _attribute_key(_key_words(file.key)))
        try:
            _mapped(lambda: self._client().api({"a": "a", "n": file.id, "at": block}))
        except _Gone:
            return False
        return True

    def _attributes(self, file: FileRecord) -> tuple[dict[str, Any], int] | None:
        """The node's decrypted attributes and size, fresh from MEGA; None when it is gone
        (or the id and key given cannot be a file's)."""
        if not (_HANDLE.fullmatch(file.id) and _KEY.fullmatch(file.key)):
            return None
        try:
            answer = _mapped(lambda: self._client().api({"a": "g", "n": file.id}))
        except _Gone:
            return None
        block = answer.get("at") if isinstance(answer, dict) else None
        size = answer.get("s") if isinstance(answer, dict) else None
        if not isinstance(block, str) or not isinstance(size, int):
            raise to_storage_error(MegaBadAnswer())
        attributes = read_attribute_block(block, _attribute_key(_key_words(file.key)))
        if attributes is None:
            return None  # not this key's node: as good as no node
        return attributes, size

    # -- LinkControl -------------------------------------------------------------------

    def revoke_link(self, file: FileRecord) -> None:
        """``{"a":"l","n":h,"d":1}`` (``CommandSetPH``, src/commands.cpp)."""
        try:
            _mapped(lambda: self._client().api({"a": "l", "n": file.id, "d": 1}))
        except _Gone:
            return

    def make_link(self, file: FileRecord) -> str:
        return _mapped(lambda: export_link(self._client(), file.id, _key_words(file.key)))

    # -- SpaceReport -------------------------------------------------------------------

    def space(self) -> Space:
        """The account's storage used and allowed (``CommandGetUserQuota``: ``cstrg`` and
        ``mstrg`` in the answer to ``{"a":"uq","strg":1,...}``)."""
        answer = _mapped(lambda: self._client().api({"a": "uq", "strg": 1, "v": 2}))
        used = answer.get("cstrg") if isinstance(answer, dict) else None
        total = answer.get("mstrg") if isinstance(answer, dict) else None
        if not isinstance(used, int) or not isinstance(total, int):
            raise to_storage_error(MegaBadAnswer())
        return Space(used=used, total=total)


class _Gone(Exception):
    """MEGA answered ENOENT: the node is no longer there."""


def _mapped(call: Callable[[], Any]) -> Any:
    """``call``'s answer; ENOENT as ``_Gone``, every other failure as a ``StorageError``."""
    try:
        return call()
    except StorageError:
        raise
    except MegaApiError as exc:
        if exc.code == ENOENT:
            raise _Gone() from None
        raise to_storage_error(exc) from None
    except Exception as exc:
        raise to_storage_error(exc) from None


def _is_field(name: str) -> bool:
    return name.startswith(RECORD_PREFIX)


def _fields(attributes: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in attributes.items() if _is_field(k) and isinstance(v, str)}


def _key_words(key: str) -> tuple[int, ...]:
    return tuple(base64_to_a32(key))


def _attribute_key(words: tuple[int, ...]) -> tuple[int, ...]:
    """A file's attribute key: its AES key, the node key's two halves folded together."""
    return split_node_key(words)[0].key


def _node_keys(nodes: list[dict[str, Any]], master_key: list[int]) -> list[tuple[int, ...] | None]:
    """The 8-word keys of file nodes, decrypted with the master key in one ECB pass.

    ``k`` is ``<owner>:<key>[/<owner>:<key> ...]``; the entry of the node's owner is the
    account's own.
    """
    encrypted: list[bytes | None] = []
    for node in nodes:
        entry = _own_key_entry(node)
        try:
            raw = base64.urlsafe_b64decode(entry + "=" * (-len(entry) % 4)) if entry else b""
        except ValueError:
            raw = b""
        encrypted.append(raw if len(raw) == 32 else None)
    decryptor = Cipher(algorithms.AES(a32_bytes(master_key)), modes.ECB()).decryptor()
    plain = decryptor.update(b"".join(e for e in encrypted if e is not None))
    keys: list[tuple[int, ...] | None] = []
    offset = 0
    for item in encrypted:
        if item is None:
            keys.append(None)
            continue
        keys.append(bytes_a32(plain[offset : offset + 32]))
        offset += 32
    return keys


def _own_key_entry(node: dict[str, Any]) -> str:
    keys = node.get("k")
    if not isinstance(keys, str):
        return ""
    entries = [entry.partition(":") for entry in keys.split("/")]
    owner = node.get("u")
    for who, _, key in entries:
        if who == owner:
            return key
    return entries[0][2] if entries else ""


def _file_record(
    node: dict[str, Any], key: tuple[int, ...] | None, public: str | None, link_base: str
) -> FileRecord | None:
    handle, block = node.get("h"), node.get("a")
    if key is None or not isinstance(handle, str) or not isinstance(block, str):
        return None
    attributes = read_attribute_block(block, _attribute_key(key))
    if attributes is None or not isinstance(attributes.get("n"), str):
        logger.warning("MEGA node %s: its attributes do not decrypt; not listed", handle)
        return None
    encoded_key = a32_to_base64(key)
    size, created = node.get("s"), node.get("ts")
    return FileRecord(
        id=handle,
        name=str(attributes["n"]),
        size=size if isinstance(size, int) else 0,
        created=created if isinstance(created, int) else 0,
        link=f"{link_base}{public}#{encoded_key}" if public else None,
        key=encoded_key,
        fields=_fields(attributes),
    )
