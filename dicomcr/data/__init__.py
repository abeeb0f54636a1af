"""Datasets for the experiments: readers, the paper's preprocessing, the preprocessed-input cache."""
