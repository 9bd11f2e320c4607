"""`surgery plan heads --removal` and `surgery prune --dtype`: compensated, dtype-aware exports from the CLI."""

import json

import numpy as np
import torch
from helpers import run_cli
from safetensors import safe_open

import surgery
from probes.model_game import model_digest
from probes.values import values_from_arrays


def write_values(tiny_dir, path, ablation):
    loaded = surgery.load(tiny_dir)
    values = values_from_arrays(loaded.components.heads, np.arange(18.0), estimator="given",
                                fingerprint={"model": str(tiny_dir), "model_digest": model_digest(loaded),
                                             "ablation": ablation})
    values.save(path)
    return path


def test_compensated_plan_exports_in_bf16_with_its_removal_recorded(tiny_dir, tmp_path, capsys):
    values = write_values(tiny_dir, tmp_path / "values.json", "mean")
    code, out, err = run_cli(capsys, "plan", "heads", "--model", tiny_dir, "--values", values, "--k", "6",
                             "--out", tmp_path / "plan.json")
    assert code == 0, err
    assert "mean_compensated removal" in out
    code, out, err = run_cli(capsys, "prune", "--model", tiny_dir, "--plan", tmp_path / "plan.json", "--dtype", "bf16",
                             "--calibration-n", "4", "--seq-len", "32", "--out", tmp_path / "model")
    assert code == 0, err
    assert "(bfloat16)" in out
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16" and manifest["removal"]["mode"] == "mean_compensated"
    assert manifest["removal"]["calibration"]["rows"] == 4
    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    reloaded = surgery.load(str(tmp_path / "model"), dtype=torch.bfloat16)
    assert reloaded.components.n_heads == [1, 5, 6]  # 6 lowest heads, one kept in L0 (min_per_layer)


def test_compensated_removal_of_zero_ablation_values_is_refused_in_one_line(tiny_dir, tmp_path, capsys):
    values = write_values(tiny_dir, tmp_path / "values.json", "zero")
    code, out, err = run_cli(capsys, "plan", "heads", "--model", tiny_dir, "--values", values, "--k", "2",
                             "--removal", "mean_compensated", "--out", tmp_path / "plan.json")
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.startswith("surgery:")]
    assert len(lines) == 1 and "'zero' ablation" in lines[0] and "'mean_compensated' removal" in lines[0]
    assert not (tmp_path / "plan.json").exists()
