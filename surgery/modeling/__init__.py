"""Modeling code shipped inside exports (see pruned_attention.py); importable by model-surgery too."""
