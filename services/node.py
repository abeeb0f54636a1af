"""The node: the SCP (pynetdicom), the transcoding pool and the forwarder, over the job store.

Each piece is small: receiver.accept decides about one instance, dicomcr.transcode.transcode_file
transcodes one, dicomcr.net.scu.send forwards. This module wires them to threads and a process
pool, and drains them on SIGTERM.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import ssl
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)

from dicomcr.config import UNKNOWN_AE_POLICY, Config, DicomDestination, FolderDestination
from dicomcr.net.scu import NetworkError, Peer, send
from dicomcr.transcode import transcode_file

from .http import Metrics, serve_http
from .inference import infer_study
from .receiver import SUCCESS, Spool, accept
from .store import DERIVED, Job, JobStore

log = logging.getLogger("dicomcr.node")

STORAGE_CLASSES = (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ComputedRadiographyImageStorage,
    SecondaryCaptureImageStorage,
)
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
    JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K,
)


def _place(source: Path, target: Path) -> None:
    """Put `source` at `target` atomically: a hard link when on the same file system (no bytes
    copied), else a copy; an earlier file there is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, target)


class Node:
    """One running node; `start` returns at once, `stop` drains and returns."""

    def __init__(self, config: Config, poll_seconds: float = 0.2) -> None:
        self.config = config
        self.root = Path(config.node.storage)
        self.spool = Spool(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.root / "jobs.sqlite")
        self.poll = poll_seconds
        workers = config.node.workers
        self.workers = (os.cpu_count() or 1) if workers == "auto" else int(workers)
        self.metrics = Metrics()
        self._stop = threading.Event()
        self._server = None
        self._http = None
        self._pool: ProcessPoolExecutor | None = None
        self._infer_pool: ProcessPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        inference = config.inference
        default_model = inference.model if inference else None
        self.models = {site.name: site.model or default_model for site in config.sites}
        self.models["unknown"] = default_model
        self.inference_device = inference.device if inference else "auto"
        self.inference_warning: str | None = None

    # -- receiving -----------------------------------------------------------------------
    def _ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = node.max_pdu
        ae.acse_timeout, ae.dimse_timeout = node.acse_timeout, node.dimse_timeout
        ae.network_timeout = node.network_timeout
        ae.require_called_aet = True
        if not self.config.accepts_any_ae:
            ae.require_calling_aet = [t for s in self.config.sites for t in s.calling_ae]
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        site = self.config.site_for(calling)
        if site is None:  # accepted as unknown (accept_unknown_ae): the built-in default, CR 20
            site_name, policy = "unknown", UNKNOWN_AE_POLICY
        else:
            site_name, policy = site.name, site.policy
        request = event.request
        start = time.perf_counter()
        status = accept(
            event.dataset_path,
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            calling_ae=calling, site=site_name, policy=policy, spool=self.spool,
            store=self.store, max_bytes=int(self.config.node.max_instance_mb * 2**20),
        )
        self.metrics.observe("receive", time.perf_counter() - start)
        self.metrics.count("received" if status == SUCCESS else "rejected")
        return status

    # -- transcoding and forwarding ------------------------------------------------------
    def _transcode_loop(self) -> None:
        running: dict[str, Future] = {}
        while not self._stop.is_set() or running:
            if not self._stop.is_set():
                for job in self.store.to_transcode(self.workers * 2):
                    if job.sop_instance_uid not in running:
                        running[job.sop_instance_uid] = self._submit(job)
            for uid, future in list(running.items()):
                if future.done():
                    del running[uid]
                    self._transcoded(uid, future)
            time.sleep(self.poll)

    def _submit(self, job: Job) -> Future:
        out = self.root / "out" / job.sop_instance_uid
        if job.policy == "none":
            future: Future = Future()
            future.set_result([job.spool_path])
            return future
        targets = [] if job.policy == "lossless" else [float(job.policy)]
        return self._pool.submit(transcode_file, job.spool_path, out, Path("image.dcm"), targets,
                                 job.policy == "lossless")

    def _transcoded(self, uid: str, future: Future) -> None:
        try:
            result = future.result()
        except Exception as exc:  # a worker that died: the job is marked failed with the reason
            log.error("transcoding %s failed: %s", uid, exc)
            self.store.failed(uid, f"worker error: {exc}")
            self.metrics.count("failed")
            return
        if result and isinstance(result[0], Path):  # pass-through
            self.store.transcoded(uid, result)
            self.metrics.count("transcoded")
            return
        failed = [row for row in result if row.status != "ok"]
        if failed:
            self.store.failed(uid, failed[0].error)
            self.metrics.count("failed")
            log.warning("instance %s not transcoded: %s", uid, failed[0].error)
        else:
            self.store.transcoded(uid, [Path(row.output) for row in result])
            self.metrics.count("transcoded")
            self.metrics.observe("transcode", sum(float(row.seconds or 0) for row in result))

    def _forward_loop(self) -> None:
        images = self.config.forward.to
        derived = (self.config.inference.send_to if self.config.inference else None) or images
        while not self._stop.is_set():
            jobs = self.store.to_forward(32)
            if not jobs:
                time.sleep(self.poll)
                continue
            for name in dict.fromkeys((images, derived)):
                batch = [j for j in jobs if (derived if j.policy == DERIVED else images) == name]
                if not batch:
                    continue
                start = time.perf_counter()
                self._forward(batch, self.config.destinations[name])
                for _ in batch:
                    self.metrics.observe("forward", (time.perf_counter() - start) / len(batch))

    # -- inference -----------------------------------------------------------------------
    def _inference_ready(self) -> bool:
        """Load every configured model once here; a model that fails disables inference."""
        from dicomcr.models.modelfile import ModelFileError, load_model

        for model in sorted({str(m) for m in self.models.values() if m is not None}):
            try:
                load_model(Path(model))
            except (ModelFileError, OSError) as exc:
                self.inference_warning = f"inference disabled: {exc}"
                log.error("%s; transcoding and forwarding go on", self.inference_warning)
                return False
        return any(m is not None for m in self.models.values())

    def _inference_loop(self) -> None:
        stable = self.config.node.stable_seconds
        while not self._stop.is_set():
            ready = self.store.studies_to_infer(stable)
            for study, site, files in ready:
                if self._stop.is_set():
                    break
                self._infer(study, site, files)
            if not ready:
                time.sleep(self.poll)

    def _infer(self, study: str, site: str, files: list[Path]) -> None:
        model = self.models.get(site)
        if model is None:
            self.store.study_done(study, "skipped", f"site {site} has no model")
            return
        configured = self.config.site_for_name(site)
        policy = configured.policy if configured else UNKNOWN_AE_POLICY
        start = time.perf_counter()
        try:
            written, probabilities = self._infer_pool.submit(
                infer_study, files, Path(model), self.inference_device, policy,
                self.root / "derived" / study).result()
        except Exception as exc:  # a study that cannot be classified: said, the rest goes on
            log.warning("inference of study %s failed: %s", study, exc)
            self.store.study_done(study, "failed", str(exc))
            self.metrics.count("inference_failed")
            return
        for item in written:
            self.store.derived(sop_instance_uid=item.sop_instance_uid,
                               sop_class_uid=item.sop_class_uid, study_uid=study, site=site,
                               path=item.path)
        self.store.study_done(study)
        self.metrics.count("inferred")
        self.metrics.observe("inference", time.perf_counter() - start)
        log.info("study %s classified: %s", study,
                 ", ".join(f"{k} {v:.3f}" for k, v in sorted(probabilities.items())))

    def _forward(self, jobs: list[Job], destination) -> None:
        retry = self.config.forward
        if isinstance(destination, FolderDestination):
            for job in jobs:
                for path in job.outputs:
                    target = Path(destination.folder) / f"{job.sop_instance_uid}" / path.name
                    _place(path, target)
                self.store.done(job.sop_instance_uid)
                self.metrics.count("forwarded")
            return
        assert isinstance(destination, DicomDestination)
        peer = Peer(destination.host, destination.port, destination.ae_title,
                    self.config.node.ae_title, timeout=self.config.node.network_timeout)
        by_path = {path: job for job in jobs for path in job.outputs}
        failed: dict[str, str] = {}
        try:
            for result in send(peer, list(by_path)):
                if not result.ok:
                    failed[by_path[result.path].sop_instance_uid] = result.error
        except (NetworkError, OSError, ValueError) as exc:
            failed.update({job.sop_instance_uid: str(exc) for job in jobs
                           if job.sop_instance_uid not in failed})
            log.warning("forwarding to %s failed: %s", peer, exc)
        for job in jobs:
            if job.sop_instance_uid in failed:
                delay = min(retry.retry_initial_seconds * 2 ** job.attempts, retry.retry_max_seconds)
                self.store.forward_failed(job.sop_instance_uid, job.attempts + 1,
                                          time.time() + delay, failed[job.sop_instance_uid])
                self.metrics.count("forward_retries")
            else:
                self.store.done(job.sop_instance_uid)
                self.metrics.count("forwarded")

    # -- life cycle ----------------------------------------------------------------------
    def _receive_into_files(self) -> None:
        """Have pynetdicom write each incoming dataset straight to a file in storage/incoming/
        (no copy of the image in memory; the spool rename moves no bytes)."""
        self.spool.incoming.mkdir(parents=True, exist_ok=True)
        for stale in self.spool.incoming.glob("*.dcm"):  # never acknowledged: the peer resends
            stale.unlink()
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.spool.incoming)

    def start(self) -> None:
        # Spawned, not forked: a forked worker would inherit the listening socket and keep the
        # port busy after the node itself was killed.
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        self._receive_into_files()
        node = self.config.node
        self._server = self._ae().start_server(
            (node.host, node.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            ssl_context=self._tls())
        if node.http_port:
            self._http = serve_http(node.host, node.http_port, self.metrics, self.store.counts,
                                    self.health)
        loops = [self._transcode_loop, self._forward_loop]
        if self._inference_ready():
            self._infer_pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            loops.append(self._inference_loop)
        for target in loops:
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("listening on %s:%d as %s", node.host, node.port, node.ae_title)

    def _tls(self) -> ssl.SSLContext | None:
        """The server's TLS context (DICOM TLS profile: TLS 1.2 or later), when configured."""
        tls = self.config.node.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert, tls.key)
        if tls.ca is not None:  # client certificates required, checked against this CA
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(tls.ca)
        return context

    def health(self) -> dict:
        """What /healthz reports: ok while the workers run; warnings name what is degraded."""
        alive = all(thread.is_alive() for thread in self._threads)
        counts = self.store.counts()
        warnings = [] if alive else ["a worker thread stopped"]
        if self.inference_warning:
            warnings.append(self.inference_warning)
        return {
            "status": "ok" if alive else "degraded",  # inference trouble warns, it does not fail
            "ae_title": self.config.node.ae_title,
            "uptime_seconds": round(time.time() - self.metrics.started, 1),
            "queue_depth": sum(c["received"] + c["transcoded"] for c in counts.values()),
            "studies": self.store.study_states(),
            "warnings": warnings,
        }

    def stop(self) -> None:
        """Stop accepting, let running associations and jobs finish, then close."""
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()  # no new associations; the running ones finish
            deadline = time.monotonic() + self.config.node.network_timeout

            def running() -> list:  # released or rejected ones may linger until a timer ends
                return [a for a in server.active_associations if a.is_established]

            while running() and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in server.active_associations:  # stalled past the timeout, or finished
                assoc.abort()
        if self._http is not None:
            self._http.shutdown()
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for pool in (self._pool, self._infer_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self.store.close()

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then drain and return."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        log.info("stopping: draining associations and jobs")
        self.stop()
