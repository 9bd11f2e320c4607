"""`surgery eval` reports latency: prefill ms and per-token generation ms with tokens/s, in the
printout and the JSON; bad latency settings are refused before any evaluation."""

import json

from helpers import run_cli


def test_eval_reports_prefill_and_generation_latency(tiny_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code, stdout, err = run_cli(capsys, "eval", "--model", tiny_dir, "--task", "factual", "--n", "2",
                                "--prompt-tokens", "16", "--new-tokens", "4", "--out", out)
    assert code == 0, err
    assert "prefill" in stdout and "ms/token" in stdout and "tokens/s" in stdout
    latency = json.loads(out.read_text())["latency"]
    assert latency["prompt_tokens"] == 16 and latency["new_tokens"] == 4
    assert latency["prefill_ms"] > 0 and latency["decode_ms_per_token"] > 0


def test_bad_latency_settings_are_refused(tiny_dir, capsys):
    code, _, err = run_cli(capsys, "eval", "--model", tiny_dir, "--prompt-tokens", "0")
    assert code != 0 and "--prompt-tokens must be >= 1" in err
