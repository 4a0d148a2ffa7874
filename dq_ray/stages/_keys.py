"""Document keys: a document's location (:data:`dq_ray.stage.KEY_COLUMNS`, ``source_file`` + ``source_index``)
hashed into a key, in the two forms the stages use. A location is unique within a run (ids given in the input need
not be), so either key names one input record.

* :func:`doc_key_hex`: 128-bit xxHash as a hex string; the duplicate stages name a group by the key of the member
  they keep (``minhash_group``, ``semdedup_group``).
* :func:`doc_key_int63`: 63-bit non-negative integers (xxh64); how a document recognises itself among its
  neighbours in the density index, and how ``askllm_distill`` finds the documents of its sample.

The two hash different strings (``file\\x00index`` and ``file#index``) with different functions: they are not
interchangeable, and each is stored in artifacts or outputs as it is.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash


def doc_key_hex(source_file: pa.Array | pa.ChunkedArray, source_index: pa.Array | pa.ChunkedArray) -> list[str]:
    """The key of each document: the 128-bit xxHash (xxh3), in hex, of ``source_file`` + NUL + ``source_index``."""
    return [
        xxhash.xxh3_128_hexdigest(f"{f}\x00{i}".encode("utf-8", errors="surrogatepass"))
        for f, i in zip(source_file.to_pylist(), source_index.to_pylist())
    ]


def doc_key_int63(batch: pa.Table) -> np.ndarray:
    """Non-negative 63-bit keys (``int64``) of the rows of ``batch``: xxh64 of ``source_file#source_index``."""
    files = batch.column("source_file").to_pylist()
    index = batch.column("source_index").to_pylist()
    mask = (1 << 63) - 1
    return np.fromiter(
        (xxhash.xxh64_intdigest(f"{f}#{i}".encode("utf-8", "surrogatepass")) & mask for f, i in zip(files, index)),
        dtype=np.int64,
        count=len(files),
    )
