"""First-order priors: a linear model of a game near an operating point, from one backward pass.

The engine treats float masks as gates (a gate g scales a head's output between its ablated value,
g = 0, and its present value, g = 1), so d v / d g_i at a coalition is the first-order change of the
value when player i leaves: the gradient criterion of Michel et al. and attribution patching
(Kramar et al.) under the game's own ablation. As a model of the game it reads
    v(S) ~ v(base) + sum_i g_i (1[i in S] - base_i),
a linear game whose weighted Banzhaf (and Shapley) value is exactly g. The weighted_banzhaf
estimator takes it as `prior=` (shrinkage target / control variate).
"""

from __future__ import annotations

import numpy as np
import torch

from probes.errors import ProbeError
from probes.game import Game


def gate_gradient_prior(game: Game, base: np.ndarray | None = None) -> np.ndarray:
    """d v / d gate for every player at `base` (default: every player present), in game units.

    Needs a game built by model_game or objective_game (they carry `gate_value`).
    """
    gate_value = game.gate_value
    if gate_value is None:
        raise ProbeError("a gradient prior needs a model game (probes.model_game or probes.objective.objective_game), "
                         "whose value can be differentiated with respect to float gates; this game has no gate_value")
    n = game.n_players
    point = np.ones(n) if base is None else np.asarray(base, dtype=float)
    if point.shape != (n,):
        raise ProbeError(f"base must be one gate value per player ({n}), got shape {point.shape}")
    gates = torch.tensor(point, dtype=torch.float32).unsqueeze(0).requires_grad_(True)
    value = gate_value(gates)
    (grad,) = torch.autograd.grad(value, gates)
    return grad[0].detach().double().cpu().numpy()
