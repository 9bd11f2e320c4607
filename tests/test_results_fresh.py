"""Benchmark results that went stale are seen, not shipped.

A results file (benchmarks/results/NAME.json, written by benchmarks/NAME.py through
benchmarks/bench_common.write_results) is stale when
- it has no complete run record ("run": command, script, argv, settings, git_commit, versions), or
- its recorded settings differ from what the script's command line gives now for the recorded
  arguments (a default changed since), or
- the script changed after the commit the results were made with (needs git history).

Files known to be stale are listed, each with the reason, in benchmarks/results/STALE.json, and
the README's "stale results" block lists the same. A stale file missing from the registry fails,
and so does a registry entry whose file is fresh again (rerun: drop the entry), so the registry
cannot rot.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REGISTRY = RESULTS / "STALE.json"
RECORD_KEYS = ("command", "script", "argv", "settings", "git_commit", "versions")
README_START, README_END = "<!-- stale-results -->", "<!-- /stale-results -->"


def results_files() -> list[Path]:
    return sorted(p for p in RESULTS.glob("*.json") if p != REGISTRY)


def registry() -> dict[str, str]:
    return json.loads(REGISTRY.read_text())["stale"]


def load_script(script: Path):
    """The benchmark module (its top level only: imports and make_parser; main() is not run)."""
    spec = importlib.util.spec_from_file_location(f"_results_fresh_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setting_differences(run: dict, script: Path) -> list[str]:
    """Recorded settings that the script's command line, given the recorded arguments, sets otherwise now."""
    module = load_script(script)
    now = json.loads(json.dumps(vars(module.make_parser().parse_args(run["argv"])), default=str))  # as recorded
    recorded = run["settings"]
    return [f"setting {k!r} was {recorded.get(k)!r}, the script now gives {now.get(k)!r}"
            for k in sorted(set(now) | set(recorded)) if not same_setting(recorded.get(k), now.get(k))]


def same_setting(recorded, now) -> bool:
    """Equal, or the same path inside the checkout: a default such as benchmarks/results/x.json is
    absolute in the record, and a clone elsewhere (CI) gives another prefix to the same file."""
    if recorded == now:
        return True
    if not (isinstance(recorded, str) and isinstance(now, str) and Path(now).is_absolute()):
        return False
    try:
        inside = Path(now).relative_to(ROOT).as_posix()
    except ValueError:
        return False
    return recorded.endswith("/" + inside)


def script_changed_since(commit: str, script: Path) -> str | None | bool:
    """True/False whether `script` differs between `commit` and HEAD; a string saying why it cannot
    be told (no git, no history, commit not in this clone)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return "no git checkout here (CI checks it on a clone with history)"
    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True)
    if known.returncode != 0:
        return f"commit {commit[:12]} is not in this clone's history (shallow clone?)"
    diff = subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", str(script.relative_to(ROOT))], cwd=ROOT)
    return diff.returncode != 0


def staleness(path: Path) -> tuple[list[str], str | None]:
    """(why `path` is stale, [] when fresh; why the git part could not be checked, else None)."""
    data = json.loads(path.read_text())
    run = data.get("run") if isinstance(data, dict) else None
    missing = [k for k in RECORD_KEYS if not isinstance(run, dict) or run.get(k) in (None, "")]
    if missing:
        return [f"no complete run record (missing {', '.join(missing)})"], None
    script = ROOT / run["script"]
    if not script.is_file():
        return [f"its script {run['script']} no longer exists"], None
    reasons = setting_differences(run, script)
    changed = script_changed_since(run["git_commit"], script)
    if changed is True:
        reasons.append(f"{run['script']} changed since commit {run['git_commit'][:12]}")
    return reasons, changed if isinstance(changed, str) else None


@pytest.mark.parametrize("path", results_files(), ids=lambda p: p.name)
def test_results_file_is_fresh_or_registered_as_stale(path):
    listed = registry()
    reasons, unchecked = staleness(path)
    if path.name in listed:
        if not reasons and unchecked:
            pytest.skip(f"{path.name}: cannot tell whether it is still stale: {unchecked}")
        assert reasons, (f"{path.name} is listed in benchmarks/results/STALE.json but is fresh now: "
                         "remove its entry (and its line in the README's stale-results block)")
    else:
        assert not reasons, (f"{path.name} is stale: {'; '.join(reasons)}. Rerun its command (commit the code "
                             "first), or list it in benchmarks/results/STALE.json with the reason")
        if unchecked:
            pytest.skip(f"{path.name}: settings match; whether its script changed is unchecked: {unchecked}")


def test_registry_names_existing_files_with_reasons():
    names = {p.name for p in results_files()}
    for name, reason in registry().items():
        assert name in names, f"STALE.json lists {name}, which is not in benchmarks/results/: remove the entry"
        assert isinstance(reason, str) and reason.strip(), f"STALE.json: say why {name} is stale"


def test_readme_shows_the_stale_results():
    readme = (ROOT / "README.md").read_text()
    assert README_START in readme and README_END in readme, f"README.md needs a {README_START} block"
    block = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    expected = "\n".join(f"- `benchmarks/results/{name}`: {reason}" for name, reason in sorted(registry().items()))
    assert block == expected, f"README's stale-results block must list STALE.json; replace it with:\n{expected}"


def test_a_changed_default_makes_a_results_file_stale(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text("import argparse\n\ndef make_parser():\n    p = argparse.ArgumentParser()\n"
                      "    p.add_argument('--budget', type=int, default=300)\n    p.add_argument('--seed', type=int, default=0)\n"
                      "    return p\n")
    run = {"argv": ["--seed", "1"], "settings": {"budget": 300, "seed": 1}}
    assert setting_differences(run, script) == []
    script.write_text(script.read_text().replace("default=300", "default=600"))
    assert setting_differences(run, script) == ["setting 'budget' was 300, the script now gives 600"]
    explicit = {"argv": ["--budget", "300"], "settings": {"budget": 300, "seed": 0}}
    assert setting_differences(explicit, script) == []  # the command set it: a new default does not matter


def test_a_path_default_is_the_same_setting_in_another_checkout():
    inside = ROOT / "benchmarks" / "results" / "x.json"
    assert same_setting("/elsewhere/clone/benchmarks/results/x.json", str(inside))
    assert not same_setting("/elsewhere/clone/benchmarks/results/y.json", str(inside))
    assert not same_setting("/tmp/x.json", "/tmp/other/x.json")  # outside the checkout: compared as given
