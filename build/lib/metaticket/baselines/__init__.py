"""Supervised baselines on the supermask core: dense training, edge-popup and IteRand."""
