"""What a job can be, and the one table of the changes allowed between its states.

An instance (a received image, or an object the node derived itself) goes

    received -> queued -> transcoded -> done
        \\          \\____________/\\
         \\______________________\\__> failed

and back to received when it is sent again, when its task never ran or its worker died, when
its outputs met a full disk, or when an operator retries it after a failure. A study goes

    waiting -> queued -> inferred | failed,   waiting -> skipped | failed

and back to waiting when an image of it arrives, or when its task comes back without a result.

Every state change of the job store goes through `check`: a change that is not in the table
raises ForbiddenTransition, so a bug that would, say, mark a failed instance delivered stops
there instead of reaching the archive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum


class ObjectKind(StrEnum):
    """What an instance is: a received image, or an object the node made (an SC, the SR)."""

    IMAGE = "image"
    DERIVED = "derived"


class InstanceState(StrEnum):
    """Where an instance is: acknowledged, handed to a worker, transcoded, forwarded, or given up
    (with a reason)."""

    RECEIVED = "received"
    QUEUED = "queued"
    TRANSCODED = "transcoded"
    DONE = "done"
    FAILED = "failed"


class StudyState(StrEnum):
    """Inference of a study: to do, handed to a worker, done, given up (with a reason), or
    nothing to do (no model for its site)."""

    WAITING = "waiting"
    QUEUED = "queued"
    INFERRED = "inferred"
    FAILED = "failed"
    SKIPPED = "skipped"


State = InstanceState | StudyState

_I, _S = InstanceState, StudyState
# {from: the states it may change to}, for instances and for studies apart (their states share
# names: "queued" and "failed" are equal strings). A state may "change" to itself where a job
# stays put but its row changes (a forwarding retry later, the files of a delivered object
# purged).
INSTANCE_TRANSITIONS: Mapping[InstanceState, frozenset[InstanceState]] = {
    # acknowledged: handed out, passed through as is, given up before it ran, or sent again
    _I.RECEIVED: frozenset({_I.RECEIVED, _I.QUEUED, _I.TRANSCODED, _I.FAILED}),
    # in a worker's hands: its result, or back to wait (not run, worker died, disk full, re-sent)
    _I.QUEUED: frozenset({_I.RECEIVED, _I.TRANSCODED, _I.FAILED}),
    # ready to forward: delivered, a retry later, made again (derived), or its image sent again
    _I.TRANSCODED: frozenset({_I.TRANSCODED, _I.DONE, _I.RECEIVED}),
    # delivered: its files purged (retention), made again (derived), or its image sent again
    _I.DONE: frozenset({_I.DONE, _I.TRANSCODED, _I.RECEIVED}),
    # given up: retried by an operator or sent again; a derived object made again
    _I.FAILED: frozenset({_I.RECEIVED, _I.TRANSCODED}),
}
STUDY_TRANSITIONS: Mapping[StudyState, frozenset[StudyState]] = {
    # a study waits for its images: handed out, nothing to do, given up, or another image came
    _S.WAITING: frozenset({_S.WAITING, _S.QUEUED, _S.SKIPPED, _S.FAILED}),
    # classified by a worker: its result, or back to wait (another image, not run, worker died)
    _S.QUEUED: frozenset({_S.WAITING, _S.INFERRED, _S.FAILED, _S.SKIPPED}),
    # ended: another image of the study arrived, or an operator retries a failure
    _S.INFERRED: frozenset({_S.WAITING, _S.SKIPPED}),
    _S.FAILED: frozenset({_S.WAITING, _S.SKIPPED}),
    _S.SKIPPED: frozenset({_S.WAITING, _S.SKIPPED}),
}
TRANSITIONS: Mapping[type[State], Mapping] = {InstanceState: INSTANCE_TRANSITIONS,
                                              StudyState: STUDY_TRANSITIONS}
# Instances not yet forwarded nor given up: the queue depth.
PENDING = (InstanceState.RECEIVED, InstanceState.QUEUED, InstanceState.TRANSCODED)


class ForbiddenTransition(RuntimeError):
    """A state change the table does not allow: a bug in the caller, never the peer's fault."""


def check(sources: Iterable[State], target: State) -> tuple[State, ...]:
    """The states a change to `target` may start from, each allowed by TRANSITIONS; raise
    ForbiddenTransition naming the first that is not."""
    sources = tuple(sources)
    table = TRANSITIONS[type(target)]
    for source in sources:
        if type(source) is not type(target):
            raise ForbiddenTransition(f"{source!r} -> {target!r}: an instance's state and a "
                                      "study's are not interchangeable")
        if target not in table[source]:
            allowed = ", ".join(sorted(s.value for s in table[source]))
            raise ForbiddenTransition(f"{type(target).__name__} {source.value} -> {target.value} "
                                      f"is not allowed (from {source.value}: {allowed})")
    return sources


def sources_of(target: State) -> tuple[State, ...]:
    """Every state that may change to `target` (for a change that starts from wherever the job
    is, such as an image sent again)."""
    table = TRANSITIONS[type(target)]
    return tuple(source for source in table if target in table[source])
