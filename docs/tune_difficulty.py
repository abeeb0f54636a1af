"""How the phantom's `conspicuous` difficulty (3, 8, 2), the default before issue 13, was chosen:
CR-1 five-fold AUROC of CNN3 on small cohorts. The default is now `PHYSICAL` (the physics alone,
chosen by physics, not by AUROC); this script stays as the record of that tuning.

    .venv/bin/python docs/tune_difficulty.py MASS_CONTRAST CALC_CONTRAST SIZE_SCALE [STUDIES]
    .venv/bin/python docs/tune_difficulty.py 3 10 2.5 300 3e-4 30 8 256   # with training options

Writes a small-size cohort of STUDIES (300) studies at that Difficulty into /tmp/tune/, trains CNN3 at
CR 1 on five patient folds (validation: the next fold) and prints each fold's best epoch, validation
and test AUROC, and the pooled out-of-fold AUROC. The script as it was run for the README's table.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from dicomcr.data.cache import breast_inputs
from dicomcr.data.dataset import read_phantom_labels
from dicomcr.data.preprocess import Preprocessing
from dicomcr.experiments.train import Samples, TrainOptions, predict, train_model
from dicomcr.models import CNN3
from dicomcr.models.cnn3 import CNN3Spec
from dicomcr.phantom import CohortSpec, write_cohort
from dicomcr.phantom.params import Difficulty

mc, cc, ss = (float(v) for v in sys.argv[1:4])
lr, ep, pati, isz = (1e-3, 15, 5, 256) if len(sys.argv) < 6 else (
    float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]))
n = int(sys.argv[4]) if len(sys.argv) > 4 else 300
out = Path(f"/tmp/tune/c_{mc}_{cc}_{ss}_{n}")
t = time.time()
if not (out / "labels.csv").exists():
    write_cohort(CohortSpec(n_studies=n, seed=1, size="small",
                            difficulty=Difficulty(mc, cc, ss)), out, 2)
b = read_phantom_labels(out)
p = Preprocessing(input_size=(isz, isz))
inputs = breast_inputs(b, [1.0], p, out / ".cache")
x = inputs[1.0]
y = np.array([v.malignant for v in b])
pat = np.array([v.patient_id for v in b])
ups = sorted(set(pat))
perm = np.random.default_rng(0).permutation(len(ups))
fold_of = {ups[i]: k % 5 for k, i in enumerate(perm)}
f = np.array([fold_of[q] for q in pat])
oof = np.zeros(len(y))
for k in range(5):
    te, va = f == k, f == (k + 1) % 5
    tr = ~te & ~va
    r = train_model(lambda: CNN3(CNN3Spec(input_size=(isz, isz))),
                    Samples.of(inputs.arrays, y, np.flatnonzero(tr), [1.0]),
                    Samples.of(inputs.arrays, y, np.flatnonzero(va), [1.0]),
                    TrainOptions(epochs=ep, seed=k, learning_rate=lr, patience=pati))
    oof[te] = predict(r.model, x[te], torch.device("cpu"))
    print(k, r.best_epoch, round(r.best_validation_auroc, 3),
          round(roc_auc_score(y[te], oof[te]), 3), flush=True)
print(json.dumps({"mc": mc, "cc": cc, "ss": ss, "auroc": roc_auc_score(y, oof),
                  "s": time.time() - t}), flush=True)
