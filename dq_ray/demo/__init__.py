"""Demo and test data built from real text that ships inside installed packages.

* :mod:`.corpus`: the demo corpus (Wikipedia leads, news, tweets, speeches) in every input format dq-ray reads;
* :mod:`.preference`: a constructed DPO / KTO / SFT preference set from the same text;
* :mod:`.planted`: planted near-duplicates, the ground truth of the near-duplicate tests and benchmarks.

``python -m dq_ray.demo OUT_DIR`` builds the demo corpus.
"""

from dq_ray.demo.corpus import (
    DemoSizes,
    MissingDemoData,
    build_demo_corpus,
    news_docs,
    speech_docs,
    tweet_docs,
    variant,
    wikipedia_docs,
    write_jsonl,
)
from dq_ray.demo.planted import KINDS, PlantedDoc, planted_corpus
from dq_ray.demo.preference import PreferenceSizes, build_preference_set

__all__ = [
    "KINDS",
    "DemoSizes",
    "MissingDemoData",
    "PlantedDoc",
    "PreferenceSizes",
    "build_demo_corpus",
    "build_preference_set",
    "news_docs",
    "planted_corpus",
    "speech_docs",
    "tweet_docs",
    "variant",
    "wikipedia_docs",
    "write_jsonl",
]
