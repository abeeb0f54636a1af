"""Cross-validation of the paper's experiments, as functions of their inputs.

- `cv_folds`: k folds of patients, stratified by label and seeded; each fold's validation patients
  come from its training side, so no patient is ever on two sides of one fold.
- `plan_models`: which models an experiment trains and the CRs each is tested at: Table 1 (M-CRx at
  x), Table 2 with `cross` (every M-CRx at every CR), Fig. 4 with `augment` (M-CR1-x trained on
  every CR from 1 to x, tested at every CR).
- `cross_validate`: every model on every fold (`cells.run_fold`, computed by an executor);
  `summarise`: pooled out-of-fold AUROC (DeLong CI) and AUPRC (bootstrap CI) per model and test
  CR, with the fold mean and sd beside them, and DeLong's paired test of the row against M-CR1 at
  the same test CR and against the same model at test CR 1 (every plan shares the folds, so every
  prediction set covers the same breasts).
- `summarise_findings`: the AUROC of each malignant finding type against all non-malignant
  breasts, per model and test CR: which cancers compression erases first.
Fold results are files (`ResultsDir`): a rerun loads the folds already done instead of training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ..codec.j2k import CODEC_REVISION
from ..data.dataset import Breast, Finding
from ..outputs import write_text_atomically
from .cells import Cell, CellEvents, CellWork, Fold, FoldResult, ModelPlan
from .executors import CellExecutor, LocalExecutor
from .metrics import auprc_bootstrap, auroc_by_group, auroc_delong, delong_paired
from .splits import patient_labels, require_patients
from .train import TrainOptions


def _validation_size(rest: int, share: float) -> int:
    """Validation patients of a class with `rest` patients on a fold's training side."""
    return max(1, round(share * rest))


def fold_minimum(n_folds: int, validation_share: float = 0.125) -> int:
    """The fewest patients of a class for which every fold has one of them in training,
    validation and test (folds hold n // k or n // k + 1 patients of the class)."""
    n = n_folds
    while any(rest - _validation_size(rest, validation_share) < 1
              for rest in (n - n // n_folds, n - -(-n // n_folds))):
        n += 1
    return n


def cv_folds(patients: list[str], labels: list[int], n_folds: int, seed: int,
             validation_share: float = 0.125) -> list[Fold]:
    """Stratified patient folds; a patient's label is its most severe breast's.

    The default validation share of the training side (1/8) gives the paper's 7:1:2 with 5 folds.
    """
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {n_folds}")
    if not 0 < validation_share < 1:
        raise ValueError(f"validation_share must be in (0, 1), got {validation_share}")
    by_patient = patient_labels(patients, labels)
    require_patients(by_patient, fold_minimum(n_folds, validation_share),
                     f"{n_folds}-fold cross-validation (each fold's training, validation and "
                     f"test need both)")
    classes = {label: sorted(p for p, v in by_patient.items() if v == label) for label in (0, 1)}
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for group in classes.values():
        start = int(rng.integers(n_folds))  # so that fold 0 does not always get the remainders
        for rank, i in enumerate(rng.permutation(len(group))):
            fold_of[group[i]] = (start + rank) % n_folds
    folds = []
    for k in range(n_folds):
        test = frozenset(p for p, f in fold_of.items() if f == k)
        validation: set[str] = set()
        for group in classes.values():
            rest = [p for p in group if fold_of[p] != k]
            order = np.random.default_rng([seed, k]).permutation(len(rest))
            validation.update(rest[i] for i in order[:_validation_size(len(rest), validation_share)])
        train = frozenset(by_patient) - test - validation
        folds.append(Fold(k, train, frozenset(validation), test))
    return folds


def model_name(train_crs: tuple[float, ...]) -> str:
    """The paper's names: M-CR20 for one CR, M-CR1-11000 for the mixture of every CR 1..11000."""
    if len(train_crs) == 1:
        return f"M-CR{train_crs[0]:g}"
    return f"M-CR{min(train_crs):g}-{max(train_crs):g}"


def plan_models(crs: list[float], cross: bool = False, augment: bool = False) -> list[ModelPlan]:
    """Table 1 always; Table 2 with `cross`; Fig. 4 with `augment` (needs CR 1 among `crs`)."""
    crs = sorted(set(float(c) for c in crs))
    if not crs or crs[0] < 1:
        raise ValueError(f"CRs must be >= 1 (1 = the original), got {crs}")
    every = tuple(crs)
    plans = [ModelPlan(model_name((c,)), (c,), every if cross or augment else (c,)) for c in crs]
    if augment:
        if crs[0] != 1.0 or len(crs) < 2:
            raise ValueError("--augment trains on mixtures 1..x: give CR 1 and at least one more")
        plans += [ModelPlan(model_name(tuple(crs[:i + 1])), tuple(crs[:i + 1]), every)
                  for i in range(1, len(crs))]
    return plans


def fold_identity(plan: ModelPlan, fold: Fold, architecture: str, spec: dict,
                  options: TrainOptions, preprocessing: dict, data: str) -> str:
    """A hash of everything a fold's result depends on."""
    text = json.dumps({"plan": asdict(plan), "fold": [sorted(fold.train), sorted(fold.validation),
                                                      sorted(fold.test)],
                       "architecture": architecture, "spec": spec, "options": asdict(options),
                       "preprocessing": preprocessing, "data": data, "codec": CODEC_REVISION},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class ResultsDir:
    """RESULTS/folds/<model>/fold<k>.json: one file per finished fold, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, model: str, fold: int) -> Path:
        return self.root / "folds" / model / f"fold{fold}.json"

    def model_path(self, model: str, fold: int) -> Path:
        """Where the fold's trained network is kept (a .dcmcr model file), for saliency."""
        return self.root / "folds" / model / f"fold{fold}.dcmcr"

    def load(self, model: str, fold: int, identity: str) -> FoldResult | None:
        """The finished fold, or None when absent, unreadable or computed for other inputs."""
        path = self._path(model, fold)
        try:
            result = FoldResult(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return result if result.identity == identity else None

    def save(self, result: FoldResult) -> None:
        write_text_atomically(self._path(result.model, result.fold),
                              json.dumps(asdict(result), indent=1))


@dataclass(frozen=True)
class Row:
    """One line of Table 1 / Table 2 / Fig. 4: a model tested at one CR over all folds."""

    model: str
    train_crs: str
    test_cr: float
    n: int
    positives: int
    auroc: float
    auroc_low: float
    auroc_high: float
    auprc: float
    auprc_low: float
    auprc_high: float
    fold_auroc_mean: float
    fold_auroc_sd: float
    fold_auprc_mean: float
    fold_auprc_sd: float
    # DeLong's paired test on the same breasts, this AUROC minus the other's (None: no such pair).
    # Against M-CR1 at test CR 1 (the paper's Table 1 comparison): what this model's compressed
    # pipeline, training and test images, costs against originals throughout.
    vs_mcr1_diff: float | None = None
    vs_mcr1_diff_low: float | None = None
    vs_mcr1_diff_high: float | None = None
    vs_mcr1_p: float | None = None
    # Against this model at test CR 1: what compressing the test images costs this model.
    vs_cr1_diff: float | None = None
    vs_cr1_diff_low: float | None = None
    vs_cr1_diff_high: float | None = None
    vs_cr1_p: float | None = None


REFERENCE = model_name((1.0,))  # M-CR1: trained on the originals, the paired tests' reference


def _fold_stats(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def _paired(first: tuple[tuple[str, ...], np.ndarray, np.ndarray],
            second: tuple[tuple[str, ...], np.ndarray, np.ndarray]) -> tuple[float, ...]:
    """(difference, low, high, p) of DeLong's paired test: first's AUROC minus second's."""
    if first[0] != second[0]:
        raise ValueError("a paired test needs both prediction sets on the same breasts")
    c = delong_paired(first[1], first[2], second[2])
    return c.difference.value, c.difference.low, c.difference.high, c.p_value


def summarise(plans: list[ModelPlan], results: list[FoldResult], seed: int) -> list[Row]:
    """Pooled out-of-fold metrics with CIs, fold mean and sd, and the paired tests (against M-CR1
    at test CR 1, against the model itself at test CR 1) per model and test CR."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    reference = next((p for p in plans if p.name == REFERENCE), None)

    def scored(plan: ModelPlan, c: float) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        return (pooled_keys(plan, results), *pooled(plan, results, c))

    none = (None,) * 4
    rows = []
    for plan in plans:
        folds = sorted((r for r in results if r.model == plan.name), key=lambda r: r.fold)
        for c in plan.test_crs:
            cr = f"{c:g}"
            mine = scored(plan, c)
            _, y, s = mine
            auroc, auprc = auroc_delong(y, s), auprc_bootstrap(y, s, seed)
            per_fold_roc, per_fold_pr = [], []
            for r in folds:
                fy, fs = np.array(r.labels), np.array(r.probabilities[cr])
                two = len(set(fy.tolist())) == 2
                per_fold_roc.append(float(roc_auc_score(fy, fs)) if two else float("nan"))
                per_fold_pr.append(float(average_precision_score(fy, fs)) if two else float("nan"))
            vs_mcr1 = (_paired(mine, scored(reference, 1.0)) if reference is not None
                       and plan is not reference and 1.0 in reference.test_crs else none)
            vs_cr1 = _paired(mine, scored(plan, 1.0)) if c != 1 and 1 in plan.test_crs else none
            rows.append(Row(plan.name, ",".join(f"{t:g}" for t in plan.train_crs), c, len(y),
                            int(y.sum()), auroc.value, auroc.low, auroc.high, auprc.value,
                            auprc.low, auprc.high, *_fold_stats(per_fold_roc),
                            *_fold_stats(per_fold_pr), *vs_mcr1, *vs_cr1))
    return rows


@dataclass(frozen=True)
class FindingRow:
    """The AUROC of one malignant finding type: its malignant breasts against every non-malignant
    breast (benign findings included), a model tested at one CR over all folds."""

    model: str
    train_crs: str
    test_cr: float
    finding: str  # a `Finding` value
    positives: int  # malignant breasts with this finding
    negatives: int
    auroc: float
    auroc_low: float
    auroc_high: float


def findings_of(breasts: list[Breast]) -> dict[str, str | None]:
    """Breast key -> its `Finding` value (None when the data say nothing), as the tables take it."""
    return {b.key: b.finding.value if b.finding else None for b in breasts}


def summarise_findings(plans: list[ModelPlan], results: list[FoldResult],
                       finding_of: Mapping[str, str | None]) -> list[FindingRow]:
    """Per model, test CR and malignant finding type (`finding_of`: breast key -> `Finding`
    value, None when unknown), the pooled out-of-fold AUROC with DeLong's CI. Types with fewer
    than two malignant breasts, and malignant breasts of unknown finding, are left out."""
    order = [f.value for f in Finding]
    rows = []
    for plan in plans:
        groups = np.array([finding_of.get(k) or "" for k in pooled_keys(plan, results)],
                          dtype=object)
        for c in plan.test_crs:
            y, s = pooled(plan, results, c)
            found = auroc_by_group(y, s, groups)
            for finding in sorted((g for g in found if g), key=order.index):
                e = found[finding]
                rows.append(FindingRow(plan.name, ",".join(f"{t:g}" for t in plan.train_crs), c,
                                       finding, int((y.astype(bool) & (groups == finding)).sum()),
                                       int((y == 0).sum()), e.value, e.low, e.high))
    return rows


def findings_note(rows: list[FindingRow], finding_of: Mapping[str, str | None]) -> str:
    """Why there are no per-finding rows ("" when there are)."""
    if rows:
        return ""
    if not any(finding_of.values()):
        return ("no per-finding AUROC: the data carry no finding types (the phantom's labels do; "
                "a CSV needs a finding column)")
    return "no per-finding AUROC: no finding type has two malignant breasts"


def cross_validate(plans: list[ModelPlan], folds: list[Fold], keys: list[str],
                   patient_of: list[str], inputs: dict[float, np.ndarray], labels: np.ndarray,
                   build: Callable[[], nn.Module], options: TrainOptions,
                   identity: Callable[[ModelPlan, Fold], str], results: ResultsDir,
                   on_fold: Callable[[ModelPlan, Fold, bool], None] | None = None,
                   on_epoch: Callable[[dict], None] | None = None,
                   on_model: Callable[[ModelPlan, FoldResult, nn.Module], None] | None = None,
                   executor: CellExecutor | None = None) -> list[FoldResult]:
    """Every plan on every fold; folds already in `results` with the same identity are loaded,
    the others computed by `executor` (default: here, one after another) and saved as each
    arrives.

    Each fold trains with seed `options.seed + fold index`, so folds differ and reruns agree.
    `on_fold(plan, fold, reused)` is called for each finished fold first, then for each fold the
    executor starts; `on_epoch` after each epoch (local executor); `on_model(plan, result,
    network)` with each newly trained network, before its result is kept. The results come back
    in plan order, fold by fold, whatever order they were computed in."""
    found: dict[tuple[str, int], FoldResult] = {}
    cells = []
    for plan in plans:
        for fold in folds:
            ident = identity(plan, fold)
            done = results.load(plan.name, fold.index, ident)
            if done is None:
                cells.append(Cell.of(plan, fold, ident, options))
                continue
            found[plan.name, fold.index] = done
            if on_fold:
                on_fold(plan, fold, True)
    work = CellWork(tuple(keys), tuple(patient_of), inputs, labels, build)
    events = CellEvents((lambda c: on_fold(c.plan, c.fold, False)) if on_fold else None, on_epoch)
    for computed in (executor or LocalExecutor()).run(cells, work, events):
        if on_model:
            on_model(computed.cell.plan, computed.result, computed.network)
        results.save(computed.result)
        found[computed.cell.plan.name, computed.cell.fold.index] = computed.result
    return [found[plan.name, fold.index] for plan in plans for fold in folds]


def _mine(plan: ModelPlan, results: list[FoldResult]) -> list[FoldResult]:
    return sorted((r for r in results if r.model == plan.name), key=lambda r: r.fold)


def pooled(plan: ModelPlan, results: list[FoldResult], cr: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of every out-of-fold prediction of `plan` at test CR `cr`."""
    mine = _mine(plan, results)
    return (np.array([v for r in mine for v in r.labels]),
            np.array([v for r in mine for v in r.probabilities[f"{cr:g}"]]))


def pooled_keys(plan: ModelPlan, results: list[FoldResult]) -> tuple[str, ...]:
    """The breast keys of `pooled`'s predictions, in its order."""
    return tuple(k for r in _mine(plan, results) for k in r.keys)


def _cell(name: str, value: object) -> object:
    """A results.csv cell: CRs as written, p-values to 4 significant digits, other floats to 4
    decimals, no value empty."""
    if value is None:
        return ""
    if name == "test_cr":
        return f"{value:g}"
    if isinstance(value, float):
        return f"{value:.4g}" if name.endswith("_p") else f"{value:.4f}"
    return value


def _write_csv(path: Path, records: list) -> None:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(type(records[0]).__dataclass_fields__)
        for record in records:
            writer.writerow([_cell(k, v) for k, v in asdict(record).items()])


TABLES = ("results.csv", "results.json", "predictions.csv", "findings.csv", "saliency.csv")


def write_tables(root: Path, rows: list[Row], results: list[FoldResult], meta: dict,
                 saliency: list | None = None, findings: list[FindingRow] | None = None,
                 finding_of: Mapping[str, str | None] | None = None,
                 figures: Sequence[Path] = ()) -> list[Path]:
    """RESULTS/results.csv and results.json (the rows and the run's parameters), and
    predictions.csv (every out-of-fold probability, with the breast's finding when known);
    saliency.csv when Grad-CAM was scored; findings.csv with the per-finding rows (results.json
    holds them too, or `findings_note` saying why there are none). results.json's `files` names
    every file of the run, `figures` (already drawn) included, so that a reader tells them from
    files another run left. Returns the paths written."""
    import csv

    root.mkdir(parents=True, exist_ok=True)
    finding_of = finding_of or {}
    written = [root / "results.csv", root / "predictions.csv",
               *([root / "findings.csv"] if findings else []),
               *([root / "saliency.csv"] if saliency else []), root / "results.json"]
    _write_csv(root / "results.csv", rows)
    if findings:
        _write_csv(root / "findings.csv", findings)
    folds = {r.model: {} for r in results}
    for r in results:
        folds[r.model][str(r.fold)] = {"best_epoch": r.best_epoch,
                                       "validation_auroc": r.validation_auroc,
                                       "threshold": r.threshold}
    document = {"meta": meta, "rows": [asdict(r) for r in rows], "folds": folds,
                "saliency": [asdict(r) for r in saliency or []],
                "findings": [asdict(r) for r in findings or []],
                "findings_note": findings_note(findings or [], finding_of),
                "files": sorted(p.name for p in (*written, *figures))}
    if saliency:
        with open(root / "saliency.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, list(asdict(saliency[0])))
            writer.writeheader()
            writer.writerows(asdict(r) for r in saliency)
    with open(root / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("model", "fold", "breast", "malignant", "finding", "test_cr",
                         "probability"))
        for r in results:
            for cr, probabilities in r.probabilities.items():
                for key, label, value in zip(r.keys, r.labels, probabilities, strict=True):
                    writer.writerow((r.model, r.fold, key, label, finding_of.get(key) or "", cr,
                                     repr(value)))
    (root / "results.json").write_text(json.dumps(document, indent=1, default=str))
    return written


def remove_stale(root: Path, names: Sequence[str], written: Sequence[Path]) -> list[str]:
    """Remove the files of `names` in `root` that this run did not write (an earlier run's
    saliency.csv or fig4_augment.png would pass for this run's); return the names removed."""
    stale = [name for name in names
             if (root / name).is_file() and root / name not in set(written)]
    for name in stale:
        (root / name).unlink()
    return stale
