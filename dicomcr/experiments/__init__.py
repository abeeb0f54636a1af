"""Offline experiments: metrics with CIs, splits, training, cross-validation, figures, report, saliency."""
