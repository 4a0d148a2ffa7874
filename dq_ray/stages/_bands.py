"""MinHash's band rows kept with its fit (``artifacts/minhash/bands/``), so an update links the bands of its new
documents with the baseline's instead of re-reading and re-hashing every baseline document.

A band row is ``(k1, k2, doc)``: the 128-bit key of one band of one document's signature and the document's
fit-time number ``file_number << 40 | source_index``. ``bands.json`` lists the files those numbers refer to and
the documents counted, so another fit can renumber the rows against its own file list.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dq_ray.artifacts import read_trusted
from dq_ray.stages._fit import write_parquet

BANDS_DIR = "bands"
BANDS_INDEX = "bands.json"
BAND_COLUMNS = ["k1", "k2", "doc"]


def write_band_index(artifacts_dir: str, files: list[str], documents: int) -> None:
    """``bands.json``: the file list the band rows' document numbers index, and the documents they cover."""
    import fsspec

    with fsspec.open(posixpath.join(artifacts_dir, BANDS_INDEX), "w") as fh:
        json.dump({"files": files, "documents": int(documents)}, fh)


def write_band_table(artifacts_dir: str, rows: pa.Table) -> None:
    """The band rows of a fit linked on the driver, as one file."""
    write_parquet(rows.select(BAND_COLUMNS), posixpath.join(artifacts_dir, BANDS_DIR, "part-00000.parquet"))


def write_band_dataset(artifacts_dir: str, rows: Any) -> Any:
    """The band rows of a shuffled fit, written by Ray Data; returns the dataset read back from them (so the
    shuffle does not hash the documents a second time)."""
    import ray.data

    path = posixpath.join(artifacts_dir, BANDS_DIR)
    rows.select_columns(BAND_COLUMNS).write_parquet(path)
    return ray.data.read_parquet(path)


def with_partition(rows: pa.Table, partitions: int) -> pa.Table:
    """``rows`` with the ``part`` column of the shuffle (the second key word modulo ``partitions``)."""
    part = (rows.column("k2").to_numpy() % np.uint64(partitions)).astype(np.int32)
    return rows.select(BAND_COLUMNS).append_column("part", pa.array(part))


class PriorBands:
    """The band rows of a baseline's MinHash fit (its verified artifact folder ``path`` and ``digests``)."""

    def __init__(self, path: str, digests: dict[str, str]) -> None:
        self.path, self.digests = path, digests
        index = json.loads(read_trusted(path, BANDS_INDEX, digests))
        self.files: list[str] = list(index["files"])
        self.documents = int(index["documents"])
        self.parts = sorted(n for n in digests if n.startswith(f"{BANDS_DIR}/") and n.endswith(".parquet"))

    @staticmethod
    def usable(digests: dict[str, str]) -> bool:
        """Whether a MinHash artifact folder with these digests kept its band rows (runs before it did not)."""
        return BANDS_INDEX in digests

    def dataset(self, files: list[str], partitions: int, bits: int) -> Any:
        """The baseline's band rows renumbered against ``files`` (which holds all of the baseline's), one Ray
        task per file, each file checked against its digest."""
        import ray.data

        position = {f: i for i, f in enumerate(files)}
        renumber = np.array([position[f] for f in self.files], np.int64)
        items = [{"name": n} for n in self.parts]
        if not items:
            return ray.data.from_arrow(with_partition(empty_band_rows(), partitions))
        kwargs = {"path": self.path, "digests": self.digests, "renumber": renumber, "partitions": partitions}
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _read_part, batch_size=1, batch_format="pyarrow", fn_kwargs={**kwargs, "bits": bits}
        )


def empty_band_rows() -> pa.Table:
    """A band table without rows (a fit over documents that all lack a signature)."""
    return pa.table({"k1": pa.array([], pa.uint64()), "k2": pa.array([], pa.uint64()), "doc": pa.array([], pa.int64())})


def _read_part(
    batch: pa.Table, path: str, digests: dict[str, str], renumber: np.ndarray, partitions: int, bits: int
) -> pa.Table:
    """Ray Data UDF: one band file of the baseline, its document numbers mapped to this fit's file list."""
    name = batch.column("name")[0].as_py()
    rows = pq.read_table(pa.BufferReader(read_trusted(path, name, digests)))
    doc = rows.column("doc").to_numpy()
    mask = np.int64((1 << bits) - 1)
    doc = (renumber[doc >> bits] << bits) | (doc & mask)
    rows = rows.set_column(rows.schema.get_field_index("doc"), "doc", pa.array(doc, pa.int64()))
    return with_partition(rows, partitions)
