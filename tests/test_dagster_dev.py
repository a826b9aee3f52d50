"""`dagster dev` at the repo root loads the code location through workspace.yaml and shows the whole graph."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from persona_factory.config import REPO_ROOT
from pipelines.definitions import build_definitions
from pipelines.resources import FactoryConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dagster_dev_serves_every_asset(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "1",
           "PERSONA_FACTORY_OUTPUT": str(tmp_path / "output")}
    dagster = Path(sys.executable).with_name("dagster")
    # its own session, so SIGINT reaches it (a background child of a script would ignore it) and its children
    proc = subprocess.Popen([str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        nodes = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.post(f"{base}/graphql", json={"query": "{ assetNodes { assetKey { path } } }"}, timeout=5)
                nodes = r.json().get("data", {}).get("assetNodes")
                if nodes:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
        served = {"/".join(n["assetKey"]["path"]) for n in nodes or []}
        settings = FactoryConfig(output_dir=str(tmp_path / "output"))
        expected = {k.to_user_string() for k in build_definitions(settings).resolve_asset_graph().get_all_asset_keys()}
        assert served == expected
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
