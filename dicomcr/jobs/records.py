"""What the job store hands out: small frozen values, never rows."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ..config import Policy
from .states import PENDING, InstanceState, ObjectKind, StudyState

# {site: {kind: {state: count}}}; every state is present for a (site, kind) that has rows.
Counts = dict[str, dict[ObjectKind, dict[InstanceState, int]]]


def queue_depth(counts: Counts) -> int:
    """Instances received but not yet forwarded (nor failed), of every site and kind."""
    return sum(states[state] for kinds in counts.values() for states in kinds.values()
               for state in PENDING)


@dataclass(frozen=True)
class Job:
    """One instance to transcode or to forward."""

    sop_instance_uid: str
    site: str
    policy: Policy  # pass-through for derived objects
    kind: ObjectKind
    spool_path: Path
    outputs: tuple[Path, ...]
    attempts: int  # forwarding attempts that failed
    worker_deaths: int = 0  # times a transcoding worker died with this job in flight

    @property
    def uid(self) -> str:
        """The job's key (its SOP Instance UID)."""
        return self.sop_instance_uid


@dataclass(frozen=True)
class StudyJob:
    """A study ready for inference: its images at the site's CR."""

    study_uid: str
    site: str
    files: tuple[Path, ...]
    worker_deaths: int = 0  # times the inference process died with this study in flight

    @property
    def uid(self) -> str:
        """The job's key (its Study Instance UID)."""
        return self.study_uid


class FailedWhat(StrEnum):
    """What a failure is of: an image, an object the node derived, or a study's inference."""

    IMAGE = "image"
    DERIVED = "derived"
    STUDY = "study"


@dataclass(frozen=True)
class Failure:
    """An instance or a study the node gave up on, and why (`dicomcr status --failed`)."""

    uid: str  # SOP Instance UID, or Study Instance UID for a study's inference
    site: str
    what: FailedWhat
    error: str
    where: Path | None  # the source (quarantined when a worker died with it), for instances
    when: float
    policy: Policy | None = None  # the policy recorded at receive, for instances


@dataclass(frozen=True)
class Backlog:
    """What waits to be forwarded: how many objects, the oldest one's arrival, the retries
    they have cost (for /healthz when a destination is down)."""

    waiting: int
    oldest_received_at: float | None
    retries: int



@dataclass(frozen=True)
class ImageView:
    """One instance of a study as the operator page shows it."""

    uid: str
    kind: ObjectKind
    state: InstanceState
    achieved_cr: float | None
    outputs: tuple[Path, ...]
    error: str
    attempts: int  # forwarding attempts that failed
    next_attempt_at: float  # when it is tried again, 0 when not waiting for a retry


@dataclass(frozen=True)
class StudyView:
    """One study with its images and derived objects, newest first on the operator page."""

    uid: str
    site: str
    state: StudyState
    error: str
    probabilities: dict[str, float]
    last_received_at: float
    instances: tuple[ImageView, ...]


@dataclass(frozen=True)
class AchievedCR:
    """The CRs measured on a site's transcoded images: how many, and their spread."""

    images: int
    minimum: float
    median: float
    maximum: float
