"""Explaining a classifier: Grad-CAM on its input, and the figure of maps over the views.

Below experiments and inference (both use it), above nothing of ours but torch and captum.
"""
