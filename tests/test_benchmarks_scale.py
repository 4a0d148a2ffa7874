"""The scale benchmark's corpus generator (benchmarks/scale.py): unique ids, valid JSON lines, the planted copies
it says it planted. A made-up sentence pool, no Ray."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import orjson
import pytest

from dq_ray.stages.exact_dedup import normalise

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def scale():
    sys.path.insert(0, str(BENCHMARKS))  # scale.py imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("bench_scale", BENCHMARKS / "scale.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_scale", None)
        sys.path.remove(str(BENCHMARKS))


POOL = [f'Sentence {i} tells about thing {i * 7 % 13}, and "quotes" {i}.' for i in range(500)]


def test_documents_are_the_plan_with_the_planted_copies(scale):
    plan = scale.CorpusPlan(400, POOL, seed=3, exact_share=0.05, near_share=0.05)
    docs = [orjson.loads(line) for line in plan.jsonl(0, 400).splitlines()]
    assert [d["id"] for d in docs] == [f"scale-{i:07d}" for i in range(400)]
    assert [d["text"] for d in docs] == [plan.text(i) for i in range(400)]
    assert (plan.exact_copies, plan.near_copies) == (20, 20)

    copies = (plan.original >= 0).nonzero()[0]
    assert len(copies) == 40 and len(set(plan.original[copies].tolist())) == 40  # one copy per original
    for i in copies.tolist():
        orig = docs[plan.original[i]]["text"]
        assert plan.original[plan.original[i]] == -1  # originals are drawn documents, not copies
        if plan.near[i]:
            assert normalise(docs[i]["text"]) != normalise(orig)
            assert len(set(docs[i]["text"].split()) ^ set(orig.split())) <= 10
        else:
            assert normalise(docs[i]["text"]) == normalise(orig)
    own = [normalise(docs[i]["text"]) for i in range(400) if plan.original[i] < 0]
    assert len(set(own)) == len(own)  # the drawn documents are all different


def test_files_split_the_corpus(scale, tmp_path):
    corpus = scale.generate_corpus(250, tmp_path / "c", POOL, docs_per_file=100, min_files=2, near_share=0.0)
    files = sorted((tmp_path / "c").iterdir())
    assert corpus.files == len(files) == 3 and corpus.near_copies == 0
    ids = [orjson.loads(line)["id"] for f in files for line in f.read_bytes().splitlines()]
    assert ids == [f"scale-{i:07d}" for i in range(250)]
    two = scale.generate_corpus(10, tmp_path / "z", POOL, min_files=2, zstd=True)
    assert two.files == 2 and all(p.name.endswith(".jsonl.zst") for p in (tmp_path / "z").iterdir())
