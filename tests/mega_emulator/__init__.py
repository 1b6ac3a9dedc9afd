"""A local MEGA emulator speaking MEGA's HTTP API, for tests and benchmarks.

From Python::

    from tests.mega_emulator import MegaEmulator

    with MegaEmulator(seed=1) as emulator:          # 127.0.0.1, free port
        emulator.add_account("a@example.com", "secret")   # v2; version=1 for v1
        emulator.faults.api_eagain_probability = 0.2
        ...  # point a client at emulator.url + "/cs"
        emulator.stats()["logins_ok"]

As a process (prints its URL on one line when ready, stops on SIGINT/SIGTERM)::

    python -m tests.mega_emulator --port 8090 --account a@example.com:secret \
        [--account b@example.com:secret:v1] [--data-dir D] [--seed N] \
        [--fault NAME=JSON ...] [--hashcash-easiness E] [--eagain-probability P] ...

``python -m tests.mega_emulator --help`` lists every option; ``--fault`` takes
any name of ``faults.FAULT_FIELDS`` with a JSON value.

Endpoints:

* ``POST /cs?id=<seq>&sid=<sid>``: the MEGA API (us0, us, ug, f, u, p, l, g,
  d, m, a, uq, whyamiblocked);
* ``POST /ul/<token>/<offset>``: upload chunks; ``GET /dl/<token>`` downloads
  (Range header or ``/<start>-<end>`` suffix).

Control API:

* ``GET /_emulator/stats``: counters (log-ins, commands by name, chunk POSTs,
  hashcash challenges issued/passed, files stored, injected faults, ...);
* ``GET /_emulator/faults``: current fault settings;
* ``POST /_emulator/faults``: JSON object of settings to change (see
  ``faults.FAULT_FIELDS``); ``"reset": true`` restores the defaults first,
  ``"seed": N`` reseeds the fault generator;
* ``POST /_emulator/accounts``: ``{"email", "password", "version": 2, "blocked": false}``;
* ``GET /_emulator/nodes?email=E``: an account's nodes as ``f`` returns them;
* ``GET /_emulator/ciphertext/<node handle>``: the stored ciphertext of a file.

Errors follow MEGA: request-wide ones (-3 EAGAIN, -4, -18, -15 ESID for an
unknown or expired sid) are a bare integer body, per-command ones an integer
in the result array (-9 wrong credentials, -16 blocked, -17 over quota, -11
for an account command sent without a session).

Behaviour learnt from MEGA's own clients (the C++ SDK and the web client; each
place cites the file it follows):

* ``error_objects``: per-command errors as ``{"err": N}`` (ESID included);
* two-factor accounts (``add_account(..., totp_secret=...)``) answer ``us``
  with -26 until it carries the current RFC 6238 code as ``mfa``;
* ``u`` records whether ``ssl: 2`` was sent and, over TLS (``tls=True``,
  trust ``ca_file``), hands out ``http://`` URLs to clients that did not;
* the upload server: after -3, -4 or -6 an upload URL is dead (every later
  piece gets the code again); -14 asks for one piece again; pieces ending more
  than ``upload_window_bytes`` past the first missing byte get -4;
* hashcash: an empty answer (``1:<token>:``) gets a fresh challenge;
  ``hashcash_hard_challenges_next`` issues unsolvable ones first;
* ``sdk_names(email)``: node names as the SDK reads attribute blocks (a
  ``\\uXXXX`` escape keeps only its low byte);
* request ids: a complete answer is kept for its ``(sid, id)`` and a request with
  that id again gets it replayed, commands not carried out again
  (``replay_repeated_ids``; the SDK's ``src/request.cpp``); bare -3/-4 and
  challenges are not kept, so their resend is carried out;
* session ids as MEGA makes them (the user's handle inside, padded to the modulus'
  length minus 2), with a leading zero byte on demand
  (``session_id_leading_zero_next``);
* 'u' with ``v``: the upload server answers in that protocol version (none: empty
  acknowledgements and a text token; 2: a 36-byte binary token ending in 1; 3: "0"
  acknowledgements), or in ``upload_answer_version``;
* 'p' into a removed folder puts the node into the rubbish bin (the SDK's
  ``CommandPutNodes``); ``put_nodes_storage_gone_next`` answers -9 and drops the
  upload; ``location(handle)`` tells where a node lies;
* a blocked account (``blocked_emails``): -16 at log-in and for every request of its
  sessions, except one holding only ``whyamiblocked`` (``blocked_reason_code``);
* 'ug' carries feature flags (``site_flag``: ``ff_site``, links on mega.app);
* ``sdk_fingerprint(handle)``: a file's ``c`` attribute as the SDK reads it;
* ``sdk_attributes(handle)``: all of a node's attributes as the SDK reads them (names
  packed into 8 bytes, a value that is not a string, number, object or array ends the
  reading);
* ``a`` takes the rewritten block as ``at`` (as both official clients send it), ``f``
  lists public links under ``ph`` and a base64 ``sn``, ``uq`` answers ``usl``.

Throughput: chunk bodies go to disk in 1 MiB pieces. A plain ``requests`` POST
of 256 MiB measured 130-210 MB/s on a 2-vCPU machine with the emulator in its
own process; a bare socket reader writing the same file there reached
190-380 MB/s and 1.3-1.6 GB/s without the write, so the disk sets the pace.
"""

from .faults import FAULT_FIELDS, Faults
from .hashcash import verify as verify_hashcash
from .server import MegaEmulator

__all__ = ["FAULT_FIELDS", "Faults", "MegaEmulator", "verify_hashcash"]
