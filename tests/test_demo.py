import gzip
import json

import pyarrow.parquet as pq
import zstandard


def test_demo_corpus_is_real_text_in_every_format(tiny_corpus, tiny_summary):
    names = sorted(p.name for p in tiny_corpus.iterdir())
    assert names == [
        "_corpus.json",
        "broken.jsonl",
        "duplicates.jsonl",
        "news.jsonl",
        "speeches.parquet",
        "tweets.jsonl.zst",
        "wikipedia.jsonl.gz",
    ]
    wiki = [json.loads(x) for x in gzip.decompress((tiny_corpus / "wikipedia.jsonl.gz").read_bytes()).splitlines()]
    tweets = zstandard.ZstdDecompressor().decompressobj().decompress((tiny_corpus / "tweets.jsonl.zst").read_bytes())
    speeches = pq.read_table(tiny_corpus / "speeches.parquet").to_pylist()
    assert len(wiki) == 40 and all(d["source"] == "wikipedia" and len(d["text"]) > 50 for d in wiki)
    assert len(tweets.splitlines()) == 30 and len(speeches) == 15
    assert tiny_summary["documents"]["duplicates"] == len(tiny_summary["planted_duplicates"]) == 6
