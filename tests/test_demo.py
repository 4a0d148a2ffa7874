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


def test_demo_corpus_has_documents_in_other_languages(tmp_path):
    """The full demo corpus carries non-English text from the same packages (for the lang stage), spread over
    Spanish and French Wikipedia leads and German, Spanish and Dutch speeches; the English part is unchanged."""
    import random

    from dq_ray.demo import DemoSizes, build_demo_corpus
    from dq_ray.demo.languages import other_language_docs

    docs = other_language_docs(10, random.Random(0))
    assert len(docs) == 10 and {d["lang"] for d in docs} == {"es", "fr", "de", "nl"}
    assert {d["source"] for d in docs} == {"wikipedia-es", "wikipedia-fr", "speeches-de", "speeches-es", "speeches-nl"}
    assert all(len(d["text"]) >= 100 and d["id"] for d in docs) and len({d["id"] for d in docs}) == 10
    sizes = dict(wikipedia=5, news=3, tweets=3, speeches=3, duplicates=2)
    with_others = build_demo_corpus(tmp_path / "a", DemoSizes(**sizes, other_languages=10), seed=0)
    without = build_demo_corpus(tmp_path / "b", DemoSizes(**sizes, other_languages=0), seed=0)
    assert with_others["documents"]["other_languages"] == 10
    assert with_others["planted_duplicates"] == without["planted_duplicates"]
    assert (tmp_path / "a" / "news.jsonl").read_bytes() == (tmp_path / "b" / "news.jsonl").read_bytes()
    lines = (tmp_path / "a" / "other_languages.jsonl").read_text().splitlines()
    assert [json.loads(x)["lang"] for x in lines] == [d["lang"] for d in docs]
