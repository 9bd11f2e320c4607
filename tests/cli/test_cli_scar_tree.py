"""`surgery values tokens --tree` (Owen values over the text's tree) and `surgery values scar`."""

import json

from helpers import run_cli
from probes.estimators.owen_tree import TreeValues


def test_values_tokens_tree_writes_every_level_efficient(tiny_dir, tmp_path, capsys):
    out = tmp_path / "tree.json"
    code, stdout, stderr = run_cli(capsys, "values", "tokens", "--model", tiny_dir, "--prompt",
                                   "Mary gave John a pear. John ate it", "--target", " now", "--tree", "--out", out)
    assert code == 0, stderr
    tree = TreeValues.from_json_dict(json.loads(out.read_text()))
    players = tree.players
    assert len(players.names) == 8 and len(tree.levels) == 2  # two sentences, then their words
    total = players.full_value - players.empty_value
    for level in tree.levels:
        assert abs(level.means.sum() - total) < 1e-6
    assert abs(tree.levels[0].means[0] - players.means[:5].sum()) < 1e-9  # a sentence = the sum of its words
    assert players.details["text"].startswith("Mary") and "g0" in stdout


def test_tree_refuses_another_estimator(tiny_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "values", "tokens", "--model", tiny_dir, "--prompt", "a b. c d", "--tree",
                           "--estimator", "permutation", "--budget", "20", "--out", tmp_path / "t.json")
    assert code == 2 and "--tree gives Owen values" in err


def test_values_scar_writes_dense_rewards_summing_to_the_reward(tiny_dir, tmp_path, capsys):
    out = tmp_path / "scar.json"
    code, stdout, stderr = run_cli(capsys, "values", "scar", "--model", tiny_dir, "--prompt", "Name fruit:",
                                   "--response", " an apple, a stone. A plum, a pear!",
                                   "--reward", "scar_test_rewards:fruit_count", "--alpha", "0.8", "--out", out)
    assert code == 0, stderr
    data = json.loads(out.read_text())
    assert data["schema"] == "model-surgery.scar-rewards" and data["full_reward"] == 3.0
    assert abs(sum(data["rewards"]) - 3.0) < 1e-5 and data["alpha"] == 0.8
    assert len(data["segments"]) == 4
    values = TreeValues.from_json_dict(data["values"]).players
    stone = [k for k, seg in enumerate(data["segments"]) if "stone" in seg][0]
    assert abs(values.means[stone]) < 1e-9 and "reward calls" in stdout


def test_scar_flags_are_checked(tiny_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "values", "scar", "--model", tiny_dir, "--prompt", "p", "--response", "r",
                           "--out", tmp_path / "s.json")
    assert code == 2 and "needs --reward DIR" in err
    code, _, err = run_cli(capsys, "values", "heads", "--model", tiny_dir, "--response", "r", "--out", tmp_path / "h.json")
    assert code == 2 and "--response applies only to `surgery values scar`" in err
    code, _, err = run_cli(capsys, "values", "scar", "--model", tiny_dir, "--prompt", "p", "--response", "r",
                           "--players", "tokens", "--reward", "scar_test_rewards:fruit_count", "--out", tmp_path / "s.json")
    assert code == 2 and "--players: flags of `surgery values tokens`" in err


def test_values_tokens_in_bfloat16_records_the_dtype(tiny_dir, tmp_path, capsys):
    out = tmp_path / "bf16.json"
    code, _, stderr = run_cli(capsys, "values", "tokens", "--model", tiny_dir, "--prompt", "Mary gave John a",
                              "--target", " banana", "--dtype", "bfloat16", "--out", out)
    assert code == 0, stderr
    assert json.loads(out.read_text())["fingerprint"]["dtype"] == "bfloat16"
