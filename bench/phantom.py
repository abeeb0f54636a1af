"""Benchmark: time to generate and write one full-size four-view phantom study, per vendor.

    .venv/bin/python bench/phantom.py [--studies 4]

One process, one core (OMP_NUM_THREADS=1), the studies written to a temporary folder. As a
yardstick from a real peer, the same folder is then copied by DCMTK's `dcmconv` (read + write
of every file, no pixel work), and the ratio phantom time / dcmconv time is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pydicom

from dicomcr.data.dataset import PHANTOM_DICOM
from dicomcr.phantom import CohortSpec
from dicomcr.phantom.cohort import write_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4, help="studies per vendor")
    args = parser.parse_args()
    dcmconv = shutil.which("dcmconv")
    print(f"{'vendor':8} {'size':>11} {'s/study':>8} {'MiB/study':>10} {'dcmconv s/study':>16} "
          f"{'ratio':>6}")
    for vendor in ("hologic", "ge"):
        spec = CohortSpec(n_studies=args.studies, seed=1, size="full", vendor=vendor)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            start = time.perf_counter()
            for index, finding in enumerate(spec.findings()):
                write_study(spec, index, finding, out)
            per_study = (time.perf_counter() - start) / args.studies
            files = sorted((out / PHANTOM_DICOM).glob("*/*.dcm"))
            mib = sum(p.stat().st_size for p in files) / 2**20 / args.studies
            peer = float("nan")
            if dcmconv:
                start = time.perf_counter()
                for path in files:
                    subprocess.run([dcmconv, str(path), str(path.with_suffix(".copy"))], check=True)
                peer = (time.perf_counter() - start) / args.studies
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            print(f"{vendor:8} {ds.Columns:>5}x{ds.Rows:<5} {per_study:8.2f} {mib:10.1f} "
                  f"{peer:16.2f} {per_study / peer:6.1f}")


if __name__ == "__main__":
    main()
