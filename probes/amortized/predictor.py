"""ValuePredictor: features of a batch -> head values (and layer values), without playing the game.

    predictor = ValuePredictor(seed=0).fit(dataset)          # dataset: probes.amortized.ValueDataset
    hv = predictor.predict(head_features(model, batch))      # HeadValues, estimator "amortized"
    layers = predictor.predict_layers(feats)                 # Values over "L{l}.attn"
    predictor.save("predictor/"); ValuePredictor.load("predictor/")

Two small MLPs (torch, full-batch Adam, fixed epochs, weights drawn from a seeded generator, so the
same data and seed give the same weights). The head model reads HeadFeatures.matrix; the layer
model reads HeadFeatures.layer_matrix(). Without a layer model, layer values are the sums of the
predicted head values of each layer.

Scale: metrics differ between tasks (log-prob, logit difference, probability mass), so each
batch's targets are divided by their own RMS before training and the model learns the shape of
the value profile. To return metric units, a prediction is multiplied by the batch's value scale
(RMS of its integrated gradients, HeadFeatures.value_scale) times the geometric mean over training
batches of (RMS of values / value scale).

On disk: config.json (settings, feature names, scale ratios) + weights.safetensors.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from probes.amortized.features import HEAD_FEATURES, LAYER_FEATURES, HeadFeatures
from probes.errors import ProbeError
from probes.head_values import HeadValues
from probes.values import Values
from surgery.atomic_io import atomic_path, write_json_atomic

FORMAT = "model-surgery.value-predictor"
VERSION = 2  # 2: integrated-gradients features; scale from them


class _MLP(torch.nn.Module):
    """Standardise inputs, then Linear-tanh layers; weights drawn from the given generator."""

    def __init__(self, n_in: int, hidden: Sequence[int], generator: torch.Generator):
        super().__init__()
        sizes = [n_in, *hidden, 1]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b, dtype=torch.float64) for a, b in zip(sizes, sizes[1:]))
        with torch.no_grad():
            for layer in self.layers:
                bound = 1.0 / np.sqrt(layer.in_features)
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
                layer.bias.zero_()
        self.register_buffer("x_mean", torch.zeros(n_in, dtype=torch.float64))
        self.register_buffer("x_std", torch.ones(n_in, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.x_mean) / self.x_std
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.tanh(h)
        return h.squeeze(-1)


class ValuePredictor:
    """Predict Shapley head values (and layer values) from HeadFeatures.

    hidden: widths of the hidden layers; epochs/lr/weight_decay: full-batch Adam; loss: "huber"
    (robust to the estimator's noisy targets) or "mse"; seed: weight initialisation.
    """

    # epochs and weight_decay: the best of a small grid on held-out tasks of SmolLM2 (each task
    # predicted by a predictor trained on the others; benchmarks/amortized.py): longer, less
    # regularised training fits the training tasks' idiosyncrasies.
    def __init__(self, hidden: Sequence[int] = (32, 32), epochs: int = 200, lr: float = 1e-2,
                 weight_decay: float = 0.1, loss: str = "huber", seed: int = 0):
        if loss not in ("huber", "mse"):
            raise ProbeError(f"loss must be 'huber' or 'mse', got {loss!r}")
        self.hidden = tuple(int(h) for h in hidden)
        self.epochs, self.lr, self.weight_decay, self.loss, self.seed = int(epochs), float(lr), float(weight_decay), loss, seed
        self.head_model: _MLP | None = None
        self.layer_model: _MLP | None = None
        self.head_ratio = 1.0   # values RMS / value scale (geometric mean over training batches)
        self.layer_ratio = 1.0
        self.trained_on: list[str] = []

    # ------------------------------------------------------------------ training
    def fit(self, dataset) -> ValuePredictor:
        """Train on a ValueDataset (head values always; layer values where the dataset has them)."""
        examples = list(dataset.examples if hasattr(dataset, "examples") else dataset)
        if not examples:
            raise ProbeError("cannot fit a ValuePredictor on an empty dataset")
        self.fit_heads([e.features for e in examples], [e.head_values for e in examples])
        with_layers = [e for e in examples if e.layer_values is not None]
        if with_layers:
            self.fit_layers([e.features for e in with_layers], [e.layer_values for e in with_layers])
        self.trained_on = [e.name for e in examples]
        return self

    def fit_heads(self, features: Sequence[HeadFeatures], values: Sequence[np.ndarray]) -> ValuePredictor:
        x = np.concatenate([f.matrix for f in features])
        y, ratios = _normalised_targets(values, [f.value_scale for f in features])
        self.head_model = self._train(x, y, salt=0)
        self.head_ratio = float(np.exp(np.mean(np.log(ratios))))
        return self

    def fit_layers(self, features: Sequence[HeadFeatures], values: Sequence[np.ndarray]) -> ValuePredictor:
        x = np.concatenate([f.layer_matrix() for f in features])
        y, ratios = _normalised_targets(values, [f.value_scale for f in features])
        self.layer_model = self._train(x, y, salt=1)
        self.layer_ratio = float(np.exp(np.mean(np.log(ratios))))
        return self

    def _train(self, x: np.ndarray, y: np.ndarray, salt: int) -> _MLP:
        generator = torch.Generator().manual_seed(int(self.seed) * 2 + salt)
        model = _MLP(x.shape[1], self.hidden, generator)
        xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
        model.x_mean.copy_(xt.mean(0))
        model.x_std.copy_(xt.std(0).clamp_min(1e-6))  # a constant feature stays finite (and useless)
        optimiser = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        criterion = torch.nn.HuberLoss(delta=1.0) if self.loss == "huber" else torch.nn.MSELoss()
        for _ in range(self.epochs):
            optimiser.zero_grad()
            loss = criterion(model(xt), yt)
            loss.backward()
            optimiser.step()
        return model.eval()

    # ------------------------------------------------------------------ prediction
    def predict_array(self, features: HeadFeatures) -> np.ndarray:
        """Predicted head values in metric units, in the order of features.names."""
        self._check(self.head_model, "head", features.feature_names, HEAD_FEATURES)
        with torch.no_grad():
            shape = self.head_model(torch.as_tensor(features.matrix, dtype=torch.float64)).numpy()
        return shape * features.value_scale * self.head_ratio

    def predict(self, features: HeadFeatures) -> HeadValues:
        means = self.predict_array(features)
        heads_per_layer = np.bincount(features.layers, minlength=features.n_layers).tolist()
        values = Values(names=list(features.names), means=means, stderrs=np.full(len(means), np.nan),
                        n_evaluations=0, estimator="amortized", settings=self.config(),
                        full_value=features.full_value)
        return HeadValues.from_values(values, heads_per_layer)

    def predict_layers(self, features: HeadFeatures) -> Values:
        """Values of each layer's attention (players "L{l}.attn"): the layer model, else head sums."""
        if self.layer_model is None:
            heads = self.predict_array(features)
            means = np.array([heads[features.layers == layer].sum() for layer in range(features.n_layers)])
        else:
            self._check(self.layer_model, "layer", LAYER_FEATURES, LAYER_FEATURES)
            with torch.no_grad():
                shape = self.layer_model(torch.as_tensor(features.layer_matrix(), dtype=torch.float64)).numpy()
            means = shape * features.value_scale * self.layer_ratio
        return Values(names=[f"L{layer}.attn" for layer in range(features.n_layers)], means=means,
                      stderrs=np.full(len(means), np.nan), n_evaluations=0, estimator="amortized",
                      settings=self.config(), full_value=features.full_value)

    def _check(self, model, which: str, got: Sequence[str], expected: Sequence[str]) -> None:
        if model is None:
            raise ProbeError(f"this ValuePredictor has no {which} model; fit it first (fit / fit_{which}s)")
        if tuple(got) != tuple(expected):
            raise ProbeError(f"features {list(got)} do not match the {which} model's {list(expected)}")

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "hidden": list(self.hidden), "epochs": self.epochs,
                "lr": self.lr, "weight_decay": self.weight_decay, "loss": self.loss, "seed": self.seed,
                "head_features": list(HEAD_FEATURES), "layer_features": list(LAYER_FEATURES),
                "has_head_model": self.head_model is not None, "has_layer_model": self.layer_model is not None,
                "head_ratio": self.head_ratio, "layer_ratio": self.layer_ratio, "trained_on": list(self.trained_on)}

    def save(self, directory: str | PathLike) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for prefix, model in (("head", self.head_model), ("layer", self.layer_model)):
            if model is not None:
                tensors.update({f"{prefix}.{k}": v.contiguous() for k, v in model.state_dict().items()})
        with atomic_path(directory / "weights.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json_atomic(directory / "config.json", self.config())
        return directory

    @classmethod
    def load(cls, directory: str | PathLike) -> ValuePredictor:
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            config = json.loads((directory / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ProbeError(f"{directory}: no readable config.json of a ValuePredictor ({error})") from error
        if config.get("format") != FORMAT or config.get("version") != VERSION:
            raise ProbeError(f"{directory}/config.json is not a ValuePredictor this version reads "
                             f"(format={config.get('format')!r}, version={config.get('version')!r}, this version writes "
                             f"{VERSION}): retrain it with this version (features changed: integrated gradients)")
        if config["head_features"] != list(HEAD_FEATURES) or config["layer_features"] != list(LAYER_FEATURES):
            raise ProbeError(f"{directory}: trained on other features ({config['head_features']}); retrain it")
        out = cls(config["hidden"], config["epochs"], config["lr"], config["weight_decay"], config["loss"], config["seed"])
        out.head_ratio, out.layer_ratio = config["head_ratio"], config["layer_ratio"]
        out.trained_on = list(config.get("trained_on", []))
        tensors = load_file(str(directory / "weights.safetensors"))
        for prefix, n_in, present in (("head", len(HEAD_FEATURES), config["has_head_model"]),
                                      ("layer", len(LAYER_FEATURES), config["has_layer_model"])):
            if present:
                model = _MLP(n_in, out.hidden, torch.Generator().manual_seed(0))
                model.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
                setattr(out, f"{prefix}_model", model.eval())
        return out


def _normalised_targets(values: Sequence[np.ndarray], scales: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Each batch's values divided by their RMS; and per batch RMS(values) / attribution scale."""
    parts, ratios = [], []
    for v, scale in zip(values, scales):
        v = np.asarray(v, dtype=float)
        rms = float(np.sqrt(np.mean(v ** 2)))
        rms = rms if rms > 0 else 1.0
        parts.append(v / rms)
        ratios.append(rms / scale)
    return np.concatenate(parts), np.asarray(ratios)
