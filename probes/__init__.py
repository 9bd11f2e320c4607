"""probes: value the components. Games over model parts, Shapley estimators, tasks and metrics."""

from probes.errors import (BudgetTooSmallError, FingerprintMismatchError, InvalidGameOutputError,
                           MalformedValuesFileError, ProbeError, StoreCorruptError, TooManyPlayersError)
from probes.amortized import (CoalitionSurrogate, HeadFeatures, ValueDataset, ValuePredictor, build_dataset,
                              control_variate_shapley, head_features)
from probes.estimators import DEFAULT_ESTIMATOR, ESTIMATORS, estimate, get_estimator, register_estimator
from probes.clustering import cluster_heads, plot_clusters, specificity
from probes.game import Game
from probes.head_values import HeadValues, head_values
from probes.layer_values import layer_values
from probes.metrics import (METRICS, Accuracy, KLDivergence, LogitDiff, LogProb, Loss, Metric, MetricError,
                            PairAccuracy, Perplexity, ProbMass, make_metric)
from probes.model_game import model_game
from probes.objective import Objective, keep_model_objective, objective_game, task_objective
from probes.priors import gate_gradient_prior
from probes.stopping import MaxEvaluations, RankStable, StandardErrorBelow, StoppingCriterion
from probes.store import CoalitionStore
from probes.tasks import BUILTIN_TASKS, Task, TaskBatch, TaskError, get_task
from probes.values import Values
from probes.estimators.owen_tree import TreeValues, owen_tree
from probes.estimators.metagame import gradient_base, interaction_matrix, meta_attribution
from probes.interaction_matrix import InteractionMatrix
from probes.scar import ScarRewards, TextReward, dense_rewards, scar_rewards

__all__ = [
    "BudgetTooSmallError", "FingerprintMismatchError", "InvalidGameOutputError", "MalformedValuesFileError",
    "ProbeError", "StoreCorruptError", "TooManyPlayersError", "DEFAULT_ESTIMATOR", "ESTIMATORS", "estimate",
    "get_estimator", "Game", "METRICS", "Accuracy", "KLDivergence", "LogitDiff", "LogProb", "Loss", "Metric",
    "MetricError", "PairAccuracy", "Perplexity", "ProbMass", "make_metric", "model_game", "MaxEvaluations",
    "RankStable", "StandardErrorBelow", "StoppingCriterion", "CoalitionStore", "BUILTIN_TASKS", "Task",
    "TaskBatch", "TaskError", "get_task", "Values", "cluster_heads", "plot_clusters", "specificity", "HeadValues", "head_values",
    "layer_values", "CoalitionSurrogate", "HeadFeatures", "ValueDataset", "ValuePredictor", "build_dataset",
    "control_variate_shapley", "head_features", "Objective", "keep_model_objective", "objective_game",
    "task_objective", "gate_gradient_prior", "register_estimator",
    "TreeValues", "owen_tree", "gradient_base", "interaction_matrix", "meta_attribution", "InteractionMatrix",
    "ScarRewards", "TextReward", "dense_rewards", "scar_rewards",
]
