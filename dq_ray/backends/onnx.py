"""The ONNX engine: a transformer exported to ONNX (int8 or fp32), run by onnxruntime without PyTorch.

Tokenisation and pooling follow the sentence-transformers folder the export came from (its ``tokenizer.json``,
``max_seq_length`` and ``1_Pooling/config.json``), so the vectors match the PyTorch engine up to quantisation
error. The ONNX graph must take ``input_ids``/``attention_mask`` (and optionally ``token_type_ids``) and return
the token states (``last_hidden_state``), as sentence-transformers' and Optimum's exports do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

_POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        return {}


class OnnxEncoder:
    """Runs ``onnx_file`` with the tokenizer and pooling of the sentence-transformers folder ``model``.

    Args:
        model: the sentence-transformers folder the ONNX file was exported from (tokenizer, pooling config).
        onnx_file: the ``.onnx`` file.
        device: ``cpu``, or ``cuda`` (needs ``onnxruntime-gpu``).
        batch_size: texts per run of the graph.
        max_seq_length: tokens kept per text; None keeps the folder's ``max_seq_length`` (else 512).
        num_threads: onnxruntime's intra-op threads; None: ``$OMP_NUM_THREADS`` (Ray sets it to the actor's
            CPUs), else onnxruntime's default (every core).
    """

    name = "onnx"

    def __init__(
        self,
        model: str,
        onnx_file: str,
        device: str,
        batch_size: int = 32,
        max_seq_length: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        root = Path(model)
        if not (root / "tokenizer.json").is_file():
            raise FileNotFoundError(f"the onnx backend needs a local model folder with tokenizer.json; got {model!r}")
        st_config = _read_json(root / "sentence_bert_config.json")
        self.max_seq_length = int(max_seq_length or st_config.get("max_seq_length") or 512)
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        tok_config = _read_json(root / "tokenizer_config.json")
        pad_token = tok_config.get("pad_token") or "[PAD]"
        pad_id = self.tokenizer.token_to_id(pad_token)
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad_token)
        pooling = _read_json(root / "1_Pooling" / "config.json")
        self.pooling = next((m for m in _POOLING_MODES if pooling.get(f"pooling_mode_{m}")), "mean_tokens")

        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError('onnx on cuda needs onnxruntime-gpu: pip install "onnxruntime-gpu>=1.18"')
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        threads = num_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_file), sess_options=options, providers=providers)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        self.device, self.batch_size = device, batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._encode_batch([texts[i] for i in idx])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        states = self.session.run(None, feeds)[0].astype(np.float32)
        mask = feeds["attention_mask"][:, :, None].astype(np.float32)
        if self.pooling == "cls_token":
            return states[:, 0]
        if self.pooling == "max_tokens":
            return np.where(mask > 0, states, -1e9).max(axis=1)
        summed = (states * mask).sum(axis=1)
        counts = np.clip(mask.sum(axis=1), 1e-9, None)
        return summed / (np.sqrt(counts) if self.pooling == "mean_sqrt_len_tokens" else counts)
