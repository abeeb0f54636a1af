"""Splits by patient, stratified by label, seeded: no patient is ever on both sides.

Each side a model learns or is judged on (training, validation, test) gets patients of both
classes, so validation always has an AUROC and an operating threshold to give: too few patients
of a class are refused before any work, with the number needed.
"""

from __future__ import annotations

import numpy as np


def patient_labels(patients: list[str], labels: list[int]) -> dict[str, int]:
    """Each patient's label: its most severe breast's."""
    if len(patients) != len(labels):
        raise ValueError("patients and labels differ in length")
    by_patient: dict[str, int] = {}
    for patient, label in zip(patients, labels, strict=True):
        by_patient[patient] = max(by_patient.get(patient, 0), int(label))
    return by_patient


def require_patients(by_patient: dict[str, int], needed: int, why: str) -> None:
    """Refuse, in one line with the numbers, fewer than `needed` patients with a malignant breast
    or without one (`why` says what the split needs them for)."""
    have = [sum(v == label for v in by_patient.values()) for label in (1, 0)]
    if min(have) < needed:
        raise ValueError(f"too few patients: {why} needs at least {needed} patients with a "
                         f"malignant breast and {needed} without; the data have {have[0]} and "
                         f"{have[1]}")


def split_patients(patients: list[str], labels: list[int], seed: int,
                   fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
                   ) -> tuple[set[str], set[str], set[str]]:
    """(train, validation, test) patient sets, each with at least one patient of each class."""
    if abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    by_patient = patient_labels(patients, labels)
    shares = ":".join(f"{f * 10:g}" for f in fractions)
    require_patients(by_patient, 3, f"the {shares} split by patient (one each for training, "
                                    f"validation and test)")
    rng = np.random.default_rng(seed)
    parts: tuple[set[str], set[str], set[str]] = (set(), set(), set())
    for label in (0, 1):
        group = sorted(p for p, v in by_patient.items() if v == label)
        order = [group[i] for i in rng.permutation(len(group))]
        n_train = round(fractions[0] * len(order))
        n_val = round(fractions[1] * len(order))
        # A small class still gets one patient on each side (taken from the largest).
        counts = [n_train, n_val, len(order) - n_train - n_val]
        for side in range(3):
            while counts[side] < 1:
                counts[counts.index(max(counts))] -= 1
                counts[side] += 1
        parts[0].update(order[:counts[0]])
        parts[1].update(order[counts[0]:counts[0] + counts[1]])
        parts[2].update(order[counts[0] + counts[1]:])
    return parts
