"""JobStore: the node's durable record, one SQLite row per instance and per study, in WAL mode,
in the node's storage folder; thread-safe, every write committed before it returns.

It is made of the package's parts: the database and its migrations (database.py), the state
changes through the transition table (changes.py), the read models (reads.py) and retention
(retention.py). The node, `dicomcr status`/`retry` and the audit all go through it, and get
dataclasses and enums back, never rows.
"""

from __future__ import annotations

from pathlib import Path

from .retention import Retention


class JobStore(Retention):
    """The job store at `path`: created and migrated when opened for writing."""

    @classmethod
    def open_readonly(cls, path: Path) -> JobStore:
        """The store at `path` for reading only (`dicomcr status`, the audit): nothing is created
        or migrated (a store of an earlier release reads as if migrated), and a write raises
        StoreError. A missing file raises FileNotFoundError."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no job store at {path}")
        return cls(path, readonly=True)

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
