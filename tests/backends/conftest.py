import sys
from pathlib import Path

# The package is not installed in every checkout; make `import surgery` work from a plain `pytest`.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
