"""The README's walkthrough runs as written, in order, in a fresh directory (slow: real builds).

Every ```bash block after the quick start is run, in one shell with ``set -euo pipefail``, in a
temporary directory laid out like a checkout: ``../shared`` beside it and ``.venv/bin/activate``
putting this interpreter's ``onnxguard`` on PATH.  Lines marked ``# needs network`` are left
out (the Hub is unreachable in tests); the server's port is swapped for a free one.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED = REPO.parent / "shared"


def walkthrough_script(readme: str, port: int) -> str:
    """The shell blocks after the quick start, joined in order."""
    after_quick_start = readme.split("## Walkthrough", 1)[1]
    blocks = re.findall(r"^```bash\n(.*?)^```", after_quick_start, re.MULTILINE | re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines()
             if "# needs network" not in line]
    script = "\n".join(lines).replace(":8000", f":{port}").replace("--port 8000",
                                                                     f"--port {port}")
    return "set -euo pipefail\n" + script + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_walkthrough_has_the_blocks_it_promises() -> None:
    script = walkthrough_script(README.read_text(encoding="utf-8"), 8123)
    for command in ("onnxguard build", "onnxguard predict", "onnxguard scan", "onnxguard sign",
                    "onnxguard verify", "onnxguard encrypt", "onnxguard serve",
                    "onnxguard audit verify", "onnxguard bench"):
        assert command in script
    assert "8000" not in script and "python -m pytest" not in script


@pytest.mark.slow
def test_readme_walkthrough_runs_in_order(tmp_path: Path) -> None:
    if not (SHARED / "models" / "minilm-sst2").is_dir():
        pytest.fail(f"{SHARED} with models/minilm-sst2 must sit beside the repository")
    work = tmp_path / "checkout"
    (work / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / "shared").symlink_to(SHARED)
    (work / ".venv" / "bin" / "activate").write_text(
        f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    script = walkthrough_script(README.read_text(encoding="utf-8"), _free_port())
    result = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True,
                            timeout=1800, env=dict(os.environ, TERM="dumb"))
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    out = result.stdout
    assert '"label": "POSITIVE"' in out and '"text": "plain text works"' in out
    assert "verified:" in out and "signed by key" in out
    assert '"results"' in out  # the curl call to /v1/classify
    for made in ("bundles/sst2/model.sig", "bundles/sst2-encrypted/onnxguard.json", "scan.sarif",
                 "keys/public.pem", "keys.txt", "audit.jsonl", "bench.html", "bench.json"):
        assert (work / made).is_file(), made
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "bundles/x", "keys/private.pem", "keys.txt",
         "audit.jsonl", "audit.jsonl.1", "scan.sarif", "bench.html", "bench.json", "bench.md"],
        cwd=REPO, capture_output=True, text=True)
    assert len(ignored.stdout.split()) == 9, ignored.stdout
