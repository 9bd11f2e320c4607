"""Runs shapiq's approximators on the benchmark games in another interpreter (shapiq >= 1.5 needs
Python >= 3.12; the project runs 3.11). Called by benchmarks/estimators.py:

    PEER_PYTHON benchmarks/shapiq_peer_worker.py request.json response.json

request.json: {"games": [{"name", "n_players", "factory", "kwargs"} or {"name", "n_players", "table"}],
"approximators": [{"name", "class", "settings", "max_players"}], "budgets": {game: [..]}, "seeds": [..]}.
A game is rebuilt from its factory in probes/synthetic_games.py (pure numpy; the probes package's
__init__, which needs torch, is bypassed), or read from a table of all 2^n values (.npy, index =
the coalition as a bit mask) for small games whose factory needs more of probes. Only estimates
come back: the caller scores them against the truth, so both interpreters use one scoring code.
"""

from __future__ import annotations

import json
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _synthetic_games():
    package = types.ModuleType("probes")
    package.__path__ = [str(ROOT / "probes")]  # import submodules without running probes/__init__
    sys.modules.setdefault("probes", package)
    import probes.synthetic_games as synthetic

    return synthetic


def build_game(spec: dict):
    n = spec["n_players"]
    if "table" in spec:
        table = np.load(spec["table"])
        powers = 1 << np.arange(n, dtype=np.int64)
        return lambda coalitions: table[np.asarray(coalitions, dtype=bool).astype(np.int64) @ powers]
    known = getattr(_synthetic_games(), spec["factory"])(**spec["kwargs"])
    return known.game.value_function


def run_one(value_function, n: int, approximator: dict, budget: int, seed: int) -> dict:
    import shapiq

    calls = {"rows": 0}

    def game(coalitions):
        coalitions = np.asarray(coalitions, dtype=bool).reshape(-1, n)  # some call with one coalition
        calls["rows"] += len(coalitions)
        return np.asarray(value_function(coalitions), dtype=float).reshape(-1)

    settings = dict(approximator.get("settings", {}))
    start = time.perf_counter()
    try:
        model = getattr(shapiq, approximator["class"])(n=n, random_state=seed, **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = model.approximate(budget, game)
        estimate = [float(result[(i,)]) for i in range(n)]
        out = {"estimate": estimate, "evaluations": calls["rows"]}
    except Exception as error:  # reported per run, the benchmark goes on with the others
        out = {"error": f"{type(error).__name__}: {error}"[:500]}
    out["seconds"] = time.perf_counter() - start
    return out


def main() -> None:
    import shapiq

    request = json.loads(Path(sys.argv[1]).read_text())
    response = {"shapiq_version": shapiq.__version__, "python": sys.version.split()[0], "results": {}}
    for spec in request["games"]:
        value_function = build_game(spec)
        n = spec["n_players"]
        table = response["results"].setdefault(spec["name"], {})
        for approximator in request["approximators"]:
            if n > approximator.get("max_players", 10**9):
                continue
            rows = table.setdefault(approximator["name"], {})
            too_slow = False
            for budget in request["budgets"][spec["name"]]:
                if too_slow:  # budgets ascend: a larger one would take longer still
                    rows[str(budget)] = [{"error": f"skipped: a smaller budget took over {request['max_seconds']} s"}]
                    continue
                rows[str(budget)] = [run_one(value_function, n, approximator, budget, seed) for seed in request["seeds"]]
                too_slow = max(run["seconds"] for run in rows[str(budget)]) > request["max_seconds"]
            print(f"{spec['name']:22s} {approximator['name']}", file=sys.stderr, flush=True)
    Path(sys.argv[2]).write_text(json.dumps(response))


if __name__ == "__main__":
    main()
