"""Quiet by default: no TensorFlow C++/absl start-up line on a command's stderr unless --verbose; the dashboard's
server starts without importing TensorFlow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT, make_results

# absl's C++ log lines (`I0000 00:00:...`, `E0000 ... cuInit`) and its preamble
TF_LOG = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuda", re.M)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_list_models_prints_no_tensorflow_log_line_unless_verbose():
    quiet = _run("-m", "lensnet.cli", "fit", "--list-models")
    assert quiet.returncode == 0, quiet.stderr
    assert "cnn_small" in quiet.stdout
    assert not TF_LOG.search(quiet.stderr), quiet.stderr
    # the same through python -m, and --verbose shows what TensorFlow prints (so the check above can fail)
    direct = _run("-m", "lensnet.fit", "--list-models")
    assert direct.returncode == 0 and not TF_LOG.search(direct.stderr), direct.stderr
    loud = _run("-m", "lensnet.fit", "--list-models", "--verbose")
    assert loud.returncode == 0, loud.stderr
    assert TF_LOG.search(loud.stderr), loud.stderr


def test_dashboard_server_starts_without_tensorflow(tmp_path):
    results = make_results(tmp_path / "results")
    script = textwrap.dedent(f"""
        import sys, threading, urllib.request
        sys.argv = ["lensnet.dashboard", {str(results)!r}, "--port", "0"]
        import uvicorn
        started = threading.Event()
        real_run = uvicorn.Server.run
        def run(self, sockets=None):
            host, port = sockets[0].getsockname()[:2]
            threading.Thread(target=lambda: (urllib.request.urlopen(f"http://{{host}}:{{port}}/").read(),
                                             print("tensorflow" in sys.modules, flush=True),
                                             setattr(self, "should_exit", True)), daemon=True).start()
            return real_run(self, sockets=sockets)
        uvicorn.Server.run = run
        from lensnet.dashboard import main
        main(sys.argv[1:])
    """)
    done = _run("-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr
