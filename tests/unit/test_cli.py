"""The command line as a whole: one exit-code table, options checked early, one name per option."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from onnxguard import cli
from onnxguard.errors import EXIT_CODES

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Result:
    capsys.readouterr()
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


@pytest.mark.parametrize("args", [
    ("build", "--fail-on", "bogus"),
    ("build", "--max-length", "0"),
    ("build", "--min-agreement", "2"),
    ("build", "--fp32-atol", "-1"),
    ("build", "--task", "banana"),
    ("build", "--quantize", "int4"),
    ("build", "--calibration", "no-such-file.txt"),
    ("bench", "--int8", "bogus"),
    ("bench", "--engines", "pytorch,tensorflow"),
    ("bench", "--report", "out.pdf"),
    ("scan", ".", "--fail-on", "severe"),
])
def test_bad_option_values_exit_2_before_anything_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
) -> None:
    monkeypatch.chdir(tmp_path)
    extra = ("-o", "out") if args[0] == "build" else ()
    r = run(capsys, *args, *extra)
    assert r.code == 2, r.err
    assert "error:" in r.err and "hint:" in r.err and "Traceback" not in r.err
    assert list(tmp_path.iterdir()) == []  # nothing scanned, exported or written


def test_version_and_verbose_are_accepted_anywhere(capsys: pytest.CaptureFixture[str]) -> None:
    from onnxguard import __version__

    for args in (("--version",), ("scan", "--version"), ("build", "-o", "x", "--version")):
        r = run(capsys, *args)
        assert r.code == 0 and r.out.strip() == f"onnxguard {__version__}"
    r = run(capsys, "inspect", "/no/such/bundle", "--verbose")
    assert r.code == 2 and "Traceback" in r.err and "hint:" in r.err
    r = run(capsys, "inspect", "/no/such/bundle")
    assert r.code == 2 and "Traceback" not in r.err


def test_help_prints_the_exit_code_table(capsys: pytest.CaptureFixture[str]) -> None:
    r = run(capsys, "--help")
    assert r.code == 0
    for code, meaning in EXIT_CODES:
        assert re.search(rf"^\s*{code}\s+{re.escape(meaning)}$", r.out, re.MULTILINE), meaning


def test_readme_exit_code_table_is_the_one_in_errors() -> None:
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", README.read_text(encoding="utf-8"), re.MULTILINE)
    assert [(int(code), meaning) for code, meaning in rows] == list(EXIT_CODES)


COMMANDS = ["build", "predict", "inspect", "keygen", "sign", "verify", "encrypt", "decrypt",
            "scan", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_uses_one_name_per_option(capsys: pytest.CaptureFixture[str], command: str) -> None:
    r = run(capsys, command, "--help")
    assert r.code == 0, r.err
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", r.out))
    assert not options & {"--pub", "--out", "--key", "--cert", "--markdown"}, options
    assert re.search(r"--json\s+Machine-readable JSON on stdout", r.out) or "--json" not in r.out
    if "--output" in options:
        assert "-o, --output" in r.out
    if command in ("build", "scan"):  # choices are listed, not a free <str>
        assert re.search(r"--fail-on\s+<info\|low\|medium\|high\|critical>", r.out), r.out


def test_output_to_a_pipe_is_plain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Errors on a pipe: no colour codes, no box drawing, one line per message."""
    missing = tmp_path / ("x" * 150)
    r = run(capsys, "inspect", missing)
    assert r.code == 2
    assert "\x1b[" not in r.err and "╭" not in r.err
    assert any(str(missing) in line for line in r.err.splitlines())


def test_ctrl_c_says_so_and_exits_130(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("onnxguard.bundle.read_manifest", interrupted)
    r = run(capsys, "inspect", tmp_path)
    assert r.code == 130 and "interrupted" in r.err and "Traceback" not in r.err


def test_bench_json_is_stdout_and_reports_follow_their_suffix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from onnxguard.bench import harness, report

    figures = {"figures": [1, 2]}

    class Result:
        def to_dict(self) -> dict[str, object]:
            return figures

    written: dict[str, str] = {}
    monkeypatch.setattr(harness, "run_bench", lambda config, progress: Result())
    for kind in ("json", "markdown", "html"):
        monkeypatch.setattr(report, f"write_{kind}",
                            lambda data, path, kind=kind: written.update({kind: path.name}))
    r = run(capsys, "bench", "--json", "--report", tmp_path / "r.md", "--report",
            tmp_path / "r.json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == figures
    assert written == {"markdown": "r.md", "json": "r.json"}


def test_build_keeps_out_as_a_hidden_alias(capsys: pytest.CaptureFixture[str]) -> None:
    r = run(capsys, "build", "--out", "somewhere", "--task", "banana")
    assert r.code == 2 and "--task" in r.err and "--out" not in r.err
    assert "--out " not in run(capsys, "build", "--help").out


def test_version_is_the_package_version() -> None:
    import tomllib

    from onnxguard import __version__

    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert __version__ == pyproject["project"]["version"]
