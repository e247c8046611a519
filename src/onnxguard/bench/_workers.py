"""Parent side of the worker protocol: start, call with a timeout, stop (see ``_worker``)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from onnxguard.errors import BenchmarkError

CALL_TIMEOUT_S = 1800.0
IDLE_WINDOW_S = 0.003
IDLE_QUIET_WINDOWS = 4
IDLE_BUSY_FRACTION = 0.1
IDLE_TIMEOUT_S = 0.3
IDLE_FALLBACK_S = 0.05


def worker_env(threads: int) -> dict[str, str]:
    """Same thread budget for every library in the worker; never reach the network."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "RAYON_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[name] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    package_root = Path(__file__).resolve().parents[2]
    if package_root.name not in ("site-packages", "dist-packages"):
        # A source checkout run without installing: let the worker import this same package.
        # (Never for an install: PYTHONPATH entries come before the standard library.)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(package_root), env.get("PYTHONPATH", "")) if p)
    return env


class WorkerClient:
    """One worker process; ``call`` sends a request and waits for its single reply line."""

    def __init__(self, name: str, threads: int, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("w+b")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onnxguard.bench._worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env=worker_env(threads),
        )

    def call(self, request: dict[str, Any], timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode("utf-8") + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died(request) from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise BenchmarkError(
                f"engine {self.name} did not answer {request.get('cmd')!r} in {timeout:.0f}s",
                hint="the machine may be overloaded; retry with fewer --rounds or --sample",
            )
        line = self.proc.stdout.readline()
        if not line:
            raise self._died(request)
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise BenchmarkError(
                f"engine {self.name} failed on {request.get('cmd')!r}: {reply.get('error')}",
                hint="run with --verbose for the worker's traceback; --engines skips an engine",
                traceback=str(reply.get("traceback", "")),
            )
        return reply

    def cpu_ns(self) -> int | None:
        """CPU time used so far by every thread of the worker (Linux schedstat), else None."""
        total = 0
        try:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return total

    def wait_idle(self, timeout: float = IDLE_TIMEOUT_S) -> float:
        """Wait until the worker's threads stop spinning, so they cannot steal a core from the
        next engine: ONNX Runtime and OpenMP spin-wait for ~30 ms after a run.  schedstat of a
        thread that keeps running is only updated when it is descheduled, so one quiet window
        proves nothing; ``IDLE_QUIET_WINDOWS`` in a row do.  Returns the seconds waited; a fixed
        pause where schedstat is unavailable (not Linux)."""
        start = time.perf_counter()
        last = self.cpu_ns()
        if last is None:
            time.sleep(IDLE_FALLBACK_S)
            return IDLE_FALLBACK_S
        quiet = 0
        while quiet < IDLE_QUIET_WINDOWS and time.perf_counter() - start < timeout:
            time.sleep(IDLE_WINDOW_S)
            now = self.cpu_ns()
            if now is None:
                break
            quiet = quiet + 1 if now - last < IDLE_WINDOW_S * 1e9 * IDLE_BUSY_FRACTION else 0
            last = now
        return time.perf_counter() - start

    def _died(self, request: dict[str, Any]) -> BenchmarkError:
        code = self.proc.wait(timeout=10)
        return BenchmarkError(
            f"engine {self.name} exited with code {code} during {request.get('cmd')!r}: "
            f"{self.stderr_tail()}",
            hint="a negative code is a signal (e.g. -9: killed, often out of memory)",
        )

    def stderr_tail(self, limit: int = 1500) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-limit:].strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._close_pipes()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        if not self._log.closed:
            self._log.close()
