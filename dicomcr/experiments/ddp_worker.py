"""The hidden worker entry of `dicomcr train --nproc N` (`distributed.launch`): torchrun runs
`python -m dicomcr.experiments.ddp_worker REQUEST RESULT` on every rank; each trains its share
with `train_classifier` (DDP, from torchrun's environment), and rank 0 writes the pickled
`TrainedModel` to RESULT, or the reason as text when training was refused."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from .distributed import TrainRequest, World
from .run import Events, train_classifier


def main(request_path: str, result_path: str) -> None:
    request: TrainRequest = pickle.loads(Path(request_path).read_bytes())
    world = World.from_env()
    leader = world is None or world.leader

    def say(text: str) -> None:
        if leader:
            print(f"dicomcr-ddp: {text}", flush=True)

    def epoch(record: dict) -> None:
        say(f"epoch {record['epoch']} loss {record['loss']:.3f} val AUROC "
            f"{record['val_auroc']:.3f}")

    try:
        trained = train_classifier(request.breasts, request.crs, request.out, request.cache,
                                   network=request.network, options=request.options,  # type: ignore[arg-type]
                                   preprocessing=request.preprocessing,  # type: ignore[arg-type]
                                   workers=request.workers, events=Events(note=say, epoch=epoch))
    except ValueError as exc:
        if leader:
            Path(result_path).write_bytes(pickle.dumps(str(exc)))
        raise SystemExit(2) from exc
    if leader:
        Path(result_path).write_bytes(pickle.dumps(trained))


if __name__ == "__main__":
    main(*sys.argv[1:3])
