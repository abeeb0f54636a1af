"""What an operator asks of a node's store from the command line, running node or not:
`dicomcr status` (counts, and with --failed what failed and was refused, with why) and
`dicomcr retry` (failed items back in line, their sources released from quarantine)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from ..config import Policy
from .layout import Storage
from .records import Counts, FailedWhat, Failure, queue_depth
from .spool import Refusal, refused, release
from .states import InstanceState, ObjectKind, StudyState
from .store import JobStore


@dataclass(frozen=True)
class StoreStatus:
    """The counts `dicomcr status` shows."""

    path: Path
    counts: Counts
    studies: dict[StudyState, int]

    @property
    def queue_depth(self) -> int:
        return queue_depth(self.counts)

    def table(self, title: str) -> Table:
        """Per site, its images and its derived objects apart, by state (80 columns)."""
        table = Table(title=title, title_justify="left", caption=str(self.path),
                      caption_justify="left")
        table.add_column("site", overflow="fold")
        table.add_column("objects")
        for state in InstanceState:
            table.add_column(state.value, justify="right")
        names = {ObjectKind.IMAGE: "images", ObjectKind.DERIVED: "derived"}
        for site, kinds in sorted(self.counts.items()):
            for kind in (k for k in ObjectKind if k in kinds):
                table.add_row(site, names[kind],
                              *(str(kinds[kind][state]) for state in InstanceState))
        return table

    def summary(self) -> list[str]:
        """The studies by state, and the queue depth."""
        counted = [f"{state.value} {self.studies[state]}" for state in StudyState
                   if state in self.studies]
        lines = [f"studies: {', '.join(counted)}"] if counted else []
        return [*lines, f"queue depth: {self.queue_depth}"]


def read_status(storage: Storage) -> StoreStatus:
    """The store's counts, read without changing it; FileNotFoundError when there is none,
    StoreError when it cannot be read."""
    with JobStore.open_readonly(storage.store) as store:
        return StoreStatus(storage.store, store.counts(), store.study_states())


@dataclass(frozen=True)
class FailedReport:
    """What failed (with why and where its source is) and what was refused at receive."""

    failures: list[Failure]
    refusals: list[Refusal]

    def lines(self) -> list[str]:
        """One block per failure (UIDs are long, reasons longer), then the refusals at receive."""
        if not self.failures and not self.refusals:
            return ["nothing failed"]
        lines = []
        for item in self.failures:
            lines += [f"{item.what} {item.uid} (site {item.site})", f"  why:   {item.error}"]
            if item.where is not None:
                lines.append(f"  where: {item.where}")
        for refusal in self.refusals:
            lines += [f"refused at receive, never acknowledged: {refusal.path.name}",
                      f"  why:   {refusal.reason}"]
        return lines


def read_failed(storage: Storage) -> FailedReport:
    """Every failed job, newest first, and every refusal kept in quarantine."""
    with JobStore.open_readonly(storage.store) as store:
        failures = store.failures()
    kept = {item.where for item in failures if item.where is not None}
    return FailedReport(failures, refused(storage, kept))


@dataclass(frozen=True)
class Retried:
    """One failed item given another go, and the policy it will be transcoded at."""

    uid: str
    what: FailedWhat
    policy: Policy | None  # None for a study's inference
    recorded: Policy | None  # the policy recorded when it was received
    current: Policy | None  # the site's policy now, when it differs from the recorded one


@dataclass(frozen=True)
class RetryReport:
    retried: list[Retried]
    unknown: list[str]  # named, but nothing of that UID failed


def retry_failed(storage: Storage, uids: Sequence[str] | None,
                 site_policy: Callable[[str], Policy] | None = None,
                 use_current: bool = False) -> RetryReport:
    """Give failed items another go (`uids`, or every failed one when None): a source kept in
    quarantine goes back to the spool, and a running node takes them up. An image is transcoded
    at the policy recorded when it was received, or, with `use_current`, at its site's policy
    now (`site_policy(site)`, which also lets the report say where the two differ)."""
    with JobStore(storage.store) as store:
        failed = {f.uid: f for f in store.failures()}
        wanted = list(failed) if uids is None else list(uids)
        retried = []
        for uid in wanted:
            item = failed.get(uid)
            if item is None:
                continue
            back = None
            if item.where is not None and item.where.parent == storage.quarantine:
                back = release(storage, item.where, uid)
            now = site_policy(item.site) if site_policy and item.policy is not None else None
            current = now if now is not None and now != item.policy else None
            policy = current if use_current and current is not None else item.policy
            if store.retry(uid, back, policy if policy != item.policy else None):
                retried.append(Retried(uid, item.what, policy, item.policy, current))
    done = {item.uid for item in retried}
    return RetryReport(retried, [uid for uid in wanted if uid not in done])
