"""Saliency explainers (CAM family, attention family, TIBAV) and the shared attention scores."""
