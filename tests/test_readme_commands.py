"""CI must run exactly the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_line = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.startswith("pip install")][0]
    assert ci_line in readme
    assert "python -m pytest" in ci_line and "&& surgery run\n" in readme
