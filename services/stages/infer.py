"""The inference stage: studies whose images are all transcoded go to the work queue in batches
(one model each); their saliency SCs and Structured Report come back as derived objects to
forward (the shared handling of every outcome is in queued.py).

Each site's model is checked when the node starts: a model that cannot be loaded switches off
inference for the sites that name it, says so in /healthz, and the other sites go on. Without any
model torch is never imported, and this stage does not run: a study then has nothing to wait
for (skipped when it is received).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from dicomcr.jobs import STUDIES, StudyJob, StudyState

from ..workqueue import InferenceResult, InferenceTask, StudyTask, TaskKind
from .context import Loop, NodeContext
from .queued import QueuedStage

log = logging.getLogger("dicomcr.node")

BATCH_STUDIES = 8  # studies of one model in one task: the worker loads the model once


def check_models(models: dict[str, Path | None]) -> tuple[dict[str, Path | None], dict[str, str]]:
    """Load each configured model once; ({site: usable model or None}, {site: why not})."""
    from dicomcr.models.modelfile import ModelFileError, load_model

    usable: dict[str, Path | None] = {}
    problems: dict[str, str] = {}
    verdicts: dict[Path, str | None] = {}
    for site, model in models.items():
        if model is None:
            usable[site] = None
            continue
        if model not in verdicts:
            try:
                load_model(Path(model))
                verdicts[model] = None
            except (ModelFileError, OSError) as exc:
                verdicts[model] = str(exc)
        usable[site] = None if verdicts[model] else model
        if verdicts[model]:
            problems[site] = f"inference off for site {site}: {verdicts[model]}"
    return usable, problems


class InferenceStage(QueuedStage):
    """Publishes the studies ready for inference and records their objects; `step` is a round."""

    in_flight: dict[str, StudyJob]
    kind, table, loop = TaskKind.INFER, STUDIES, Loop.INFER
    worker = "the inference process"

    def __init__(self, ctx: NodeContext, models: dict[str, Path | None],
                 problems: dict[str, str], device: str) -> None:
        super().__init__(ctx)
        self.models, self.problems, self.device = models, problems, device

    def _due(self, room: int) -> list[StudyJob]:
        """The ready studies of sites with a usable model; the others are skipped, with why."""
        ctx, due = self.ctx, []
        for study in ctx.store.studies_to_infer(ctx.config.node.stable_seconds):
            if self.models.get(study.site) is None:
                why = self.problems.get(study.site, f"site {study.site} has no model")
                ctx.store.study_done(study.uid, StudyState.SKIPPED, why, was=StudyState.WAITING)
            else:
                due.append(study)
        return due

    def _next_due(self) -> float | None:
        return self.ctx.store.next_study_due(self.ctx.config.node.stable_seconds)

    def _publish_due(self, studies: list[StudyJob], room: int) -> None:
        """Group the studies by model into batches of up to BATCH_STUDIES, one task each."""
        batches: dict[Path, list[StudyJob]] = defaultdict(list)
        for study in studies:
            batches[self.models[study.site]].append(study)
        for model, group in batches.items():
            for start in range(0, len(group), BATCH_STUDIES):
                if room <= 0 or not self._hand_out_batch(model, group[start:start + BATCH_STUDIES]):
                    return
                room -= 1

    def _hand_out_batch(self, model: Path, studies: list[StudyJob]) -> bool:
        ctx = self.ctx
        tasks = []
        for study in studies:
            tasks.append(StudyTask(study.uid, study.files, ctx.storage.derived_of(study.uid),
                                   ctx.config.policy_of(study.site)))
        return self._hand_out(studies, InferenceTask(Path(model), self.device, tuple(tasks)))

    def _done(self, study: StudyJob, result: InferenceResult) -> None:
        ctx = self.ctx
        for item in result.objects:
            ctx.store.derived(sop_instance_uid=item.sop_instance_uid,
                              sop_class_uid=item.sop_class_uid, study_uid=study.uid,
                              site=study.site, path=item.path)
        if not ctx.store.study_done(study.uid, probabilities=result.probabilities):
            log.info("study %s received an image while it was classified: it will be "
                     "classified again", study.uid)
        ctx.metrics.count("inferred")
        ctx.metrics.observe("inference", result.seconds)
        ctx.wake(Loop.FORWARD)
        log.info("study %s classified: %s", study.uid, ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(result.probabilities.items())))

    def _give_up(self, study: StudyJob, reason: str, poison: bool = False) -> None:
        log.warning("inference of study %s failed: %s", study.uid, reason)
        self.ctx.store.give_up(STUDIES, study.uid, reason)
        self.ctx.metrics.count("inference_failed")
