"""Datasets for the experiments: the paper's preprocessing (more arrives with the experiments issue)."""
