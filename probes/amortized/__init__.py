"""Amortized values: predict head and layer values from one forward/backward pass, and reuse stored
coalition evaluations as a control variate. See features.py, dataset.py, predictor.py, surrogate.py."""

from probes.amortized.dataset import (ValueDataset, ValueExample, build_dataset, build_example, estimate_head_values,
                                      estimate_layer_values, leave_one_out, task_batches)
from probes.amortized.features import HEAD_FEATURES, LAYER_FEATURES, HeadFeatures, head_features
from probes.amortized.predictor import ValuePredictor
from probes.amortized.surrogate import CoalitionSurrogate, control_variate_shapley, residual_game

__all__ = [
    "HEAD_FEATURES", "LAYER_FEATURES", "HeadFeatures", "head_features", "ValueDataset", "ValueExample",
    "build_dataset", "build_example", "estimate_head_values", "estimate_layer_values", "leave_one_out",
    "task_batches", "ValuePredictor", "CoalitionSurrogate", "control_variate_shapley", "residual_game",
]
