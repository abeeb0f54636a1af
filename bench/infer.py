"""Benchmark inference on full-size four-view studies: per-stage latency and study throughput.

    .venv/bin/python bench/infer.py [--model MODEL] [--studies 4] [--workers N]

What the node does per study, at the site's CR (20): the four CR-20 JPEG 2000 images as the
archive holds them are decoded, preprocessed, classified (CNN3, one batch per breast), explained
(Grad-CAM, mapped back to each full view), and written as four SCs and one SR. Printed:
1. latency per stage for one Hologic and one GE study (median of 3 runs; target <= 3 s per study);
2. study throughput with all workers (a process pool running the node's inference step);
3. the decode stage next to OpenJPEG's `opj_decompress` on the same codestreams (the named peer).
Without --model a CNN3 of the default spec with seeded weights is used: timing does not depend
on what the weights learnt. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pydicom
import torch

from dicomcr.data.preprocess import (
    FULL_SIZE_VIEWS,
    Preprocessing,
    breast_input,
    normalise_image,
    resize_and_crop,
    to_view,
)
from dicomcr.dicom.source import read_source
from dicomcr.explain.gradcam import grad_cam
from dicomcr.inference.classify import Classifier
from dicomcr.inference.objects import write_objects
from dicomcr.models import CNN3, CNN3Spec
from dicomcr.models.modelfile import ModelInfo, save_model
from dicomcr.phantom import CohortSpec, write_cohort
from dicomcr.transcode import transcode_file
from services.inference import infer_study


def _model(folder: Path) -> Path:
    torch.manual_seed(0)
    p = Preprocessing().for_views(FULL_SIZE_VIEWS)  # the paper's pitch, as `dicomcr train` makes
    spec = CNN3Spec(input_size=p.model_input)
    path = folder / "cnn3-bench.dcmcr"
    save_model(CNN3(spec).eval(), ModelInfo(
        architecture="cnn3", spec=spec.as_dict(), preprocessing=p.as_dict(),
        trained_crs=[20.0], data_fingerprint="bench", threshold=0.5), path)
    return path


def _stages(classifier: Classifier, files: list[Path], out: Path) -> dict[str, float]:
    """One study through every stage, each timed on its own."""
    t = {}
    start = time.perf_counter()
    sources = [read_source(f) for f in files]
    t["decode"] = time.perf_counter() - start
    p = classifier.preprocessing
    start = time.perf_counter()
    crops = {}
    for s in sources:
        side, view = str(s.dataset.ImageLaterality), str(s.dataset.ViewPosition)
        crops[(side, view)] = resize_and_crop(normalise_image(s.pixels, s.dataset), side, view, p)
    inputs = {side: breast_input(crops[(side, "CC")], crops[(side, "MLO")], p) for side in "LR"}
    t["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    batch = torch.stack([torch.from_numpy(inputs[s]) for s in "LR"])[:, None].float()
    with torch.no_grad():
        torch.sigmoid(classifier.network(batch))
    t["classify"] = time.perf_counter() - start
    start = time.perf_counter()
    for side in "LR":
        cam = grad_cam(classifier.network, torch.from_numpy(inputs[side])[None, None].float())
        for view in ("CC", "MLO"):
            shape = next(s.pixels.shape for s in sources if str(s.dataset.ImageLaterality) == side
                         and str(s.dataset.ViewPosition) == view)
            to_view(cam, shape, side, view, p)
    t["grad-cam"] = time.perf_counter() - start
    result = classifier.classify(files)
    start = time.perf_counter()
    write_objects(classifier, result, "20", out)
    t["SC and SR encode"] = time.perf_counter() - start
    start = time.perf_counter()
    write_objects(classifier, classifier.classify(files), "20", out)
    t["end to end (the node's library call)"] = time.perf_counter() - start
    return t


def _opj_decode(files: list[Path], folder: Path, threads: int) -> float:
    streams = []
    for f in files:
        ds = pydicom.dcmread(f)
        frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
        path = folder / f"{f.parent.name}_{f.stem}.j2k"
        path.write_bytes(frame)
        streams.append(path)
    start = time.perf_counter()
    for s in streams:
        subprocess.run(["opj_decompress", "-i", str(s), "-o", str(s.with_suffix(".pgm")),
                        "-threads", str(threads)], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--studies", type=int, default=4, help="studies for the throughput run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or _model(tmp)
        raw = write_cohort(CohortSpec(n_studies=2, seed=4, size="full", vendor="mixed"), tmp / "raw",
                           workers=2).dicom
        studies = []
        for folder in sorted(p for p in raw.iterdir() if p.is_dir()):
            files = []
            for f in sorted(folder.glob("*.dcm")):
                rows = transcode_file(f, tmp / "cr20" / folder.name, Path(f.name), [20.0], False)
                files.append(Path(rows[0].output))
            studies.append((pydicom.dcmread(files[0]).Manufacturer, files))
        classifier = Classifier(model, "cpu")
        print(f"model {model.name}; torch threads 1 per process; CPU cores {os.cpu_count()}")
        for vendor, files in studies:
            runs = [_stages(classifier, files, tmp / "out") for _ in range(3)]
            median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            staged = sum(v for k, v in median.items() if "end to end" not in k)
            print(f"\n{vendor}: {pydicom.dcmread(files[0]).Columns}x"
                  f"{pydicom.dcmread(files[0]).Rows}, four views at CR 20")
            for name, seconds in median.items():
                print(f"  {name:40s} {seconds:6.3f} s")
            print(f"  {'sum of the stages':40s} {staged:6.3f} s   (target <= 3 s)")
            opj = statistics.median(_opj_decode(files, tmp, 1) for _ in range(3))
            print(f"  decode: dicomcr {median['decode']:.3f} s vs opj_decompress -threads 1 "
                  f"{opj:.3f} s, ratio {opj / median['decode']:.2f}")
        jobs = [studies[i % len(studies)][1] for i in range(args.studies)]
        start = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(infer_study, files, model, "cpu", "20", tmp / "t" / str(i))
                       for i, files in enumerate(jobs)]
            for future in futures:
                future.result()
        seconds = time.perf_counter() - start
        print(f"\nthroughput: {args.studies} studies, {args.workers} workers: {seconds:.1f} s, "
              f"{args.studies / seconds * 60:.1f} studies/min (first study per worker includes "
              "loading the model)")


if __name__ == "__main__":
    main()
