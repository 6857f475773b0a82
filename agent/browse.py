"""The agent API: list a backup's folders and read one file's bytes for the console.

The coordinator and the console never decrypt (docs/design.md): the agent that holds
the key answers ``mosaic.agentapi.<agent>.tree`` and ``.chunk`` (shared/wire/browse.py)
from its repositories, reading trees and blobs as ``repo find`` and restore do. The
last few trees are kept (a user clicks through folders of one backup), and the open
repositories for a minute (a download is many chunk requests in a row).

Refused: a path that is not in the backup (``..``, absolute, or simply absent), a path
through a secret unless names may be revealed, and a secret file's content always.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg

from agent.jobs.context import JobContext
from engine.format.manifest import Manifest, Node
from engine.repository import Repository
from engine.trees import SecretNames
from shared import subjects
from shared.bus import Bus
from shared.errors import MosaicError
from shared.wire.base import encode
from shared.wire.browse import (
    MAX_CHUNK,
    MAX_PAGE,
    SECRET_NAME,
    AgentApiError,
    AgentApiReply,
    FileChunk,
    FileChunkRequest,
    TreeEntry,
    TreeListing,
    TreeRequest,
    agent_request_decoder,
)

log = logging.getLogger(__name__)

_BACKUP_ID = re.compile(r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,199}$")
TREES_KEPT = 4
REPO_TTL_S = 60.0


class BrowseRefused(MosaicError):
    code = "bad_request"
    retryable = False


@dataclass
class Tree:
    """One backup's tree, indexed for listing: folder path → its children."""

    manifest: Manifest
    nodes: dict[bytes, Node]
    children: dict[bytes, list[Node]]
    names: SecretNames


def index_tree(manifest: Manifest, nodes: list[Node]) -> Tree:
    children: dict[bytes, list[Node]] = {b"": []}
    by_path: dict[bytes, Node] = {}
    for n in nodes:
        by_path[n.path] = n
        children.setdefault(n.path.rpartition(b"/")[0], []).append(n)
        if n.type == "dir":
            children.setdefault(n.path, [])
    for kids in children.values():
        kids.sort(key=lambda n: (n.type != "dir", n.path))
    return Tree(manifest, by_path, children, SecretNames(manifest.source))


def clean_path(text: str) -> bytes:
    """A relative path inside the backup; ``..``, NUL and backslash tricks refused."""
    rel = text.strip().strip("/")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if "\0" in rel or any(p == ".." for p in parts):
        raise BrowseRefused(f"path {text!r} leaves the backup; give a path inside it")
    return os.fsencode("/".join(parts))


def _mtime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def list_folder(tree: Tree, req: TreeRequest) -> TreeListing:
    """One page of one folder, secrets masked unless ``reveal_secret_names``."""
    path = clean_path(req.path)
    node = tree.nodes.get(path)
    # a secret's name is never echoed back: the message names it as listings do
    shown = os.fsdecode(path) if req.reveal_secret_names else tree.names.shown(path)
    if path and (node is None or node.type != "dir"):
        what = "not a folder" if node is not None else "not in this backup"
        raise BrowseRefused(f"{shown} is {what} (backup {req.backup_id})")
    if path and not req.reveal_secret_names and tree.names.is_secret(path):
        raise BrowseRefused(f"{shown} is secret: its content is not listed")
    entries: list[TreeEntry] = []
    hidden = False
    for n in tree.children.get(path, []):
        secret = tree.names.is_secret(n.path)
        if secret and not req.reveal_secret_names:
            hidden = True
            continue
        name = os.fsdecode(n.path.rpartition(b"/")[2])
        size = None if n.type == "dir" or secret else n.size
        entries.append(
            TreeEntry(name=name, type=n.type, size=size, mtime=_mtime(n.mtime_ns), secret=secret)
        )
    if hidden:  # one row, whatever their number: names, sizes and count withheld
        entries.append(TreeEntry(name=SECRET_NAME, type="secret", secret=True))
    limit = max(1, min(req.limit, MAX_PAGE))
    offset = max(0, req.offset)
    return TreeListing(
        backup_id=req.backup_id,
        dataset=tree.manifest.dataset,
        path=os.fsdecode(path),
        entries=entries[offset : offset + limit],
        total=len(entries),
        offset=offset,
    )


async def read_range(repo: Repository, node: Node, offset: int, length: int) -> bytes:
    """``length`` bytes of a file from ``offset``: only the chunks that hold them."""
    await repo.find_missing(node.chunks)
    out: list[bytes] = []
    pos = 0
    end = offset + length
    for cid in node.chunks:
        entry = repo.index.get(cid)
        size = entry.raw_length if entry is not None else None
        if size is not None and pos + size <= offset:
            pos += size
            continue
        data = await repo.read_blob(cid)
        if pos + len(data) > offset:
            out.append(data[max(0, offset - pos) : max(0, end - pos)])
        pos += len(data)
        if pos >= end:
            break
    return b"".join(out)


class BrowseService:
    """Answers this agent's API subjects from its repositories."""

    def __init__(self, ctx: JobContext, target_names: list[str]) -> None:
        self.ctx = ctx
        self.target_names = target_names
        self._trees: OrderedDict[tuple[str, str], Tree] = OrderedDict()
        self._repos: dict[str, tuple[float, Repository]] = {}

    async def subscribe(self, bus: Bus) -> Any:
        return await bus.nc.subscribe(subjects.agentapi_all(self.ctx.agent), cb=self.on_msg)

    async def on_msg(self, msg: Msg) -> None:
        reply: AgentApiReply
        try:
            req = agent_request_decoder.decode(msg.data)
            reply = await self.answer(req)
        except msgspec.DecodeError as exc:
            reply = AgentApiError(code="bad_request", message=str(exc))
        except MosaicError as exc:
            reply = AgentApiError(code=exc.code, message=str(exc))
        except Exception as exc:
            log.exception("agent api request on %s failed", msg.subject)
            reply = AgentApiError(code="internal", message=f"{type(exc).__name__}: {exc}")
        if msg.reply:
            await msg.respond(encode(reply))

    async def answer(self, req: TreeRequest | FileChunkRequest) -> AgentApiReply:
        target, tree = await self.tree(req.backup_id, req.target)
        if isinstance(req, TreeRequest):
            return list_folder(tree, req)
        return await self.chunk(target, tree, req)

    async def chunk(self, target: str, tree: Tree, req: FileChunkRequest) -> AgentApiReply:
        path = clean_path(req.path)
        if tree.names.is_secret(path):
            return AgentApiError(
                code="secret", message=f"{tree.names.shown(path)} is secret: it is never sent"
            )
        node = tree.nodes.get(path)
        if node is None or node.type not in ("file", "hardlink"):
            what = "not in this backup" if node is None else f"a {node.type}, not a file"
            code = "not_found" if node is None else "not_a_file"
            return AgentApiError(code=code, message=f"{os.fsdecode(path)} is {what}")
        offset = max(0, min(req.offset, node.size))
        length = max(0, min(req.length, MAX_CHUNK, node.size - offset))
        data = await read_range(await self.repo(target), node, offset, length) if length else b""
        return FileChunk(
            path=os.fsdecode(path),
            offset=offset,
            data=data,
            size=node.size,
            eof=offset + len(data) >= node.size,
        )

    async def repo(self, target: str, *, fresh: bool = False) -> Repository:
        """The open repository of ``target``: one per target (its index can be large),
        opened again after REPO_TTL_S or when ``fresh`` (a tree not seen yet may be of a
        backup newer than the index this one read)."""
        now = time.monotonic()
        kept = self._repos.get(target)
        if kept is not None and now - kept[0] < REPO_TTL_S and not fresh:
            return kept[1]
        repo = await self.ctx.open(self.ctx.target(target), create=False)
        repo.refuse_write_only("browsing a backup")
        self._repos[target] = (now, repo)
        return repo

    async def tree(self, backup_id: str, target: str) -> tuple[str, Tree]:
        if not _BACKUP_ID.match(backup_id):
            raise BrowseRefused(f"backup id {backup_id!r} is not a backup id")
        for name in [target] if target else self.target_names:
            kept = self._trees.get((name, backup_id))
            if kept is not None:
                self._trees.move_to_end((name, backup_id))
                return name, kept
        for name in [target] if target else self.target_names:
            repo = await self.repo(name, fresh=True)
            if backup_id not in await repo.list_manifests():
                continue
            manifest = await repo.load_manifest(backup_id)
            tree = index_tree(manifest, await repo.read_tree(manifest))
            self._trees[(name, backup_id)] = tree
            while len(self._trees) > TREES_KEPT:
                self._trees.popitem(last=False)
            return name, tree
        where = f"target {target}" if target else f"targets {', '.join(self.target_names)}"
        raise BrowseRefused(f"backup {backup_id} is not in {where} of agent {self.ctx.agent}")
