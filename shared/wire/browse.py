"""The agent API (``mosaic.agentapi.<agent>.<verb>``, request/reply): browse a backup's
file tree and read one file's bytes, answered by the agent that holds the key
(agent/browse.py). The console asks; it never decrypts and never stores what passes.

- ``tree``: :class:`TreeRequest` → :class:`TreeListing` (one page of one folder).
- ``chunk``: :class:`FileChunkRequest` → :class:`FileChunk` (at most
  :data:`MAX_CHUNK` bytes; a large file is read by many requests in a row).
- Either may answer :class:`AgentApiError` (``code``: bad_request, not_found, secret,
  not_a_file, internal).

Secrets (the ``secret`` globs of a files backup): unless the request asks for
``reveal_secret_names`` (the console sets it for admins only), secret entries of a
folder are one row named ``<secret>`` with no size, type or mtime, and a path through a
secret is refused. A secret file's content is never sent, whoever asks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.wire.base import Msg as _Msg

MAX_CHUNK = 256 << 10  # bytes per FileChunk: far below NATS's default 1 MiB payload
MAX_PAGE = 1000  # entries per TreeListing
SECRET_NAME = "<secret>"
EntryType = Literal["dir", "file", "symlink", "hardlink", "other", "secret"]


class TreeRequest(_Msg, frozen=True, kw_only=True, tag="tree_request"):
    backup_id: str
    target: str = ""  # the agent's target holding the backup ("": look in each)
    path: str = ""  # a folder of the backup, relative, '/'-separated ("": the top)
    offset: int = 0
    limit: int = 200
    reveal_secret_names: bool = False


class TreeEntry(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: EntryType
    size: int | None = None  # None for folders and hidden secrets
    mtime: datetime | None = None
    secret: bool = False


class TreeListing(_Msg, frozen=True, kw_only=True, tag="tree_listing"):
    backup_id: str
    dataset: str
    path: str
    entries: list[TreeEntry]
    total: int  # entries in the folder (the page is entries[offset:offset+limit])
    offset: int = 0


class FileChunkRequest(_Msg, frozen=True, kw_only=True, tag="file_chunk_request"):
    backup_id: str
    target: str = ""
    path: str
    offset: int = 0
    length: int = MAX_CHUNK  # at most MAX_CHUNK is answered


class FileChunk(_Msg, frozen=True, kw_only=True, tag="file_chunk"):
    path: str
    offset: int
    data: bytes  # base64 in JSON
    size: int  # of the whole file
    eof: bool


class AgentApiError(_Msg, frozen=True, kw_only=True, tag="agent_api_error"):
    code: str
    message: str


AgentApiRequest = TreeRequest | FileChunkRequest
AgentApiReply = TreeListing | FileChunk | AgentApiError

agent_request_decoder = msgspec.json.Decoder(AgentApiRequest)
agent_reply_decoder = msgspec.json.Decoder(AgentApiReply)
