"""The sentence-transformers engine: one PyTorch code path, on ``cpu`` or ``cuda``."""

from __future__ import annotations

import numpy as np


class SentenceTransformerEncoder:
    """A sentence-transformers model (local folder or model name; nothing is downloaded when offline).

    Args:
        model: a sentence-transformers folder or model name.
        device: ``cpu`` or ``cuda``.
        batch_size: texts per forward pass.
        max_seq_length: tokens kept per text (longer texts are truncated); None keeps the model's own.

    Attributes:
        tokenizer: the model's tokenizer (the ``embed`` stage cuts its ``chunking`` windows with it).
        max_seq_length: tokens the model reads per text, special tokens included.
    """

    name = "sentence-transformers"

    def __init__(self, model: str, device: str, batch_size: int = 32, max_seq_length: int | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model), device=device)
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.device, self.batch_size = device, batch_size
        self.tokenizer = self.model.tokenizer
        self.max_seq_length = int(self.model.max_seq_length)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False, normalize_embeddings=True
        )
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)
