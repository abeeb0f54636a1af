"""Benchmark CNN3 training: milliseconds per training sample at 256 x 256 and at the paper's size.

    .venv/bin/python bench/train.py [--samples 32] [--batch-size 16] [--compare]

The paper's size is the Hologic CC + MLO pair at 30 % (983 x 998, `Preprocessing.for_views`).
Each figure is one epoch of the library's `train_model` (the memory-mapped float16 inputs read
on the loader thread, channels-last, Adam, BCE), after a warm-up epoch, on the CPU with torch's
threads and, where a GPU is present, on CUDA (mixed precision). With --compare, one training
step of CNN3 under the CPU options that were weighed (contiguous or channels-last memory, one or
all threads, torch.compile) is timed too. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dicomcr.data.preprocess import FULL_SIZE_VIEWS, Preprocessing
from dicomcr.experiments.train import Samples, TrainOptions, train_model
from dicomcr.models import CNN3, CNN3Spec

SIZES = {"256 x 256": (256, 256),
         "paper (30 %)": Preprocessing().for_views(FULL_SIZE_VIEWS[:1]).model_input}


def _inputs(folder: Path, size: tuple[int, int], n: int) -> np.ndarray:
    """n random inputs as the cache keeps them: float16, memory-mapped."""
    path = folder / f"inputs-{size[0]}x{size[1]}.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, *size))
    out[:] = np.random.default_rng(0).random((n, *size), dtype=np.float32)
    out.flush()
    return np.load(path, mmap_mode="r")


def per_sample(size: tuple[int, int], device: str, n: int, batch: int, folder: Path) -> float:
    """ms per training sample of one epoch of `train_model` (after a warm-up epoch)."""
    x = _inputs(folder, size, n + 4)
    labels = np.arange(n + 4) % 2
    train = Samples.of({1.0: x}, labels, np.arange(n), [1.0])
    validation = Samples.of({1.0: x}, labels, np.arange(n, n + 4), [1.0])
    options = TrainOptions(epochs=1, batch_size=batch, device=device)
    train_model(lambda: CNN3(CNN3Spec(input_size=size)), train, validation, options)  # warm-up
    start = time.perf_counter()
    train_model(lambda: CNN3(CNN3Spec(input_size=size)), train, validation, options)
    return (time.perf_counter() - start) / n * 1000


def step(size: tuple[int, int], batch: int, channels_last: bool, compiled: bool,
         repeats: int) -> tuple[float, float]:
    """(ms per sample of one CPU training step, seconds of the first step) under the options."""
    torch.manual_seed(0)
    model = CNN3(CNN3Spec(input_size=size))
    x = torch.rand(batch, 1, *size)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), \
            x.contiguous(memory_format=torch.channels_last)
    run = torch.compile(model) if compiled else model
    optimiser = torch.optim.Adam(model.parameters(), 3e-4)
    y = (torch.arange(batch) % 2).float()

    def once() -> None:
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(run(x), y).backward()
        optimiser.step()

    start = time.perf_counter()
    once()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - start) / repeats / batch * 1000, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32, help="training samples per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--compare", action="store_true", help="also time the CPU options")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in SIZES.items():
            for device in devices:
                ms = per_sample(size, device, args.samples, args.batch_size, Path(tmp))
                print(f"train_model  {name:13s} {size[0]} x {size[1]}  {device:4s}  "
                      f"{ms:8.1f} ms per training sample", flush=True)
    if not args.compare:
        return
    threads = torch.get_num_threads()
    for name, size in SIZES.items():
        repeats = 8 if size[0] <= 256 else 3
        for label, cl, compiled, n_threads in (("contiguous", False, False, threads),
                                               ("channels-last", True, False, threads),
                                               ("channels-last, 1 thread", True, False, 1),
                                               ("channels-last, torch.compile", True, True,
                                                threads)):
            torch.set_num_threads(n_threads)
            ms, first = step(size, 8, cl, compiled, repeats)
            print(f"CPU step  {name:13s} {label:30s} {ms:8.1f} ms per sample "
                  f"(first step {first:.1f} s)", flush=True)
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
