"""The destination folder: find ``Paimon/uploads`` under the account's root, or create it.

Folder names are encrypted attributes, so finding one means fetching the node list
('f') and decrypting each folder's name with its key (itself encrypted with the
master key). Creating one is a 'p' with ``t: 1``. The session store's folder lock
serialises creation across worker processes (a lock file) or instances (Redis), so two
starting together do not make twin folders.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from typing import Any

from mega.crypto import a32_to_base64, base64_to_a32, decrypt_key, encrypt_key

from .crypto import attribute_block, bytes_a32, read_attribute_block
from .errors import MegaBadAnswer
from .retry import Deadline
from .upload import ApiClient

ROOT_TYPE = 2
FOLDER_TYPE = 1


def find_folder(client: ApiClient, path: str, deadline: Deadline | None = None) -> str | None:
    """The node id of folder ``path`` (``a/b``) under the root, or None if missing."""
    nodes = _fetch_nodes(client, deadline)
    parent = _root_id(nodes)
    names = _folder_names(nodes, client.master_key)
    for part in path.split("/"):
        found = names.get((parent, part))
        if found is None:
            return None
        parent = found
    return parent


def ensure_folder(
    client: ApiClient,
    path: str,
    locked: Callable[[float], contextlib.AbstractContextManager[None]],
    lock_timeout_s: float,
    deadline: Deadline | None = None,
) -> str:
    """The node id of folder ``path``, creating the missing parts under ``locked``."""
    found = find_folder(client, path, deadline)
    if found is not None:
        return found
    with locked(lock_timeout_s):
        # Another process may have created it while this one waited.
        nodes = _fetch_nodes(client, deadline)
        parent = _root_id(nodes)
        names = _folder_names(nodes, client.master_key)
        for part in path.split("/"):
            found = names.get((parent, part))
            parent = found if found is not None else _make_folder(client, part, parent, deadline)
        return parent


def _fetch_nodes(client: ApiClient, deadline: Deadline | None) -> list[dict[str, Any]]:
    answer = client.api({"a": "f", "c": 1}, deadline)
    nodes = answer.get("f") if isinstance(answer, dict) else None
    if not isinstance(nodes, list):
        raise MegaBadAnswer()
    return [n for n in nodes if isinstance(n, dict)]


def _root_id(nodes: list[dict[str, Any]]) -> str:
    for node in nodes:
        if node.get("t") == ROOT_TYPE and isinstance(node.get("h"), str):
            return node["h"]
    raise MegaBadAnswer()


def _folder_names(nodes: list[dict[str, Any]], master_key: Any) -> dict[tuple[str, str], str]:
    """(parent id, name) -> node id for every folder whose name decrypts.

    When two folders share a name, the first one listed wins, every time.
    """
    result: dict[tuple[str, str], str] = {}
    for node in nodes:
        if node.get("t") != FOLDER_TYPE:
            continue
        name = _folder_name(node, master_key)
        if name is not None:
            result.setdefault((node.get("p", ""), name), node["h"])
    return result


def _folder_name(node: dict[str, Any], master_key: Any) -> str | None:
    keys, attributes = node.get("k"), node.get("a")
    if not isinstance(keys, str) or not isinstance(attributes, str):
        return None
    # 'k' is "<owner>:<key>[/<owner>:<key> ...]"; the account's own entry decrypts.
    for entry in keys.split("/"):
        _, _, encrypted = entry.partition(":")
        try:
            key = decrypt_key(base64_to_a32(encrypted), master_key)
        except (ValueError, TypeError):
            continue
        if len(key) != 4:
            continue
        attr = read_attribute_block(attributes, key)
        if isinstance(attr, dict) and isinstance(attr.get("n"), str):
            return attr["n"]
    return None


def _make_folder(client: ApiClient, name: str, parent: str, deadline: Deadline | None) -> str:
    key = bytes_a32(secrets.token_bytes(16))
    answer = client.api(
        {
            "a": "p",
            "t": parent,
            "i": client.session_tag,
            "n": [
                {
                    "h": "xxxxxxxx",
                    "t": FOLDER_TYPE,
                    "a": attribute_block({"n": name}, key),
                    "k": a32_to_base64(encrypt_key(key, client.master_key)),
                }
            ],
        },
        deadline,
    )
    try:
        return answer["f"][0]["h"]
    except (TypeError, KeyError, IndexError):
        raise MegaBadAnswer() from None
