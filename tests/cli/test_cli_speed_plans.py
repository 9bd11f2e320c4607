"""`surgery plan layers --criterion`, `plan width`, `plan target --target-speedup/--target-params` on a
tiny saved model: plans that prune, deterministic target plans given a timing table, errors before work."""

import json

import pytest

from helpers import run_cli

from pruning.plan import PruningPlan

CAL = ("--cal-n", "4", "--cal-seq-len", "32")


def test_layers_by_sleb_with_repair_prune_to_a_loadable_export(tiny_dir, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    code, out, err = run_cli(capsys, "plan", "layers", "--model", tiny_dir, "--criterion", "sleb", "--k", "1",
                             "--repair", *CAL, "--out", plan)
    assert code == 0, err
    loaded = PruningPlan.load(plan)
    assert len(loaded.layers) == 1 and loaded.layers != [0] and loaded.layer_repair["method"] == "replaceme_linear"
    assert loaded.provenance[0]["criterion"] == "sleb"
    code, out, err = run_cli(capsys, "prune", "--model", tiny_dir, "--plan", plan, "--out", tmp_path / "export")
    assert code == 0, err


def test_width_plan_from_the_cli(tiny_dir, tmp_path, capsys):
    plan = tmp_path / "width.json"
    code, out, err = run_cli(capsys, "plan", "width", "--model", tiny_dir, "--ratio", "0.25", "--score",
                             "activation_norm", *CAL, "--out", plan)
    assert code == 0, err
    assert all(len(c) == 16 for c in PruningPlan.load(plan).mlp_channels.values())  # 25% of 64


def test_width_plan_with_the_mlp_refit_exports(tiny_dir, tmp_path, capsys):
    plan = tmp_path / "width.json"
    code, out, err = run_cli(capsys, "plan", "width", "--model", tiny_dir, "--ratio", "0.25", "--mlp-refit",
                             "--ridge", "0.3", *CAL, "--out", plan)
    assert code == 0, err
    assert PruningPlan.load(plan).mlp_repair == {"method": "least_squares_refit", "ridge": 0.3}
    code, out, err = run_cli(capsys, "prune", "--model", tiny_dir, "--plan", plan, "--out", tmp_path / "export")
    assert code == 0, err
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert set(manifest["mlp_width"]["repair"]["layers"]) == {"0", "1", "2"}


def test_target_plan_with_the_mlp_refit_scores_candidates_on_held_out_rows(tiny_dir, tmp_path, capsys):
    table = {"other_ms": 2.0, "layers": [{"block_ms": 10.0, "mlp_ms": 6.0}] * 3}
    measured = tmp_path / "measured.json"
    code, out, err = run_cli(capsys, "plan", "layers", "--model", tiny_dir, "--target-speedup", "1.01", "--criterion",
                             "block_influence", "--no-repair", *CAL, "--save-timing", measured, "--out", tmp_path / "l.json")
    assert code == 0, err
    fixed = tmp_path / "timing.json"
    fixed.write_text(json.dumps({**json.loads(measured.read_text()), **table}))
    code, out, err = run_cli(capsys, "plan", "target", "--model", tiny_dir, "--target-speedup", "1.2", "--criterion",
                             "sleb", "--width-ratios", "0.25,0.4", "--mlp-refit", "--held-out-rows", "1", *CAL,
                             "--timing", fixed, "--out", tmp_path / "t.json")
    assert code == 0, err
    plan = PruningPlan.load(tmp_path / "t.json")
    record = plan.provenance[0]
    assert record["mlp_repair"] is True and record["held_out_rows"] == 1
    assert plan.mlp_channels and plan.mlp_repair["method"] == "least_squares_refit"


def test_target_plans_are_identical_given_a_timing_table(tiny_dir, tmp_path, capsys):
    measured = tmp_path / "measured.json"
    code, out, err = run_cli(capsys, "plan", "layers", "--model", tiny_dir, "--target-speedup", "1.01", "--criterion",
                             "block_influence", "--no-repair", *CAL, "--save-timing", measured, "--out", tmp_path / "l.json")
    assert code == 0, err
    # A tiny model's time is mostly outside its blocks: give the blocks fixed, dominant times.
    table = json.loads(measured.read_text())
    table.update(other_ms=2.0, layers=[{"block_ms": 10.0, "mlp_ms": 6.0}] * 3)
    fixed = tmp_path / "timing.json"
    fixed.write_text(json.dumps(table))
    plans = [tmp_path / "a.json", tmp_path / "b.json"]
    for plan in plans:
        code, out, err = run_cli(capsys, "plan", "target", "--model", tiny_dir, "--target-speedup", "1.3",
                                 "--criterion", "sleb", *CAL, "--timing", fixed, "--out", plan)
        assert code == 0, err
    assert json.loads(plans[0].read_text()) == json.loads(plans[1].read_text())
    assert "chosen:" in out and PruningPlan.load(plans[1]).provenance[0]["chosen"]["predicted"] >= 1.3


def test_bad_targets_fail_before_the_model_loads(tmp_path, capsys):
    missing = tmp_path / "no-such-model"  # never loaded: the flags are refused first
    for argv, message in [
        (("target", "--target-speedup", "1.0", "--criterion", "sleb"), "above 1"),
        (("target", "--target-speedup", "1.2", "--target-params", "10M", "--criterion", "sleb"), "one target"),
        (("target", "--target-speedup", "1.2", "--criterion", "sleb", "--width-ratios", "0,1"), "outside [0, 1)"),
        (("target", "--target-speedup", "1.2"), "--criterion sleb"),
        (("width", "--ratio", "1.5"), "outside [0, 1)"),
        (("layers", "--criterion", "banzhaf", "--k", "1"), "--budget"),
        (("target", "--target-speedup", "1.2", "--criterion", "sleb", "--cal-n", "4", "--held-out-rows", "4"),
         "--held-out-rows 4 must lie in 0..3"),
        (("heads", "--mlp-refit", "--values", "v.json", "--fraction", "0.1"), "--mlp-refit does not apply"),
        (("heads", "--ratio", "0.2", "--values", "v.json", "--fraction", "0.1"), "--ratio does not apply"),
    ]:
        code, out, err = run_cli(capsys, "plan", *argv, "--model", missing, "--out", tmp_path / "p.json")
        assert code == 2 and message in err, (argv, err)


def test_an_unreachable_speedup_names_the_most_reachable(tiny_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "plan", "target", "--model", tiny_dir, "--target-speedup", "50", "--criterion",
                             "sleb", *CAL, "--out", tmp_path / "p.json")
    assert code == 2 and "cannot reach 50.00x without removing every layer; the most is" in err


@pytest.fixture
def fixed_table(tiny_dir, tmp_path, capsys):
    """A timing table of the tiny model (saved by `plan layers --save-timing`) with fixed times: 3 blocks of
    10 ms (MLP 6 ms) and 2 ms outside, so plans do not depend on this machine's clock."""
    table = tmp_path / "timing.json"
    code, out, err = run_cli(capsys, "plan", "layers", "--model", tiny_dir, "--target-speedup", "1.01", "--criterion",
                             "block_influence", "--no-repair", *CAL, "--save-timing", table, "--out", tmp_path / "l.json")
    assert code == 0, err
    fixed = json.loads(table.read_text())
    fixed.update(other_ms=2.0, layers=[{"block_ms": 10.0, "mlp_ms": 6.0}] * 3)
    table.write_text(json.dumps(fixed))
    return table


def test_run_with_a_target_speedup_drops_layers_and_reports_them(tiny_dir, fixed_table, tmp_path, capsys):
    table = fixed_table
    code, out, err = run_cli(capsys, "run", "--model", tiny_dir, "--target-speedup", "1.3", "--timing", table,
                             "--cal-n", "4", "--seq-len", "32", "--eval-n", "2", "--out", tmp_path / "run")
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    plan = PruningPlan.load(tmp_path / "run" / "plan.json")
    assert report["target_speedup"] == 1.3 and report["layers_removed"] == plan.layers
    assert plan.provenance[0]["chosen"]["predicted"] >= 1.3
    code, out, err = run_cli(capsys, "run", "--model", tmp_path / "missing", "--target-speedup", "0.9",
                             "--out", tmp_path / "run2")
    assert code == 2 and "above 1" in err


def test_run_with_a_target_refits_the_mlp_and_scores_on_held_out_rows(tiny_dir, fixed_table, tmp_path, capsys):
    table = fixed_table
    code, out, err = run_cli(capsys, "run", "--model", tiny_dir, "--target-speedup", "1.1", "--timing", table,
                             "--mlp-refit", "--held-out-rows", "1", "--cal-n", "4", "--seq-len", "32", "--eval-n", "2",
                             "--out", tmp_path / "run")
    assert code == 0, err
    record = PruningPlan.load(tmp_path / "run" / "plan.json").provenance[0]
    assert record["mlp_repair"] is True and record["held_out_rows"] == 1
    assert record["width_ratios"] == "iso"
    width_only = [c for c in record["candidates"] if not c["layers_dropped"]]
    assert width_only[0]["width_ratio"] == pytest.approx(0.17)  # 32 / (32 - 18 r) >= 1.1 first at r = 0.17
    assert "refitted" in out


@pytest.mark.parametrize("argv, message", [
    (("--mlp-refit",), "shape a --target-speedup"),
    (("--stream-refit",), "shape a --target-speedup"),
    (("--target-speedup", "1.2", "--cal-n", "4", "--held-out-rows", "4"), "--held-out-rows 4 must lie in 0..3"),
])
def test_run_target_flags_are_checked_before_the_model_loads(tmp_path, capsys, argv, message):
    code, out, err = run_cli(capsys, "run", "--model", tmp_path / "missing", *argv, "--out", tmp_path / "run")
    assert code == 2 and message in err, err


def test_run_with_a_target_and_stream_refit_fits_the_export_on_the_repair_rows(tiny_dir, fixed_table, tmp_path,
                                                                             capsys):
    code, out, err = run_cli(capsys, "run", "--model", tiny_dir, "--target-speedup", "1.3", "--timing", fixed_table,
                             "--stream-refit", "--repair-n", "20", "--cal-n", "4", "--seq-len", "32", "--eval-n", "2",
                             "--out", tmp_path / "run")
    assert code == 0, err
    assert PruningPlan.load(tmp_path / "run" / "plan.json").stream_repair["method"] == "dense_stream_refit"
    manifest = json.loads((tmp_path / "run" / "model" / "manifest.json").read_text())
    assert manifest["stream_repair"]["calibration_tokens"] == 24 * 32  # --cal-n + --repair-n rows
    code, out, err = run_cli(capsys, "run", "--model", tiny_dir, "--target-speedup", "1.3", "--timing", fixed_table,
                             "--stream-refit", "--repair-n", "2", "--cal-n", "4", "--seq-len", "32",
                             "--out", tmp_path / "run2")
    assert code == 2 and "raise --repair-n to at least" in err, err
    assert not (tmp_path / "run2" / "plan.json").exists()  # refused before the search
