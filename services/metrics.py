"""The node's metrics: counters, per-stage durations and gauges, in Prometheus text format 0.0.4
(served at /metrics by services/web/app.py)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from dicomcr.jobs import Counts, queue_depth

COUNTERS = {
    "received": "Instances received, made durable and acknowledged.",
    "rejected": "Instances refused with a failure status (and quarantined).",
    "transcoded": "Instances transcoded (or passed through) by the workers.",
    "forwarded": "Instances the destination answered Success for.",
    "failed": "Instances that could not be transcoded.",
    "forward_retries": "Forwarding attempts that failed and were scheduled again.",
    "inferred": "Studies classified, their saliency captures and report queued for forwarding.",
    "inference_failed": "Studies that could not be classified (the reason is logged).",
    "out_of_space": "Instances answered Out of Resources: the disk was full or below the reserve.",
    "disk_full_retries": "Transcodes, inferences or job-store writes put back: the disk was full.",
    "transcode_worker_deaths": "Transcoding worker processes that died (the pool was rebuilt).",
    "inference_worker_deaths": "Inference processes that died (the process was restarted).",
    "dead_lettered": "Tasks RabbitMQ gave up after the delivery limit (recorded as failed jobs).",
    "purged": "Delivered objects whose files were deleted (node.retention_days).",
}
STAGES = ("receive", "transcode", "forward", "inference")


@dataclass(frozen=True)
class Gauge:
    """One gauge sample of the node's state at scrape time (disk space, loops running)."""

    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)

    def lines(self, with_header: bool = True) -> list[str]:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        sample = f"dicomcr_{self.name}{{{labels}}}" if labels else f"dicomcr_{self.name}"
        header = [f"# HELP dicomcr_{self.name} {self.help}",
                  f"# TYPE dicomcr_{self.name} gauge"] if with_header else []
        value = float(self.value)
        shown = str(int(value)) if value.is_integer() else repr(value)  # bytes stay exact
        return [*header, f"{sample} {shown}"]


class Metrics:
    """Counters and per-stage durations of one node process, safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.seconds: dict[str, float] = defaultdict(float)
        self.observations: dict[str, int] = defaultdict(int)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.observations[stage] += 1

    def prometheus(self, by_site: Counts, gauges: Sequence[Gauge] = ()) -> str:
        """The text exposition: counters, stage durations, job-store gauges per site, kind and
        state, and the node's own `gauges` (samples of one name given together)."""
        lines = []
        with self._lock:
            for name, help_text in COUNTERS.items():
                lines += [f"# HELP dicomcr_{name}_total {help_text}",
                          f"# TYPE dicomcr_{name}_total counter",
                          f"dicomcr_{name}_total {self.counts[name]}"]
            lines += ["# HELP dicomcr_stage_seconds Time spent per instance in each stage.",
                      "# TYPE dicomcr_stage_seconds summary"]
            for stage in STAGES:
                lines += [f'dicomcr_stage_seconds_sum{{stage="{stage}"}} {self.seconds[stage]:.6f}',
                          f'dicomcr_stage_seconds_count{{stage="{stage}"}} '
                          f"{self.observations[stage]}"]
        lines += ["# HELP dicomcr_queue_depth Instances received but not yet forwarded.",
                  "# TYPE dicomcr_queue_depth gauge", f"dicomcr_queue_depth {queue_depth(by_site)}",
                  "# HELP dicomcr_instances Instances in the job store by site, kind (image: "
                  "received; derived: the node's SCs and SR) and state.",
                  "# TYPE dicomcr_instances gauge"]
        for site, kinds in sorted(by_site.items()):
            for kind, states in sorted(kinds.items()):
                for state, n in states.items():
                    lines.append(f'dicomcr_instances{{site="{site}",kind="{kind}",'
                                 f'state="{state}"}} {n}')
        seen: set[str] = set()
        for gauge in gauges:
            lines += gauge.lines(with_header=gauge.name not in seen)
            seen.add(gauge.name)
        return "\n".join(lines) + "\n"
