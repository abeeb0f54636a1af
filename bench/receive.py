"""Benchmark the node's receiving and its end-to-end throughput, next to DCMTK and Orthanc.

    .venv/bin/python bench/receive.py [--studies 2]

0. Idle: the CPU the node (and its worker processes) uses in 10 s with nothing to do (target:
   under 1 % of a core).
1. Sustained receive: DCMTK `storescu` sends full-size MG images to the node (durable: spooled,
   fsynced, indexed; a pass-through site, so no transcoding competes) and, in the same run, to
   DCMTK `storescp` writing to disk (without fsync); same max PDU (65536). Ratio = storescp time /
   node time.
   STOW-RS: the same images in one STOW-RS request (multipart/related, the site's token; httpx
   streaming the body from a file prepared beforehand, so the client holds none of it) to the
   same node, interleaved with its C-STORE runs. Ratio = C-STORE time / STOW-RS time (goal >= 0.8).
2. End to end: the same images sent to the node at CR 20, all transcoded and forwarded to an
   Orthanc started here: images per second; and the share of a worker's time spent inside the
   codec (encode, and decode for PSNR), from cProfile of the worker's job on the same images.
Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from peers import Orthanc, free_port, wait_for_port

from dicomcr.phantom import CohortSpec, write_cohort
from dicomcr.transcode import transcode_file

PDU = 65536
BOUNDARY = "dicomcr-bench-boundary"
CHUNK = 2**20  # what the STOW-RS client sends at a time


def _node(folder: Path, site_cr: object, destination: dict,
          http_port: int = 0, token: str | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = folder / "node.yaml"
    folder.mkdir(parents=True)
    site = {"name": "bench", "calling_ae": ["BENCH"], "cr": site_cr}
    if token is not None:
        (folder / "token").write_text(token)
        site["dicomweb_token_file"] = str(folder / "token")
    config.write_text(yaml.safe_dump({
        "node": {"port": port, "storage": str(folder / "data"), "http_port": http_port,
                 "max_pdu": PDU},
        "sites": [site], "destinations": {"out": destination}, "forward": {"to": "out"}}))
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--config",
                                str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process, timeout=30)
    if http_port:
        wait_for_port(http_port, process, timeout=30)
    return process, port


def _stow_body(files: list[Path], out: Path) -> Path:
    """The multipart/related body of one STOW-RS request carrying `files`, written to `out`."""
    with open(out, "wb") as body:
        for path in files:
            body.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            body.write(path.read_bytes())
            body.write(b"\r\n")
        body.write(f"--{BOUNDARY}--\r\n".encode())
    return out


def _stow(http_port: int, token: str, body: Path, count: int) -> float:
    """Seconds to send `body` to the node's STOW-RS and have every instance answered stored."""
    def chunks():
        with open(body, "rb") as source:
            while chunk := source.read(CHUNK):
                yield chunk

    start = time.perf_counter()
    answer = httpx.post(f"http://127.0.0.1:{http_port}/dicomweb/studies", content=chunks(),
                        headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                 f"boundary={BOUNDARY}",
                                 "Content-Length": str(body.stat().st_size),
                                 "Authorization": f"Bearer {token}"}, timeout=600)
    elapsed = time.perf_counter() - start
    stored = answer.json().get("00081199", {}).get("Value", []) if answer.is_success else []
    if answer.status_code != 200 or len(stored) != count:
        raise SystemExit(f"STOW-RS answered {answer.status_code}: {answer.text[:300]}")
    return elapsed


def _storescu(port: int, aec: str, files: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run(["storescu", "-aec", aec, "-aet", "BENCH", "--max-pdu", str(PDU), "127.0.0.1",
                    str(port), *map(str, files)], check=True, capture_output=True)
    return time.perf_counter() - start


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
        for child in (task / "children").read_text().split():
            total += _cpu_seconds(int(child))
    return total


def _idle_cpu(process: subprocess.Popen, seconds: float = 10.0) -> float:
    """The share of one core the node's process tree uses over `seconds` with nothing to do."""
    time.sleep(2)  # past its start
    before = _cpu_seconds(process.pid)
    time.sleep(seconds)
    return (_cpu_seconds(process.pid) - before) / seconds


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=3, help="full-size Hologic studies")
    parser.add_argument("--repeats", type=int, default=3, help="receive runs of each side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cohort = write_cohort(CohortSpec(n_studies=args.studies, seed=3, size="full",
                                         vendor="hologic"), tmp / "in")
        files = sorted(cohort.dicom.glob("*/*.dcm"))
        size = sum(p.stat().st_size for p in files) / 2**20
        print(f"{len(files)} full-size Hologic images, {size:.0f} MiB")

        peer_times, node_times, stow_times = [], [], []
        token, http_port = secrets.token_hex(32), free_port()
        body = _stow_body(files, tmp / "stow-body")
        node, node_port = _node(tmp / "recv", "none", {"folder": str(tmp / "recv" / "archive")},
                                http_port, token)
        idle = _idle_cpu(node)
        print(f"0. idle node: {100 * idle:.2f} % of a core over 10 s (target < 1 %)")
        for attempt in range(args.repeats):  # interleaved, the median of each
            folder = tmp / f"storescp{attempt}"
            folder.mkdir()
            port = free_port()
            scp = subprocess.Popen(["storescp", "--max-pdu", str(PDU), "-od", str(folder),
                                    str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_port(port, scp)
            peer_times.append(_storescu(port, "ANY-SCP", files))
            scp.terminate()
            scp.wait()
            shutil.rmtree(folder)
            node_times.append(_storescu(node_port, "DICOMCR", files))
            stow_times.append(_stow(http_port, token, body, len(files)))
        _stop(node)
        ours, peer = statistics.median(node_times), statistics.median(peer_times)
        print(f"1. receive (median of {args.repeats}): node {ours:.2f} s ({size / ours:.0f} MiB/s, "
              f"durable), storescp {peer:.2f} s ({size / peer:.0f} MiB/s), ratio "
              f"{peer / ours:.2f} (target >= 1.0)")
        stow = statistics.median(stow_times)
        print(f"   STOW-RS (median of {args.repeats}): node {stow:.2f} s ({size / stow:.0f} MiB/s, "
              f"durable, one request of {len(files)} parts), ratio to its C-STORE "
              f"{ours / stow:.2f} (goal >= 0.8)")

        pacs = Orthanc(tmp / "orthanc")
        node, port = _node(tmp / "e2e", 20, {"host": "127.0.0.1", "port": pacs.dicom_port,
                                             "ae_title": pacs.aet})
        start = time.perf_counter()
        _storescu(port, "DICOMCR", files)
        while len(pacs.get("/instances")) < len(files):
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        _stop(node)
        pacs.stop()
        print(f"2. end to end at CR 20 into Orthanc: {len(files)} images in {elapsed:.1f} s, "
              f"{len(files) / elapsed:.2f} images/s")

        profile = cProfile.Profile()
        profile.enable()
        for path in files:
            transcode_file(path, tmp / "profiled", Path(path.name), [20])
        profile.disable()
        stats = pstats.Stats(profile)
        total = stats.total_tt
        codec = sum(row[2] for func, row in stats.stats.items()
                    if func[0].endswith("openjpeg/utils.py") and func[2] in ("encode_array",
                                                                             "decode"))
        print(f"   worker time inside the codec (OpenJPEG encode + PSNR decode): "
              f"{100 * codec / total:.0f} % of {total:.1f} s (target >= 80 %)")


if __name__ == "__main__":
    main()
