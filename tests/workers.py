"""Launching lensnet commands as local processes, alone or as a MultiWorkerMirroredStrategy cluster.

Shared by tests/test_distributed.py and tests/test_contract.py (a helper module, not a test module).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds per launch; a hung collective must fail the test, never hang the suite


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch(jobs: list[tuple[list[str], dict[str, str]]], logs: Path, timeout: float = TIMEOUT,
           cwd: Path = REPO) -> list[tuple[int, str]]:
    """Start every (argv, extra env) job at once; wait for all; (exit code, output) of each.

    Output goes to files, not pipes, so a chatty worker cannot block on a full pipe while the
    other waits for it in a collective.
    """
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    try:
        for i, (argv, extra) in enumerate(jobs):
            env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
            env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **extra})
            handle = open(logs / f"job{i}.log", "w")
            files.append(handle)
            procs.append(subprocess.Popen(argv, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"run still running after {timeout} s; logs in {logs}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for handle in files:
            handle.close()
    return [(proc.returncode, (logs / f"job{i}.log").read_text()) for i, proc in enumerate(procs)]


def workers(argv: list[str], logs: Path, n: int = 2, env: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """`argv` in `n` local worker processes forming one TF_CONFIG cluster."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(n)]}
    jobs = [(argv, {**(env or {}), "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                           "index": i}})})
            for i in range(n)]
    return launch(jobs, logs)
