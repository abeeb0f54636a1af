"""Offline experiments: metrics with confidence intervals (more arrives with the experiments issue)."""
