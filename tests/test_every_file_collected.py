"""Every ``test_*.py`` under tests/ is collected by the README's pytest command.

pytest's default ``norecursedirs`` skips folders named ``build``, ``dist``, ``venv`` and others;
a test package that lands in one of them silently never runs (49 tests once did). This test asks
pytest itself what it collects, from a clean subprocess with the project's own configuration.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_file_is_collected() -> None:
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = {line.split("::", 1)[0] for line in result.stdout.splitlines() if "::" in line}
    missing = sorted(on_disk - collected)
    assert not missing, f"pytest never collects these test files: {missing}"
    assert "tests/test_every_file_collected.py" in collected
