"""The inference stage: studies whose images are all transcoded go to the work queue in batches
(one model each); their saliency SCs and Structured Report come back as derived objects to
forward.

Each site's model is checked when the node starts: a model that cannot be loaded switches off
inference for the sites that name it, says so in /healthz, and the other sites go on. Without any
model torch is never imported.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

from dicomcr.config import UNKNOWN_AE_POLICY
from dicomcr.jobs import StudyJob, StudyState

from ..workqueue import InferenceResult, InferenceTask, Outcome, QueueUnavailable, StudyTask, TaskKind
from .context import DISK_RETRY_SECONDS, NodeContext, QueuedStage

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

    in_flight: dict[str, StudyJob]  # handed out, by study UID
    kind = TaskKind.INFER

    def __init__(self, ctx: NodeContext, models: dict[str, Path | None],
                 problems: dict[str, str], device: str) -> None:
        super().__init__(ctx)
        self.models, self.problems, self.device = models, problems, device

    # -- out ---------------------------------------------------------------------------------
    def _publish(self) -> None:
        """Group the ready studies by model into batches; a study whose worker died before
        runs alone (like a transcoding job), so that a second death is its own."""
        ctx = self.ctx
        room = ctx.queue.capacity(self.kind)
        if room <= 0 or any(s.worker_deaths for s in self.in_flight.values()):
            return
        batches: dict[Path, list[StudyJob]] = defaultdict(list)
        for study in ctx.store.studies_to_infer(ctx.config.node.stable_seconds):
            model = self.models.get(study.site)
            if model is None:
                why = self.problems.get(study.site, f"site {study.site} has no model")
                ctx.store.study_done(study.study_uid, StudyState.SKIPPED, why,
                                     was=StudyState.WAITING)
                continue
            if study.worker_deaths >= ctx.max_worker_deaths:
                self._failed(study.study_uid, f"worker died {study.worker_deaths} times",
                             was=StudyState.WAITING)
                continue
            if study.worker_deaths:
                if not self.in_flight:
                    self._submit(model, [study])
                return
            batches[model].append(study)
        for model, studies in batches.items():
            for start in range(0, len(studies), BATCH_STUDIES):
                if room <= 0 or not self._submit(model, studies[start:start + BATCH_STUDIES]):
                    return
                room -= 1

    def _submit(self, model: Path, studies: list[StudyJob]) -> bool:
        ctx = self.ctx
        tasks = []
        for study in studies:
            site = ctx.config.site_for_name(study.site)
            policy = site.policy if site else UNKNOWN_AE_POLICY
            tasks.append(StudyTask(study.study_uid, study.files,
                                   ctx.root / "derived" / study.study_uid, policy))
        try:
            ctx.queue.submit(InferenceTask(Path(model), self.device, tuple(tasks)))
        except QueueUnavailable as exc:
            log.warning("%s; %d studies wait", exc, len(studies))
            return False
        for study in studies:
            ctx.store.study_queued(study.study_uid)
            self.in_flight[study.study_uid] = study
        return True

    # -- back --------------------------------------------------------------------------------
    def _record(self, result: InferenceResult) -> None:
        ctx, uid = self.ctx, result.study_uid
        study = self.in_flight.pop(uid, None)
        if study is None:
            log.debug("result for study %s arrived again: already recorded", uid)
            return
        match result.outcome:
            case Outcome.DONE:
                for item in result.objects:
                    ctx.store.derived(sop_instance_uid=item.sop_instance_uid,
                                      sop_class_uid=item.sop_class_uid, study_uid=uid,
                                      site=study.site, path=item.path)
                if not ctx.store.study_done(uid):
                    log.info("study %s received an image while it was classified: it will be "
                             "classified again", uid)
                ctx.metrics.count("inferred")
                ctx.metrics.observe("inference", result.seconds)
                log.info("study %s classified: %s", uid, ", ".join(
                    f"{k} {v:.3f}" for k, v in sorted(result.probabilities.items())))
            case Outcome.FAILED | Outcome.DEAD_LETTERED:
                if result.outcome is Outcome.DEAD_LETTERED:
                    ctx.metrics.count("dead_lettered")
                self._failed(uid, result.error)
            case Outcome.DISK_FULL:
                ctx.note_disk_full(OSError(result.error))
                ctx.metrics.count("disk_full_retries")
                ctx.store.study_retry(uid, time.time() + DISK_RETRY_SECONDS,
                                      f"disk full: {result.error}")
                log.warning("inference of study %s met a full disk: trying again in %g s", uid,
                            DISK_RETRY_SECONDS)
            case Outcome.NOT_RUN:
                ctx.store.study_requeue(uid)
            case Outcome.WORKER_DIED:
                self._worker_died(uid)

    def _worker_died(self, uid: str) -> None:
        ctx = self.ctx
        if ctx.stopping.is_set():  # killed with the node: no death counted
            log.warning("the inference process ended with the node: study %s waits", uid)
            ctx.store.study_requeue(uid)
            return
        deaths = ctx.store.study_worker_died(uid)
        if deaths >= ctx.max_worker_deaths:
            self._failed(uid, f"worker died {deaths} times")
        else:
            log.warning("the inference process died with study %s in flight (death %d of %d): "
                        "it waits to be classified again", uid, deaths, ctx.max_worker_deaths)

    def _failed(self, study: str, reason: str, was: StudyState = StudyState.QUEUED) -> None:
        log.warning("inference of study %s failed: %s", study, reason)
        self.ctx.store.study_done(study, StudyState.FAILED, reason, was=was)
        self.ctx.metrics.count("inference_failed")
