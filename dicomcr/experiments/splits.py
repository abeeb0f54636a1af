"""Splits by patient, stratified by label, seeded: no patient is ever on both sides."""

from __future__ import annotations

import numpy as np


def split_patients(patients: list[str], labels: list[int], seed: int,
                   fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
                   ) -> tuple[set[str], set[str], set[str]]:
    """(train, validation, test) patient sets; a patient's label is its most severe breast's."""
    if len(patients) != len(labels):
        raise ValueError("patients and labels differ in length")
    if abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    by_patient: dict[str, int] = {}
    for patient, label in zip(patients, labels, strict=True):
        by_patient[patient] = max(by_patient.get(patient, 0), int(label))
    rng = np.random.default_rng(seed)
    parts: tuple[set[str], set[str], set[str]] = (set(), set(), set())
    for label in sorted(set(by_patient.values())):
        group = sorted(p for p, v in by_patient.items() if v == label)
        order = [group[i] for i in rng.permutation(len(group))]
        n_train = round(fractions[0] * len(order))
        n_val = round(fractions[1] * len(order))
        parts[0].update(order[:n_train])
        parts[1].update(order[n_train:n_train + n_val])
        parts[2].update(order[n_train + n_val:])
    return parts
