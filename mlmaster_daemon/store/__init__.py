"""Durable state: SQLite with numbered migrations."""

from mlmaster_daemon.store.db import Store
from mlmaster_daemon.store.records import NodeRecord, TaskRecord

__all__ = ["NodeRecord", "Store", "TaskRecord"]
