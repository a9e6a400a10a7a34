"""Routes hot reload: poll the routes files, re-read the changed ones, swap the tables atomically.

Each poll lists the routes prefix once (``s3://<triton bucket>/routes/`` with the objects' ETags, or a
local directory with content hashes), so a new, changed or deleted routes file is seen within one poll
interval at the cost of one request, whatever the number of models. Only files whose tag changed are
read. All I/O runs in a worker thread (boto3 and the file system block); the event loop only swaps one
dict reference, so a request picks from either the old or the new table, never a mix, and no request
fails because of a switch. A file that cannot be parsed keeps the previous table (and is logged); a
failed poll keeps every table (S3 down does not stop serving).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from modelops.serving.gateway.polling import Poller
from modelops.serving.gateway.routing import RoutesFileError, RouteTable, parse_routes
from modelops.storage import Storage, is_s3, parse_s3_uri

log = logging.getLogger("modelops.gateway.routes")


class RoutesSource:
    """Routes files under ``root``: an ``s3://bucket/prefix`` URI or a local directory."""

    def __init__(self, root: str, storage: Storage | None = None):
        self.root = root.rstrip("/")
        self.storage = storage or Storage()

    def scan(self) -> dict[str, str]:
        """``{model: tag}`` of every routes file; the tag changes whenever the file does."""
        if not is_s3(self.root):
            directory = Path(self.root)
            if not directory.is_dir():
                return {}
            return {
                p.stem: hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest()
                for p in directory.glob("*.json")
                if p.is_file()
            }
        bucket, prefix = parse_s3_uri(self.root + "/")
        tags: dict[str, str] = {}
        pages = self.storage.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if name.endswith(".json") and "/" not in name:
                    tags[name[: -len(".json")]] = obj.get("ETag", "") + str(obj.get("LastModified", ""))
        return tags

    def read(self, model: str) -> bytes:
        """The bytes of ``model``'s routes file (``FileNotFoundError`` when it is gone)."""
        return self.storage.read_bytes(f"{self.root}/{model}.json")


class RoutesWatcher(Poller):
    """The current :class:`RouteTable` per model, kept up to date by a polling task.

    Args:
        source: where the routes files are.
        poll_s: seconds between polls (<= 1 keeps a change visible within 2 s).
        on_change: called on the event loop with the new tables after each swap (metrics).
    """

    task_name = "modelops-gateway-routes"

    def __init__(
        self,
        source: RoutesSource,
        poll_s: float = 0.5,
        on_change: Callable[[dict[str, RouteTable]], None] | None = None,
    ):
        self.source = source
        self.poll_s = poll_s
        self.on_change = on_change
        self.tables: dict[str, RouteTable] = {}
        self.loaded = False
        self.last_error: str | None = None
        self.last_poll: float | None = None
        self._tags: dict[str, str] = {}
        super().__init__()

    def get(self, model: str) -> RouteTable | None:
        return self.tables.get(model)

    async def poll_once(self) -> bool:
        """Re-read what changed and swap; ``True`` when the tables changed."""
        try:
            tables, tags = await asyncio.to_thread(self._refresh, dict(self.tables), dict(self._tags))
        except Exception as exc:  # noqa: BLE001 - any storage failure: keep serving the last tables
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if message != self.last_error:
                log.warning("routes poll failed (serving the last known routes): %s", message)
            self.last_error = message
            return False
        self.last_error = None
        self.last_poll = time.monotonic()
        self.loaded = True
        changed = tags != self._tags
        self._tags = tags
        if changed:
            self.tables = tables  # the atomic swap: one reference
            if self.on_change is not None:
                self.on_change(tables)
        return changed

    def _refresh(
        self, tables: dict[str, RouteTable], old_tags: dict[str, str]
    ) -> tuple[dict[str, RouteTable], dict[str, str]]:
        """In a worker thread: the new tables and tags from the old ones."""
        tags = self.source.scan()
        for model in set(tables) - set(tags):
            log.info("routes of %s removed", model)
            tables.pop(model)
        kept: dict[str, str] = {}
        for model, tag in tags.items():
            if old_tags.get(model) == tag:
                kept[model] = tag
                continue
            try:
                table = parse_routes(model, self.source.read(model))
            except FileNotFoundError:
                tables.pop(model, None)
                continue
            except RoutesFileError as exc:
                log.warning("%s; keeping the previous routes", exc)
                kept[model] = tag  # do not re-read a broken file every poll; its next change is seen
                continue
            previous = tables.get(model)
            if previous is None or (previous.revision, previous.deployments, previous.weights) != (
                table.revision, table.deployments, table.weights
            ):
                log.info("routes of %s: revision %s %s", model, table.revision, dict(zip(table.deployments,
                                                                                        table.weights)))
                tables[model] = table
            kept[model] = tag
        return tables, kept
