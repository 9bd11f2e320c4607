"""`surgery values tokens` on a tiny saved model: writes Values JSON with the spans to render."""

import json

import numpy as np

from helpers import run_cli
from probes.inputs.render import values_html
from probes.values import Values


def test_values_tokens_writes_values_that_render(tiny_dir, tmp_path, capsys):
    out = tmp_path / "tokens.json"
    code, stdout, stderr = run_cli(capsys, "values", "tokens", "--model", tiny_dir, "--prompt", "Mary gave John a",
                         "--target", " banana", "--players", "words", "--removal", "attention", "--out", out,
                         "--figure", tmp_path / "tokens.png")
    assert code == 0, stderr
    values = Values.load(out)
    assert values.names == ["0:Mary", "1:gave", "2:John", "3:a"] and values.estimator == "exact"
    assert abs(values.means.sum() - (values.full_value - values.empty_value)) < 1e-6
    assert json.loads(out.read_text())["fingerprint"]["removal"] == "attention"
    assert (tmp_path / "tokens.png").stat().st_size > 0
    html = values_html(values)
    assert html.count("title=") == 4 and "banana" in html and np.isfinite(values.means).all()


def test_token_flags_are_refused_for_heads(tiny_dir, tmp_path, capsys):
    code, _, text = run_cli(capsys, "values", "heads", "--model", tiny_dir, "--prompt", "x", "--out", tmp_path / "v.json")
    assert code == 2 and "--prompt applies only to `surgery values tokens`" in text


def test_values_tokens_needs_a_prompt(tiny_dir, tmp_path, capsys):
    code, _, text = run_cli(capsys, "values", "tokens", "--model", tiny_dir, "--out", tmp_path / "v.json")
    assert code == 2 and "needs --prompt" in text
