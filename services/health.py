"""What /healthz says of the node: its status words, shared by the node (which decides them) and
the operator page (which says them in a sentence)."""

from __future__ import annotations

from enum import StrEnum


class NodeStatus(StrEnum):
    """What /healthz says; anything but OK is answered 503."""

    STARTING = "starting"  # listening, its loops not all running yet
    OK = "ok"
    LOW_DISK = "low_disk"  # new instances are answered Out of Resources; the rest goes on
    STOPPING = "stopping"  # draining after SIGTERM
    FAILED = "failed"  # a loop ended on its own or the job store fails: the process exits
