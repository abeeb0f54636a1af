"""What an operator asks of a node's store from the command line, running node or not:
`dicomcr status` (counts, and with --failed what failed and was refused, with why) and
`dicomcr retry` (failed items back in line, their sources released from quarantine)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Policy
from .layout import Storage
from .records import Counts, FailedWhat, Failure, queue_depth
from .spool import Refusal, refused, release
from .states import StudyState
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
            store.retry(uid, back, policy if policy != item.policy else None)
            retried.append(Retried(uid, item.what, policy, item.policy, current))
    return RetryReport(retried, [uid for uid in wanted if uid not in failed])
