"""Language identification on real text: accuracy per (source, language) and documents/s on one core.

Candidates: ``py3langid`` (langid.py's naive Bayes model over byte n-grams, 97 languages, in the wheel) and
``lingua-language-detector`` (Rust; n-gram models of 75 languages in the wheel; high-accuracy and low-accuracy
modes). The documents come from installed packages (:mod:`dq_ray.demo.languages`): Wikipedia leads (en, es, fr),
parliamentary speeches (en, de, es, nl), English news, and short texts (English health tweets, Wikipedia's
one-line descriptions in en, es, fr). Every detector reads at most ``--max-chars`` characters (the ``lang``
stage's default) and answers among all the languages it knows.

    .venv/bin/python benchmarks/lang_id.py --per-set 150

prints a Markdown table (benchmarks/README.md, "Language identification"). Single-threaded
(``OMP_NUM_THREADS=1``, lingua called one document at a time), so docs/s is per core.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

log = logging.getLogger("lang_id")


def detectors(max_chars: int) -> dict:
    """name -> callable(text) -> ISO 639-1 code (or None)."""
    import py3langid
    from lingua import LanguageDetectorBuilder

    out = {}
    ident = py3langid.langid.LanguageIdentifier.from_model_file(py3langid.langid.MODEL_FILE, norm_probs=True)
    out["py3langid 0.4.0"] = lambda t: ident.classify(t[:max_chars])[0]
    for name, builder in (
        ("lingua 2.1.1 (high accuracy)", LanguageDetectorBuilder.from_all_languages()),
        ("lingua 2.1.1 (low accuracy)", LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode()),
    ):
        det = builder.with_preloaded_language_models().build()

        def detect(t, det=det):
            lang = det.detect_language_of(t[:max_chars])
            return lang.iso_code_639_1.name.lower() if lang is not None else None

        out[name] = detect
    return out


def main(argv: list[str] | None = None) -> None:
    from dq_ray.demo.languages import SETS, language_docs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-set", type=int, default=150, help="documents drawn from each (source, language) set")
    ap.add_argument("--max-chars", type=int, default=2000, help="characters each detector reads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    rng = random.Random(args.seed)
    sets = {}
    for source, lang in SETS:
        docs = language_docs(source, lang)
        sets[(source, lang)] = rng.sample(docs, min(args.per_set, len(docs)))
    dets = detectors(args.max_chars)
    results: dict[str, dict] = {}
    for name, fn in dets.items():
        fn("warm up")
        acc, n_docs, seconds = {}, 0, 0.0
        for key, docs in sets.items():
            t0 = time.perf_counter()
            guesses = [fn(d["text"]) for d in docs]
            seconds += time.perf_counter() - t0
            n_docs += len(docs)
            acc[key] = sum(g == d["lang"] for g, d in zip(guesses, docs)) / len(docs)
        results[name] = {"acc": acc, "docs_per_s": n_docs / seconds}
        log.info("%s: %.0f docs/s", name, n_docs / seconds)

    names = list(results)
    lines = ["| set | chars (median) | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for key, docs in sets.items():
        chars = sorted(len(d["text"]) for d in docs)[len(docs) // 2]
        cells = [f"{100 * results[n]['acc'][key]:.1f}%" for n in names]
        lines.append(f"| {key[0]} {key[1]} ({len(docs)}) | {chars} | " + " | ".join(cells) + " |")
    long_sets = [k for k in sets if k[0] not in ("tweets", "descriptions")]
    short_sets = [k for k in sets if k[0] in ("tweets", "descriptions")]
    for label, keys in (("mean, documents", long_sets), ("mean, short texts", short_sets)):
        cells = [f"**{100 * sum(results[n]['acc'][k] for k in keys) / len(keys):.1f}%**" for n in names]
        lines.append(f"| {label} | | " + " | ".join(cells) + " |")
    lines.append(
        "| docs/s, one core (all sets) | | " + " | ".join(f"{results[n]['docs_per_s']:,.0f}" for n in names) + " |"
    )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
