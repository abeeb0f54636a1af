"""Benchmark the operator page: GET / against a running node whose job store holds 10,000 images.

    .venv/bin/python bench/page.py [--studies 2500] [--requests 20]

The store is filled through the job store's own methods, as a node leaves it: 2,500 studies of
four images each (10,000 instances) across three sites, most delivered with their achieved CR,
some waiting for a forwarding retry, some for a transcoding retry after a full disk, some failed;
studies classified (with probabilities), skipped, failed or waiting; those classified among the
last 40 with their four saliency captures (real SC files) and SR; 30 refusals in quarantine. It
lies on /dev/shm when there is one (tmpfs: filling 40,000 committed writes takes seconds there,
minutes with an fsync each on a disk; the page only reads). Then a node starts on it (in this
process, uvicorn in a thread, as `dicomcr serve` runs it; nothing in the store is due, so its
loops sleep) and httpx asks for GET / (and /live) a few times to warm up, then `--requests`
times: the median is printed beside the target (200 ms), with the 90th percentile and the
slowest. The thumbnails are fetched once before, as the browser does; their rendering is not
part of GET /.
Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from peers import free_port
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from test_page import MG, make_capture

from dicomcr.config import Policy, load_config
from dicomcr.jobs import JobStore, Storage, StudyState
from dicomcr.jobs.spool import quarantine
from services.node import Node

TARGET_MS = 200.0
SITES = [{"name": "hospital-a", "calling_ae": ["MG_A"], "cr": 20},
         {"name": "hospital-b", "calling_ae": ["PACS_B"], "cr": 15},
         {"name": "archive-c", "calling_ae": ["ARCH_C"], "cr": "lossless"}]
SR = "1.2.840.10008.5.1.4.1.1.88.33"
LATER = 3600.0  # retries fall due after the bench has ended: the node's loops stay asleep


def fill(storage: Storage, studies: int, rng: random.Random) -> dict[str, int]:
    """The store as a node leaves it; how many of each kind of row were written."""
    made = {"images": 0, "failed": 0, "forward retries": 0, "transcode retries": 0,
            "captures": 0, "studies": studies}
    with_captures = set(range(studies - 40, studies))
    now = time.time()
    with JobStore(storage.store) as store:
        for number in range(studies):
            site = SITES[number % len(SITES)]
            policy = Policy.parse(site["cr"])
            study = generate_uid()
            state = rng.random()
            skipped = "site has no model" if state < 0.2 else None
            for side, view in (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")):
                uid = generate_uid()
                store.received(sop_instance_uid=uid, sop_class_uid=MG, study_uid=study,
                               calling_ae=site["calling_ae"][0], site=site["name"],
                               policy=policy, spool_path=storage.spooled(uid),
                               size=27_000_000, skipped=skipped)
                store.queued(uid)
                made["images"] += 1
                fate = rng.random()
                if fate < 0.03:
                    store.failed(uid, f"DecodeError: the {side}{view} codestream ends early")
                    made["failed"] += 1
                    continue
                if fate < 0.06:
                    store.retry_transcode(uid, now + LATER, "disk full: No space left on device")
                    made["transcode retries"] += 1
                    continue
                achieved = None if policy.cr is None else rng.gauss(policy.cr, 0.3)
                store.transcoded(uid, [storage.outputs_of(uid) / "image.dcm"], achieved)
                if fate < 0.10:
                    store.forward_failed(uid, rng.randint(1, 6), now + LATER,
                                         "destination pacs: association rejected")
                    made["forward retries"] += 1
                else:
                    store.done(uid)
            if skipped is not None:
                continue
            if state < 0.25:
                continue  # waiting for its last image or its quiet time
            store.study_queued(study)
            if state < 0.28:
                store.study_done(study, state=StudyState.FAILED, error="inference failed: "
                                 "CUDA out of memory")
                continue
            p = {"L": rng.random(), "R": rng.random()}
            store.study_done(study, probabilities=p)
            if number in with_captures:
                folder = storage.derived_of(study)
                for index, (side, view) in enumerate((("L", "CC"), ("L", "MLO"), ("R", "CC"),
                                                      ("R", "MLO"))):
                    uid = generate_uid()
                    path = make_capture(folder / f"SC_{side}{view}.dcm", study, uid, side, view,
                                        p[side], index + 1)
                    store.derived(sop_instance_uid=uid, sop_class_uid=SecondaryCaptureImageStorage,
                                  study_uid=study, site=site["name"], path=path)
                    store.done(uid)
                    made["captures"] += 1
                report = folder / "SR.dcm"
                report.write_bytes(b"an SR")
                uid = generate_uid()
                store.derived(sop_instance_uid=uid, sop_class_uid=SR, study_uid=study,
                              site=site["name"], path=report)
                store.done(uid)
    storage.incoming.mkdir(parents=True, exist_ok=True)
    for number in range(30):
        bad = storage.incoming / f"refused-{number}.dcm"
        bad.write_bytes(b"not DICOM")
        quarantine(storage, bad, "not a DICOM file (no DICM prefix)", f"1.2.3.{number}")
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2500)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="dicomcr-page-", dir=shm if shm.is_dir() else None))
    try:
        config = folder / "node.yaml"
        config.write_text(yaml.safe_dump({
            "node": {"port": free_port(), "http_port": free_port(), "storage": str(folder / "data"),
                     "workers": 1, "disk_reserve_mb": 0},
            "sites": SITES, "destinations": {"archive": {"folder": str(folder / "archive")}},
            "forward": {"to": "archive"}}))
        settings = load_config(config)
        storage = Storage(settings.node.storage)
        storage.root.mkdir(parents=True)
        start = time.perf_counter()
        made = fill(storage, args.studies, random.Random(7))
        print(f"filled in {time.perf_counter() - start:.1f} s: "
              + ", ".join(f"{n} {what}" for what, n in made.items()))
        node = Node(settings)
        node.start()
        try:
            url = f"http://127.0.0.1:{settings.node.http_port}"
            with httpx.Client(base_url=url, timeout=30) as client:
                first = client.get("/")
                first.raise_for_status()
                for thumbnail in sorted(set(_captures(first.text))):
                    client.get(thumbnail).raise_for_status()
                for path in ("/", "/live"):
                    times = _timed(client, path, args.requests)
                    median = statistics.median(times)
                    p90 = statistics.quantiles(times, n=10)[-1]
                    print(f"GET {path:<6} {made['images']:,} images, {made['studies']:,} studies: "
                          f"median {median:.1f} ms (target <= {TARGET_MS:.0f} ms), 90th "
                          f"percentile {p90:.1f} ms, slowest {max(times):.1f} ms, "
                          f"{len(first.content) / 1024:.0f} KiB  "
                          f"{'OK' if median <= TARGET_MS else 'OVER THE TARGET'}")
        finally:
            node.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _captures(html: str) -> list[str]:
    return re.findall(r'<img class="capture" src="([^"]+)"', html)


def _timed(client: httpx.Client, path: str, requests: int) -> list[float]:
    for _ in range(3):
        client.get(path).raise_for_status()
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return times


if __name__ == "__main__":
    main()
