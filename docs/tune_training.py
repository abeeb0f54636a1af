"""How the training defaults were chosen: M-CR1's five-fold AUROC under other training options.

    .venv/bin/python docs/tune_training.py COHORT LEARNING_RATE EPOCHS PATIENCE BATCH_SIZE
    .venv/bin/python docs/tune_training.py cohort 3e-4 30 8 16     # the defaults: 0.790
    .venv/bin/python docs/tune_training.py cohort 3e-4 30 8 32     # 0.767
    .venv/bin/python docs/tune_training.py cohort 1e-4 40 10 16    # 0.717

COHORT is the 300-study phantom of the README (`dicomcr phantom cohort --studies 300 --seed 2026`)
with its CR-1 inputs in COHORT/.dicomcr-cache. Same folds and seeds as `dicomcr cv --seed 0`;
prints each fold's best epoch and AUROC, then the pooled AUROC with DeLong's CI and the fold mean.
The script as it was run for the README's figures.
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from dicomcr.data.cache import breast_inputs
from dicomcr.data.dataset import read_phantom_labels
from dicomcr.data.preprocess import Preprocessing
from dicomcr.experiments.cells import run_fold
from dicomcr.experiments.cv import cv_folds, plan_models
from dicomcr.experiments.metrics import auroc_delong
from dicomcr.experiments.train import TrainOptions
from dicomcr.models import CNN3, CNN3Spec

cohort = Path(sys.argv[1])
lr, epochs, patience, batch = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
breasts = read_phantom_labels(cohort)
inputs = breast_inputs(breasts, [1.0], Preprocessing(input_size=(256, 256)), cohort / ".dicomcr-cache")
labels = np.array([b.malignant for b in breasts])
patients = [b.patient_id for b in breasts]
plan = plan_models([1.0])[0]
pooled_y, pooled_s, per_fold = [], [], []
for fold in cv_folds(patients, labels.tolist(), 5, 0):
    options = TrainOptions(epochs=epochs, batch_size=batch, learning_rate=lr, patience=patience,
                           seed=fold.index)
    result, _ = run_fold(plan, fold, [b.key for b in breasts], patients, inputs.arrays, labels,
                         lambda: CNN3(CNN3Spec()), options, "tuning")
    per_fold.append(roc_auc_score(result.labels, result.probabilities["1"]))
    pooled_y += result.labels
    pooled_s += result.probabilities["1"]
    print(fold.index, result.best_epoch, round(per_fold[-1], 3), flush=True)
print(sys.argv[2:], auroc_delong(np.array(pooled_y), np.array(pooled_s)),
      f"fold mean {np.mean(per_fold):.3f}")
