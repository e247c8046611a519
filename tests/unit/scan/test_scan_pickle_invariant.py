"""The invariant: whatever ``pickle.load`` would import or call outside the allowlist, the
scanner reports at high or above, or refuses to scan (exit 2).

The oracle is CPython's own unpickler, run on generated samples only, in a throwaway
subprocess (``python -I``) with an audit hook: every ``pickle.find_class`` is recorded, and one
outside the allowlist is stopped *before* it imports anything (the hook raises), as are the
audit events of process, exec and socket primitives.  torch is replaced there by inert stand-ins
so that allowlisted globals resolve without importing it.  The samples: every pickle attack
sample, and each gadget spliced into benign pickles of every protocol (after PROTO, appended as
a second pickle, after a long text line, inside a FRAME).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

from onnxguard.scan import scan_path
from onnxguard.scan._pickle_policy import SAFE_GLOBALS
from unit.scan import attack_samples as samples

_ORACLE = r"""
import io, json, pickle, sys, types

safe = {tuple(x) for x in json.load(open(sys.argv[1]))}
samples = [bytes.fromhex(h) for h in json.load(open(sys.argv[2]))]

class Blocked(Exception):
    pass

class Inert:
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return Inert()
    def __setstate__(self, state): pass

for module in sorted({m for m, _ in safe if m.split(".")[0] == "torch"}):
    stub = types.ModuleType(module)
    for m, name in safe:
        if m == module:
            setattr(stub, name, Inert)
    sys.modules[module] = stub
import numpy, collections, _codecs  # allowlisted modules, imported before the hook

_codecs.encode("warm", "latin1")  # its codec module is imported (and exec'd) before the hook
DANGER = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "subprocess.Popen",
          "socket.connect", "socket.__new__", "ctypes.", "shutil.", "os.remove", "open")
current = []

def hook(event, args):
    if event == "pickle.find_class":
        module, name = args
        if (module, name) not in safe:
            current.append(f"{module}.{name}")
            raise Blocked(f"{module}.{name}")
    elif current is not None and any(event.startswith(d) for d in DANGER):
        current.append(event)
        raise Blocked(event)

sys.addaudithook(hook)
out = []
for data in samples:
    current = []
    stream = io.BytesIO(data)
    for _ in range(64):  # a loader may call load() again on what follows
        if stream.tell() >= len(data):
            break
        unpickler = pickle.Unpickler(stream)
        unpickler.persistent_load = lambda pid: Inert()
        try:
            unpickler.load()
        except BaseException:
            break
    out.append(current)
    current = None
print(json.dumps(out))
"""


def _gadgets() -> dict[str, bytes]:
    """Pickle bodies (no PROTO, no STOP) that leave one value on the stack."""
    g, call, ustr = samples.glob, samples.call, samples.ustr
    return {
        "os.system": call(g("os", "system"), ustr(samples.PAYLOAD)),
        "builtins.eval": call(g("builtins", "eval"), ustr("1+1")),
        "subprocess.getoutput": call(g("subprocess", "getoutput"), ustr(samples.PAYLOAD)),
        "argparse.Namespace": call(g("argparse", "Namespace")),
        "memo-stack-global": samples.short("os")
        + b"\x94"
        + samples.short("getcwd")
        + b"\x94\x93)R",
        "protocol0": b"cos\nsystem\n(S'" + samples.PAYLOAD.encode() + b"'\ntR",
    }


def _streams(workdir: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for sample in samples.SAMPLES:
        if sample.format != "pickle":
            continue
        path = sample.make(workdir / sample.name)
        files = [p for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file()]
        out[sample.name] = files[0].read_bytes()
    out["sleepy-data-pkl"] = samples._injected_data_pkl()
    out["benign-state-dict"] = samples._state_dict_pickle()
    benign = {"w": [1.5, 2.5], "name": "bert", "ids": (1, 2, 3), "b": b"\x00" * 300}
    for proto in range(6):
        clean = pickle.dumps(benign, protocol=proto)
        out[f"benign-p{proto}"] = clean
        for name, body in _gadgets().items():
            if proto >= 2:
                out[f"p{proto}-after-proto-{name}"] = clean[:2] + body + b"0" + clean[2:]
            out[f"p{proto}-appended-{name}"] = clean + body + b"."
            out[f"p{proto}-long-line-{name}"] = b"V" + b"x" * 70_000 + b"\n0" + body + b"."
    out["frame-then-gadget"] = (
        b"\x80\x04\x95" + (3).to_bytes(8, "little") + _gadgets()["os.system"] + b"."
    )
    return out


def test_scanner_flags_everything_the_unpickler_would_import_or_call(tmp_path: Path) -> None:
    streams = _streams(tmp_path / "gen")
    (tmp_path / "safe.json").write_text(json.dumps(sorted(SAFE_GLOBALS)))
    (tmp_path / "samples.json").write_text(json.dumps([d.hex() for d in streams.values()]))
    (tmp_path / "oracle.py").write_text(_ORACLE)
    proc = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "oracle.py"), str(tmp_path / "safe.json"),
         str(tmp_path / "samples.json")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    verdicts = dict(zip(streams, json.loads(proc.stdout), strict=True))
    # the oracle works: it sees the gadgets, and benign pickles import only allowlisted names
    assert verdicts["pickle-reduce-os-system"] == ["os.system"]
    assert all(verdicts[f"benign-p{p}"] == [] for p in range(6)), [
        verdicts[f"benign-p{p}"] for p in range(6)
    ]
    assert verdicts["benign-state-dict"] == []
    flagged = 0
    for name, data in streams.items():
        if not verdicts[name]:
            continue
        flagged += 1
        d = tmp_path / "scan" / name.replace("/", "_")
        d.mkdir(parents=True)
        (d / "model.pkl").write_bytes(data)
        report = scan_path(d)
        assert report.at_or_above("high") or report.unscanned, (name, verdicts[name])
    assert flagged >= 60
