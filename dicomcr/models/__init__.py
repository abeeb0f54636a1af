"""Classifiers of the paper and the model file format (training arrives with the experiments issue)."""
