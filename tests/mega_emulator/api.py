"""The /cs command processor: one handler per MEGA API command.

A request is a JSON array of commands; the answer is an array with one result
per command, where a failed command is its negative error code, or ``{"err": N}``
when the ``error_objects`` fault is on (both forms are errors to the SDK:
``Command::checkError`` in ``src/command.cpp``). Errors about the request as a
whole (EAGAIN, ESID, ...) are answered by the server module as a bare integer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

from . import errors
from .accounts import Account
from .codec import b64url_decode, b64url_encode
from .errors import ApiError
from .faults import Faults
from .stats import Stats
from .store import NODE_FILE, NODE_FOLDER, CloudStore, Node

Handler = Callable[["ApiContext", dict[str, Any]], Any]

# Commands that work without a session.
PUBLIC_COMMANDS = {"us0", "us", "g"}


class ApiContext:
    """Everything a command handler may need for one request."""

    def __init__(
        self,
        store: CloudStore,
        faults: Faults,
        stats: Stats,
        account: Account | None,
        base_url: str,
        plain_url: str | None = None,
    ) -> None:
        self.store = store
        self.faults = faults
        self.stats = stats
        self.account = account
        self.base_url = base_url
        # Over TLS, the http:// address MEGA hands out to clients that do not ask for ssl.
        self.plain_url = plain_url or base_url

    def require_account(self) -> Account:
        if self.account is None:
            raise ApiError(errors.EACCESS)
        return self.account

    def own_node(self, handle: Any) -> Node:
        account = self.require_account()
        node = self.store.nodes.get(handle) if isinstance(handle, str) else None
        if node is None or node.owner != account.user_handle:
            raise ApiError(errors.ENOENT)
        return node


def _str_arg(cmd: dict[str, Any], name: str) -> str:
    value = cmd.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(errors.EARGS)
    return value


def cmd_prelogin(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    email = _str_arg(cmd, "user").lower()
    account = ctx.store.accounts.get(email)
    # Unknown addresses look like v1 accounts, so the answer does not reveal
    # which addresses are registered.
    if account is None or account.version == 1:
        return {"v": 1}
    assert account.salt is not None
    if ctx.faults.prelogin_without_salt:
        ctx.stats.fault("prelogin_without_salt")
        return {"v": 2}
    return {"s": b64url_encode(account.salt), "v": 2}


def cmd_login(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    email = _str_arg(cmd, "user").lower()
    user_hash = cmd.get("uh")
    account = ctx.store.accounts.get(email)
    if account is None or user_hash != account.user_hash:
        ctx.stats.add("logins_failed")
        raise ApiError(errors.ENOENT)
    if account.totp_secret is not None and not _mfa_ok(account.totp_secret, cmd.get("mfa")):
        # src/commands.cpp (CommandLogin): a 2FA account answers -26 until 'us' carries
        # the current code as 'mfa'.
        ctx.stats.add("logins_mfa_required")
        raise ApiError(errors.EMFAREQUIRED)
    if email in ctx.faults.blocked_emails:
        ctx.stats.add("logins_failed")
        ctx.stats.fault("blocked")
        raise ApiError(errors.EBLOCKED)
    leading_zero = ctx.faults.take("session_id_leading_zero_next")
    if leading_zero:
        ctx.stats.fault("session_id_leading_zero")
    _sid, csid = ctx.store.open_session(account, leading_zero)
    ctx.stats.add("logins_ok")
    return {
        "k": account.encrypted_master_key,
        "privk": account.encrypted_privk,
        "csid": csid,
        "u": account.user_handle,
        "ach": 1,
    }


def _totp(secret: str, step: int) -> str:
    """RFC 6238 (HMAC-SHA1, 30 s, 6 digits), written here apart from the service's own."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    mac = hmac.new(key, step.to_bytes(8, "big"), hashlib.sha1).digest()
    start = mac[19] & 15
    return str((int.from_bytes(mac[start : start + 4], "big") & 0x7FFFFFFF) % 1000000).zfill(6)


def _mfa_ok(secret: str, code: Any) -> bool:
    step = int(time.time() // 30)
    # One step either side, for clocks a little apart, as authenticator servers allow.
    return isinstance(code, str) and any(code == _totp(secret, step + d) for d in (-1, 0, 1))


def _sdk_decrypt_attributes(attributes: str, encrypted_key: str, master_key: bytes) -> bytes | None:
    """The plaintext of an attribute block, as ``Node::decryptattr`` (``src/node.cpp``)
    produces it: AES-CBC with a zero IV under the node's AES key, ``MEGA{"`` first."""
    from Crypto.Cipher import AES

    try:
        key_bytes = AES.new(master_key, AES.MODE_ECB).decrypt(b64url_decode(encrypted_key))
        if len(key_bytes) == 32:  # a file key: the AES key is the two halves XORed
            key_bytes = bytes(a ^ b for a, b in zip(key_bytes[:16], key_bytes[16:], strict=True))
        block = b64url_decode(attributes)
        plain = AES.new(key_bytes, AES.MODE_CBC, bytes(16)).decrypt(block)
    except ValueError:
        return None
    return plain if plain.startswith(b'MEGA{"') else None


_NAMEID_MASK = (1 << 64) - 1


def _sdk_nameid(text: bytes, pos: int) -> tuple[int, int]:
    """``JSON::getNameidSkipNull`` (``src/json.cpp``): a member name packed into a 64-bit
    ``nameid`` one byte at a time (``id = (id << 8) + c``, so a name longer than 8 bytes
    keeps only its last 8), and the position after its ``:``; 0 when no name starts here.
    A member whose value is ``null`` is skipped (``JSON::skipnullvalue``)."""
    while True:
        if pos < len(text) and text[pos] in b",:":
            pos += 1
        if pos >= len(text) or text[pos] != ord('"'):
            return 0, pos
        pos += 1
        nameid = 0
        while pos < len(text) and text[pos] != ord('"'):
            byte = text[pos] if text[pos] < 0x80 else text[pos] - 0x100  # a signed char
            nameid = ((nameid << 8) + byte) & _NAMEID_MASK
            pos += 1
        pos += 1
        if pos < len(text) and text[pos] in b":,":
            pos += 1
        if nameid and text[pos : pos + 1] in (b",", b"]", b"}"):
            pos += text[pos : pos + 1] == b","
            continue
        if nameid and text.startswith(b"null", pos) and text[pos + 4 : pos + 5] in b",]}":
            pos += 4 + (text[pos + 4 : pos + 5] == b",")
            continue
        return nameid, pos


def _sdk_nameid_text(nameid: int) -> bytes:
    """``AttrMap::nameid2string`` (``src/attrmap.cpp``): the non-zero bytes of the id."""
    return bytes(b for b in nameid.to_bytes(8, "big") if b)


def _sdk_value(text: bytes, pos: int) -> tuple[bytes | None, int]:
    """``JSON::storeobject`` (``src/json.cpp``): a string without its quotes, a number or a
    nested object/array as its raw text; None (a parse error) for anything else, such as
    ``true`` or ``false``."""
    while pos < len(text) and 0 < text[pos] <= 0x20:
        pos += 1
    if pos >= len(text) or text[pos] in b"]}":
        return None, pos
    if text[pos] == ord(","):
        pos += 1
    start, ptr, depth = pos, pos, [0, 0]
    while True:
        char = text[ptr : ptr + 1]
        if char in (b"[", b"{"):
            depth[char == b"["] += 1
        elif char in (b"]", b"}"):
            depth[char == b"]"] -= 1
        elif char == b'"':
            ptr += 1
            escaped = False
            while ptr < len(text) and (escaped or text[ptr] != ord('"')):
                escaped = text[ptr] == ord("\\") and not escaped
                ptr += 1
            if ptr >= len(text):
                return None, pos
        elif char and (char.isdigit() or char in b"-."):
            ptr += 1
            while text[ptr : ptr + 1] and (text[ptr : ptr + 1].isdigit() or text[ptr] in b".eE"):
                ptr += 1
            ptr -= 1
        elif char not in (b":", b","):
            return None, pos  # "Parse error (unexpected ...)"
        ptr += 1
        if not depth[0] and not depth[1]:
            value = text[start + 1 : ptr - 1] if text[start] == ord('"') else text[start:ptr]
            return value, ptr


def _sdk_unescape(value: bytes) -> bytes:
    """``JSON::unescape`` (``src/json.cpp``): ``\\uXXXX`` keeps only its low byte."""
    out, i = bytearray(), 0
    simple = {ord("n"): 10, ord("r"): 13, ord("b"): 8, ord("f"): 12, ord("t"): 9}
    while i < len(value):
        if value[i] == 0x5C and i + 1 < len(value):  # backslash
            if value[i + 1] == ord("u"):
                out.append(int(value[i + 4 : i + 6], 16))
                i += 6
                continue
            out.append(simple.get(value[i + 1], value[i + 1]))
            i += 2
            continue
        out.append(value[i])
        i += 1
    return bytes(out)


def sdk_parse_attributes(members: bytes) -> dict[str, bytes]:
    """A decrypted attribute block (after ``MEGA{``) read the way ``AttrMap::fromjson``
    (``src/attrmap.cpp``) reads it: member by member until the first value it cannot
    store, which is kept as empty and ends the reading, so every later member is lost."""
    result: dict[str, bytes] = {}
    pos = 0
    while True:
        nameid, pos = _sdk_nameid(members, pos)
        if not nameid:
            return result
        name = _sdk_nameid_text(nameid).decode("latin-1")
        value, pos = _sdk_value(members, pos)
        result[name] = b"" if value is None else _sdk_unescape(value)
        if value is None:
            return result


def sdk_read_attributes(
    attributes: str, encrypted_key: str, master_key: bytes
) -> dict[str, bytes] | None:
    """A node's attributes as MEGA's C++ SDK holds them (names as the SDK keeps them,
    values as bytes); None when the block does not decrypt."""
    plain = _sdk_decrypt_attributes(attributes, encrypted_key, master_key)
    if plain is None:
        return None
    return sdk_parse_attributes(plain[5:].rstrip(b"\0"))


def sdk_custom_attributes(attributes: dict[str, bytes]) -> dict[str, str]:
    """The custom attributes SDK apps read through ``MegaNode::getCustomAttr``: names that
    start with ``_``, without it (the ``MegaNodePrivate`` constructor in
    ``src/megaapi_impl.cpp``)."""
    return {
        name[1:]: value.decode("utf-8", errors="replace")
        for name, value in attributes.items()
        if name.startswith("_")
    }


def sdk_read_fingerprint(attributes: str, encrypted_key: str, master_key: bytes) -> Any:
    """(CRC bytes, mtime) of a node's ``c`` attribute as the SDK reads it
    (``FileFingerprint::unserializefingerprint`` in ``src/filefingerprint.cpp``: base64
    of 16 CRC bytes, then ``Serialize64``: a count byte and that many bytes, low first),
    or None when there is none or it does not read."""
    read = sdk_read_attributes(attributes, encrypted_key, master_key)
    try:
        raw = b64url_decode(read["c"].decode("ascii")) if read and "c" in read else b""
    except ValueError:
        return None
    if len(raw) < 17 or raw[16] > 8 or raw[16] >= len(raw) - 16:
        return None
    count = raw[16]
    return raw[:16], int.from_bytes(raw[17 : 17 + count], "little")


def sdk_read_name(attributes: str, encrypted_key: str, master_key: bytes) -> str | None:
    """A node's name as MEGA's C++ SDK reads it from the attribute block: the bytes as
    they are, with each ``\\uXXXX`` escape cut to its low byte (``JSON::unescape`` in
    ``src/json.cpp``); bytes are then shown as UTF-8. None when it does not decrypt or
    the SDK would find no name (``Node::setattr`` leaves such a node without one)."""
    read = sdk_read_attributes(attributes, encrypted_key, master_key)
    if read is None or "n" not in read:
        return None
    return read["n"].decode("utf-8", errors="replace")


def cmd_user(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    account = ctx.require_account()
    result: dict[str, Any] = {
        "u": account.user_handle,
        "email": account.email,
        "name": account.email.split("@")[0],
        "k": account.encrypted_master_key,
        "privk": account.encrypted_privk,
        "pubk": account.pubk,
        "c": 1,
        "s": 0,
        "since": account.since,
        "aav": account.version,
    }
    if ctx.faults.site_flag is not None:
        # Feature flags ("ff_<name>"); the SDK links to mega.app when "site" is 1
        # (MegaClient::readmiscflags in src/megaclient.cpp, flags in CommandGetUserData).
        result["flags"] = {"ff_site": ctx.faults.site_flag}
    return result


def cmd_fetch_nodes(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    public = cmd.get("p")
    with ctx.store.lock:
        if isinstance(public, str):
            handle = ctx.store.public.get(public)
            if handle is None:
                raise ApiError(errors.ENOENT)
            return {"f": [ctx.store.nodes[handle].wire()], "ok": [], "s": []}
        account = ctx.require_account()
        owned = ctx.store.owned_nodes(account)
        nodes = [n.wire() for n in owned]
        # The public links: {h, ph, ts} per exported node (src/megaclient.cpp,
        # MegaClient::procphelement; "ts" is required there).
        exported, times = ctx.store.exported, ctx.store.link_times
        links = [
            {"h": n.handle, "ph": exported[n.handle], "ts": times[n.handle]}
            for n in owned
            if n.handle in exported
        ]
        return {
            "f": nodes,
            "ok": [],
            "s": [],
            "ps": [],
            "ipc": [],
            "opc": [],
            "ph": links,
            "u": [{"u": account.user_handle, "c": 2, "m": account.email}],
            # 8 binary bytes as 11 base64url characters (SCSN::setScsn, src/megaclient.cpp).
            "sn": ctx.store.sequence_number(),
        }


def cmd_upload_url(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    account = ctx.require_account()
    size = cmd.get("s")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ApiError(errors.EARGS)
    if ctx.faults.over_quota_upload_url:
        ctx.stats.fault("over_quota_upload_url")
        raise ApiError(ctx.faults.over_quota_code)
    if ctx.store.used_bytes(account) + size > ctx.faults.storage_quota_bytes:
        raise ApiError(errors.EOVERQUOTA)
    # The SDK always asks with "ssl": 2 (src/commands.cpp, CommandPutFile); without it
    # MEGA may answer with an http:// upload URL.
    ssl = cmd.get("ssl")
    ctx.stats.add("upload_urls_ssl" if ssl == 2 else "upload_urls_without_ssl")
    # "v": the upload protocol: none is the legacy form (mega.py), 2 the web client's and
    # megajs' (upload2.js ulStart, mutable-file.mjs), 3 the SDK's (CommandPutFile).
    asked = cmd.get("v")
    version = asked if isinstance(asked, int) and not isinstance(asked, bool) else 0
    ctx.stats.add(f"upload_urls_v{version}")
    forced = ctx.faults.upload_answer_version
    upload = ctx.store.new_upload(account.user_handle, size, version if forced is None else forced)
    base = ctx.base_url if ssl == 2 and not ctx.faults.plain_upload_urls else ctx.plain_url
    return {"p": f"{base}/ul/{upload.token}"}


def cmd_put_nodes(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    account = ctx.require_account()
    new_nodes = cmd.get("n")
    if not isinstance(new_nodes, list) or not new_nodes:
        raise ApiError(errors.EARGS)
    if ctx.faults.over_quota_put_nodes:
        ctx.stats.fault("over_quota_put_nodes")
        raise ApiError(errors.EOVERQUOTA)
    store = ctx.store
    with store.lock:
        wanted = cmd.get("t")
        if isinstance(wanted, str) and store.removed.get(wanted) == account.user_handle:
            # src/commands.cpp, CommandPutNodes::procresult: "when the target has been
            # removed, the API automatically adds the new node/s into the rubbish bin".
            ctx.stats.add("put_nodes_into_removed_targets")
            wanted = account.rubbish
        target = ctx.own_node(wanted)
        if target.type == NODE_FILE:
            raise ApiError(errors.EARGS)
        # Validate everything first: the real service applies all or nothing.
        plans: list[tuple[dict[str, Any], tuple[str, str, int] | None]] = []
        for spec in new_nodes:
            if not isinstance(spec, dict) or spec.get("t") not in (NODE_FILE, NODE_FOLDER):
                raise ApiError(errors.EARGS)
            if not isinstance(spec.get("a"), str) or not isinstance(spec.get("k"), str):
                raise ApiError(errors.EARGS)
            source = None
            if spec["t"] == NODE_FILE:
                if isinstance(spec.get("ph"), str):  # import of a public file
                    handle = store.public.get(spec["ph"])
                    if handle is None:
                        raise ApiError(errors.ENOENT)
                    node = store.nodes[handle]
                    assert node.blob is not None
                    source = (account.user_handle, node.blob, node.size)
                else:
                    source = store.completions.get(spec.get("h"))  # type: ignore[arg-type]
                    if source is None or source[0] != account.user_handle:
                        raise ApiError(errors.ENOENT)
                    if ctx.faults.take("put_nodes_storage_gone_next"):
                        # -9 for "file-storage server unavailable" (src/transfer.cpp,
                        # Transfer::failed): the upload is gone with it, token and all.
                        ctx.stats.fault("put_nodes_storage_gone")
                        store.completions.pop(spec["h"], None)
                        raise ApiError(errors.ENOENT)
            plans.append((spec, source))
        created = []
        for spec, source in plans:
            node = Node(
                store.new_node_handle(),
                target.handle,
                account.user_handle,
                spec["t"],
                attributes=spec["a"],
                key=f"{account.user_handle}:{spec['k']}",
            )
            if source is not None:
                node.blob, node.size = source[1], source[2]
                store.retain_blob(node.blob)
                if "h" in spec and "ph" not in spec:
                    store.completions.pop(spec["h"], None)
                ctx.stats.add("files_stored")
            else:
                ctx.stats.add("folders_created")
            node.sdk_name = sdk_read_name(spec["a"], spec["k"], account.master_key)
            store.nodes[node.handle] = node
            created.append(node.wire())
    return {"f": created}


def cmd_export(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    store = ctx.store
    with store.lock:
        node = ctx.own_node(cmd.get("n"))
        if node.type not in (NODE_FILE, NODE_FOLDER):
            raise ApiError(errors.EACCESS)
        # {"a":"l","n":h,"d":1} removes the link and is answered 0; without "d" the
        # answer is the public handle (src/commands.cpp, CommandSetPH). An exported
        # node keeps its handle: the SDK does not even ask again (MegaClient::exportnode).
        if cmd.get("d"):
            store.unexport(node.handle)
            return 0
        ph = store.exported.get(node.handle)
        if ph is None:
            ph = store._unique(store.public, 6)
            store.public[ph] = node.handle
            store.exported[node.handle] = ph
            store.link_times[node.handle] = int(time.time())
        return ph


def cmd_download(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    store = ctx.store
    with store.lock:
        if isinstance(cmd.get("p"), str):
            handle = store.public.get(cmd["p"])
            if handle is None:
                raise ApiError(errors.ENOENT)
            node = store.nodes[handle]
        else:
            node = ctx.own_node(cmd.get("n"))
        if node.type != NODE_FILE or node.blob is None:
            raise ApiError(errors.EACCESS)
        result: dict[str, Any] = {"s": node.size, "at": node.attributes, "msd": 1}
        if cmd.get("g"):
            result["g"] = f"{ctx.base_url}/dl/{store.download_token(node.blob)}"
        return result


def cmd_delete(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    with ctx.store.lock:
        node = ctx.own_node(cmd.get("n"))
        if node.type not in (NODE_FILE, NODE_FOLDER):
            raise ApiError(errors.EACCESS)
        ctx.store.delete_node(node.handle)
    return 0


def cmd_move(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    store = ctx.store
    with store.lock:
        node = ctx.own_node(cmd.get("n"))
        target = ctx.own_node(cmd.get("t"))
        if node.type not in (NODE_FILE, NODE_FOLDER) or target.type == NODE_FILE:
            raise ApiError(errors.EACCESS)
        if target.handle in store.subtree(node.handle):
            raise ApiError(errors.ECIRCULAR)
        node.parent = target.handle
    return 0


def cmd_set_attributes(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    account = ctx.require_account()
    with ctx.store.lock:
        node = ctx.own_node(cmd.get("n"))
        # Both official clients send the whole rewritten block as "at"
        # (src/commands.cpp, CommandSetAttr::getJSON; js/crypto.js, api_setattr);
        # mega.py sends it as "attr", with the key again as "key".
        attr = cmd.get("at") if isinstance(cmd.get("at"), str) else _str_arg(cmd, "attr")
        if node.type not in (NODE_FILE, NODE_FOLDER) or not attr:
            raise ApiError(errors.EACCESS if attr else errors.EARGS)
        node.attributes = attr
        if isinstance(cmd.get("key"), str):
            node.key = f"{account.user_handle}:{cmd['key']}"
        encrypted_key = node.key.partition(":")[2]
        node.sdk_name = sdk_read_name(node.attributes, encrypted_key, account.master_key)
    return 0


def cmd_why_blocked(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    # src/commands.cpp, CommandWhyAmIblocked: 0 when not blocked, else the reason's code.
    account = ctx.require_account()
    if account.email in ctx.faults.blocked_emails:
        return ctx.faults.blocked_reason_code
    return 0


def cmd_quota(ctx: ApiContext, cmd: dict[str, Any]) -> Any:
    account = ctx.require_account()
    with ctx.store.lock:
        nodes = ctx.store.owned_nodes(account)
        used = {}
        for root in (account.root, account.inbox, account.rubbish):
            inside = [ctx.store.nodes[h] for h in ctx.store.subtree(root) if h != root]
            files = [n for n in inside if n.type == NODE_FILE]
            used[root] = [sum(n.size for n in files), len(files), len(inside) - len(files), 0, 0]
        total = sum(n.size for n in nodes if n.type == NODE_FILE)
    quota = ctx.faults.storage_quota_bytes
    result: dict[str, Any] = {
        "mstrg": quota,
        "cstrg": total,
        "cstrgn": used,
        "mxfer": ctx.faults.transfer_quota_bytes,
        "caxfer": 0,
        "csxfer": 0,
        "tuo": 0,
        "tua": 0,
        "srvratio": 0,
        "uslw": 9000,
        # The storage level: 0 green, 1 orange (past "uslw", in 1/100 %), 2 red (full);
        # the SDK asserts on a "strg" answer without it (CommandGetUserQuota::procresult,
        # src/commands.cpp; STORAGE_GREEN... in include/mega/types.h).
        "usl": 2 if total >= quota else 1 if total * 10000 >= quota * 9000 else 0,
        "utype": 0,
    }
    if cmd.get("pro"):
        result["balance"] = []
    return result


HANDLERS: dict[str, Handler] = {
    "us0": cmd_prelogin,
    "us": cmd_login,
    "ug": cmd_user,
    "f": cmd_fetch_nodes,
    "u": cmd_upload_url,
    "p": cmd_put_nodes,
    "l": cmd_export,
    "g": cmd_download,
    "d": cmd_delete,
    "m": cmd_move,
    "a": cmd_set_attributes,
    "uq": cmd_quota,
    "whyamiblocked": cmd_why_blocked,
}


def run_command(ctx: ApiContext, cmd: Any) -> Any:
    try:
        return _run(ctx, cmd)
    except ApiError as exc:
        return {"err": exc.code} if ctx.faults.error_objects else exc.code


def _run(ctx: ApiContext, cmd: Any) -> Any:
    if not isinstance(cmd, dict) or not isinstance(cmd.get("a"), str):
        raise ApiError(errors.EARGS)
    name = cmd["a"]
    ctx.stats.command(name)
    if isinstance(cmd.get("i"), str):
        ctx.stats.tag(name, cmd["i"])
    wanted = ctx.faults.command_error_command
    if (wanted is None or wanted == name) and ctx.faults.take("command_error_next"):
        ctx.stats.fault("command_error")
        raise ApiError(ctx.faults.command_error_code)
    handler = HANDLERS.get(name)
    if handler is None:
        raise ApiError(errors.EARGS)
    if name not in PUBLIC_COMMANDS and ctx.account is None:
        raise ApiError(errors.EACCESS)
    return handler(ctx, cmd)
