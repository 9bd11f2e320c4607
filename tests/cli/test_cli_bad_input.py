"""Bad input through the CLI: one line on stderr, a non-zero exit code, nothing overwritten or lost."""

import json

import pytest
from helpers import run_cli

import surgery
from pruning.plan import PruningPlan
from pruning.policies import head_plan
from probes.values import values_from_arrays


def one_line_error(code, err):
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l.startswith("surgery:")]
    assert len(lines) == 1 and lines[0].startswith("surgery: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def made(tiny_dir, tmp_path_factory):
    """A valid head values file and plan for the tiny model."""
    d = tmp_path_factory.mktemp("made")
    loaded = surgery.load(tiny_dir)
    from probes.model_game import model_digest
    values = values_from_arrays(loaded.components.heads, list(range(18)), estimator="given",
                                fingerprint={"model": str(tiny_dir), "model_digest": model_digest(loaded)})
    values.save(d / "values.json")
    head_plan(values, loaded, k=2).save(d / "plan.json")
    return d


def test_existing_output_is_not_overwritten_without_force(tiny_dir, made, tmp_path, capsys):
    out = tmp_path / "plan.json"
    out.write_text("precious")
    line = one_line_error(*run_cli(capsys, "plan", "heads", "--model", tiny_dir, "--values", made / "values.json",
                                   "--k", "2", "--out", out)[::2])
    assert "already exists" in line and "--force" in line and out.read_text() == "precious"
    export = tmp_path / "export"
    export.mkdir()
    line = one_line_error(*run_cli(capsys, "prune", "--model", tiny_dir, "--plan", made / "plan.json",
                                   "--out", export)[::2])
    assert "already exists" in line
    # --force replaces only files of ours: the user's "precious" file survives even then
    line = one_line_error(*run_cli(capsys, "plan", "heads", "--model", tiny_dir, "--values", made / "values.json",
                                   "--k", "2", "--out", out, "--force")[::2])
    assert "not written by model-surgery" in line and out.read_text() == "precious"
    ours = tmp_path / "ours.json"
    for k in ("1", "2"):  # the second run replaces the first run's plan
        code, _, err = run_cli(capsys, "plan", "heads", "--model", tiny_dir, "--values", made / "values.json",
                               "--k", k, "--out", ours, "--force")
        assert code == 0, err
    assert len(PruningPlan.load(ours).heads) == 2


@pytest.mark.parametrize("flags, message", [
    (["--fraction", "1.5"], "outside [0, 1]"),
    (["--fraction", "-0.1"], "outside [0, 1]"),
    (["--k", "99"], "outside 0..18"),
    (["--fraction", "0.1", "--k", "2"], "exactly one"),
    (["--k", "18", "--min-per-layer", "0"], "removes every attention head"),
    ([], "exactly one"),
])
def test_bad_ratios_and_counts(tiny_dir, made, tmp_path, capsys, flags, message):
    code, _, err = run_cli(capsys, "plan", "heads", "--model", tiny_dir, "--values", made / "values.json", *flags,
                           "--out", tmp_path / "p.json")
    assert message in one_line_error(code, err)
    assert not (tmp_path / "p.json").exists()


def test_values_and_plans_of_another_model_are_refused(tiny_dir, made, tmp_path, capsys):
    from tiny_models import build
    twin = build("llama", seed=5)
    twin_dir = tmp_path / "twin"
    twin.save_pretrained(twin_dir)
    line = one_line_error(*run_cli(capsys, "plan", "heads", "--model", twin_dir, "--values", made / "values.json",
                                   "--k", "2", "--out", tmp_path / "p.json")[::2])
    assert "another model" in line
    line = one_line_error(*run_cli(capsys, "prune", "--model", twin_dir, "--plan", made / "plan.json",
                                   "--out", tmp_path / "e")[::2])
    assert "another model" in line or "made for" in line


def test_plans_without_values_and_bad_protected_layers(tiny_dir, made, tmp_path, capsys):
    line = one_line_error(*run_cli(capsys, "plan", "heads", "--model", tiny_dir, "--k", "1",
                                   "--out", tmp_path / "p.json")[::2])
    assert "needs --values" in line
    line = one_line_error(*run_cli(capsys, "plan", "layers", "--model", tiny_dir, "--values", made / "values.json",
                                   "--k", "1", "--protect", "7", "--out", tmp_path / "p.json")[::2])
    assert "--protect" in line


@pytest.mark.parametrize("kind, flags, message", [
    ("sparsity", ["--k", "2"], "--k does not apply to `plan sparsity`"),
    ("sparsity", ["--fraction", "0.3"], "--target"),
    ("sparsity", ["--protect", "0"], "--protect does not apply"),
    ("heads", ["--k", "2", "--target", "0.3"], "--target does not apply to `plan heads`"),
    ("layers", ["--k", "1", "--harmful", "0.9"], "--harmful does not apply to `plan layers`"),
])
def test_flags_of_another_plan_kind_are_refused_not_ignored(tiny_dir, made, tmp_path, capsys, kind, flags, message):
    code, _, err = run_cli(capsys, "plan", kind, "--model", tiny_dir, "--values", made / "values.json", *flags,
                           "--out", tmp_path / "p.json")
    assert message in one_line_error(code, err)
    assert not (tmp_path / "p.json").exists()


def test_unknown_model_and_task(tmp_path, capsys, tiny_dir):
    line = one_line_error(*run_cli(capsys, "eval", "--model", tmp_path / "nowhere")[::2])
    assert "nowhere" in line
    line = one_line_error(*run_cli(capsys, "values", "heads", "--model", tiny_dir, "--task", "sentiment",
                                   "--out", tmp_path / "v.json")[::2])
    assert "unknown task" in line and "induction" in line
    line = one_line_error(*run_cli(capsys, "values", "heads", "--model", tiny_dir, "--out", tmp_path / "v.json")[::2])
    assert "--task" in line


def test_corrupt_export_is_detected(tiny_dir, made, tmp_path, capsys):
    export = tmp_path / "export"
    assert run_cli(capsys, "prune", "--model", tiny_dir, "--plan", made / "plan.json", "--out", export)[0] == 0
    weights = next(export.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated copy
    line = one_line_error(*run_cli(capsys, "eval", "--model", export, "--task", "factual", "--n", "2")[::2])
    assert weights.name in line


# ----------------------------------------------------------------------------- fuzzed file inputs
MALFORMED = [
    b"", b"{", b"[]", b"null", b"42", b'"text"', b"\xff\xfe\x00garbage", b'{"format": "something else"}',
    b'{"names": "L0.H0", "means": 3}', b'{"names": ["L0.H0"], "means": ["x"], "stderrs": []}',
    b'{"format": "model-surgery.pruning-plan", "version": 1}',
    b'{"format": "model-surgery.pruning-plan", "version": 1, "model": {"n_layers": "three"}}',
    b'{"format": "model-surgery.pruning-plan", "version": 1, "model": {"n_layers": 3, "n_heads": [6, 6, 6]},'
    b' "heads": ["L9.H9"]}',
    b'{"format": "model-surgery.pruning-plan", "version": 1, "model": {"n_layers": 3, "n_heads": [6, 6, 6]},'
    b' "sparsity": {"0": 7}}',
    b'{"format": "model-surgery.pruning-plan", "version": 1, "model": {"n_layers": 3, "n_heads": [6, 6, 6]},'
    b' "heads": [1, 2]}',
]


@pytest.mark.parametrize("content", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_values_plan_and_manifest_files_give_one_line_errors(tiny_dir, made, content, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    one_line_error(*run_cli(capsys, "plan", "heads", "--model", tiny_dir, "--values", bad, "--k", "1",
                            "--out", tmp_path / "p.json")[::2])
    one_line_error(*run_cli(capsys, "plan", "sparsity", "--model", tiny_dir, "--values", bad, "--out",
                            tmp_path / "s.json")[::2])
    one_line_error(*run_cli(capsys, "prune", "--model", tiny_dir, "--plan", bad, "--out", tmp_path / "e")[::2])
    line = one_line_error(*run_cli(capsys, "cluster", bad, made / "values.json", "--out", tmp_path / "c.json")[::2])
    assert "bad.json" in line
    export = tmp_path / "export"
    export.mkdir()
    for name in ("config.json", "model.safetensors"):
        (export / name).write_bytes((tiny_dir / name).read_bytes())
    (export / "manifest.json").write_bytes(content)
    one_line_error(*run_cli(capsys, "eval", "--model", export, "--task", "factual", "--n", "2")[::2])
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "e").exists()
