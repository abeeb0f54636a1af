"""Inference: classification with Grad-CAM saliency, for the node and the saliency command."""
