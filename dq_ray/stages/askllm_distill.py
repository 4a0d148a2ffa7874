"""Distilled Ask-LLM: the LLM scores a sample, a ridge regressor on the embeddings scores every document.

FineWeb-Edu scored 15T tokens by annotating a sample with a large model and training a small classifier on its
embeddings. ``askllm_distill`` does the same with Ask-LLM, as a **fit / apply** stage:

* fit (once per run, on the driver): a deterministic sample of ``sample_size`` documents is scored by the judge
  of :mod:`dq_ray.stages.askllm` (same params: model, backend, template, token budget...) in a pool of Ray
  actors (on GPUs when the cluster has them), so the LLM work spreads over the cluster. A ridge regression
  (regularisation chosen by leave-one-out cross-validation among ``alphas``) learns the judge's log-odds
  ``askllm_logp_yes - askllm_logp_no`` from the ``embedding`` column. It is first fitted on the sample less a
  held-out ``holdout_fraction`` and evaluated there: Spearman rank correlation of prediction and LLM score, and
  ROC AUC of the prediction for "the LLM puts this document in its top ``top_fraction``". Those figures go into
  the manifest; the regressor is then refitted on the whole sample and saved.
* apply (every document, plain Ray tasks): ``askllm_pred`` = sigmoid of the regressor's output, comparable to
  ``askllm_score``; ``askllm_score`` holds the LLM's own score for the sampled documents, null elsewhere.
* the fast quality classifier (``quality: true``, the default): the same sample, targets and held-out split train
  a second ridge over hashed word 1- and 2-grams of the text (:mod:`dq_ray.stages._quality_text`), not over the
  embedding, so it costs a sparse dot product per document; ``quality_pred`` = sigmoid of its output (the
  FineWeb-Edu / DCLM recipe), ``quality_reason`` says why a text has none (``no text``, ``empty``, ``no
  letters``) or what to know about its value (``short``, ``capped``). Its held-out agreement is recorded next to
  the embedding ridge's (``quality.held_out`` beside ``held_out``). It lives here, not in a stage of its own,
  because it needs exactly this fit's sample, LLM scores and split: a separate stage would have to find another
  stage's artifacts and re-draw its sample.

Artifacts in ``RUN/artifacts/askllm_distill/``: ``regressor.npz`` (coefficients, intercept, alpha), ``quality.npz``
(the text classifier: coefficients over the hashed features, intercept, alpha, ``n_features``, ``max_chars``),
``sample_scores.parquet`` (the LLM's columns for the sampled documents, with ``source_file`` /
``source_index``) and ``distill.json`` (what the manifest records). Use this stage *or* ``askllm`` in one job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dq_ray.artifacts import load_npz_trusted, read_trusted, trusted_digests
from dq_ray.errors import ConfigError
from dq_ray.stage import KEY_COLUMNS, FitData, Resources, Stage, append_columns, register
from dq_ray.stages._fit import local_dir
from dq_ray.stages._keys import doc_key_int63
from dq_ray.stages._quality_text import fit_text_ridge, text_features, text_logit, text_reasons
from dq_ray.stages.askllm import OUTPUTS, AskLLMJudge, AskLLMParams, gpu_resources, judge_info
from dq_ray.vectors import to_matrix

log = logging.getLogger(__name__)

#: rows per LLM batch in the fit: on CPU small, so every actor gets work; on GPUs large, for vLLM's batching
CPU_FIT_ROWS, GPU_FIT_ROWS = 16, 1024
LOGIT_CLIP = 30.0


@dataclass(frozen=True)
class AskLLMDistillParams(AskLLMParams):
    """Settings of ``askllm_distill``: the judge's (see :class:`~dq_ray.stages.askllm.JudgeParams`) and:

    Attributes:
        sample_size: documents the LLM scores (a deterministic uniform sample).
        holdout_fraction: the share of the sample held out to measure the regressor's agreement.
        top_fraction: the "top-k" of the AUC: the share of held-out documents with the highest LLM scores.
        alphas: ridge regularisation strengths, chosen among by leave-one-out cross-validation.
        seed: seed of the sample and of the held-out split.
        fit_actors: LLM actors in the fit; null: one per engine's worth of GPUs, or one per
            ``num_threads`` CPUs (default 1) of the cluster.
        quality: also fit the fast text classifier and write ``quality_pred`` (null when false).
        quality_features: hash buckets of its word 1- and 2-grams.
        quality_alphas: its ridge regularisation strengths, chosen among by 5-fold cross-validation.
        quality_max_chars: characters of each text it reads (longer: ``capped`` in ``quality_reason``).
    """

    sample_size: int = 2000
    holdout_fraction: float = 0.2
    top_fraction: float = 0.3
    alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    seed: int = 0
    fit_actors: int | None = None
    quality: bool = True
    quality_features: int = 2**18
    quality_alphas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    quality_max_chars: int = 10000

    where: ClassVar[str] = "askllm_distill"

    def __post_init__(self) -> None:
        super().__post_init__()
        w = self.where
        if self.sample_size < 10:
            raise ConfigError(f"{w}.sample_size must be >= 10")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"{w}.holdout_fraction must be in (0, 1)")
        if not 0 < self.top_fraction < 1:
            raise ConfigError(f"{w}.top_fraction must be in (0, 1)")
        if not self.alphas or min(self.alphas) <= 0:
            raise ConfigError(f"{w}.alphas must be a non-empty list of positive numbers")
        if self.fit_actors is not None and self.fit_actors < 1:
            raise ConfigError(f"{w}.fit_actors must be >= 1 or null")
        if not 2**10 <= self.quality_features <= 2**24:
            raise ConfigError(f"{w}.quality_features must be in [1024, 16777216]")
        if not self.quality_alphas or min(self.quality_alphas) <= 0 or self.quality_max_chars < 1:
            raise ConfigError(f"{w}.quality_alphas must be positive numbers and quality_max_chars >= 1")


class _JudgeActor:
    """A Ray actor holding one judge, for the fit's sample (``map_batches`` over ``text``)."""

    def __init__(self, params: AskLLMParams) -> None:
        self.judge = AskLLMJudge(params)

    def __call__(self, batch: pa.Table) -> pa.Table:
        scores = self.judge.score(batch.column("text").to_pylist())
        info = self.judge.describe()
        out = pa.table({"_row": batch.column("_row"), **scores.columns()})
        return out.append_column("_engine", pa.array([f"{info['backend']}:{info['device']}"] * out.num_rows))


def score_sample(texts: pa.Array, params: AskLLMParams) -> tuple[pa.Table, dict[str, Any]]:
    """The judge's columns for ``texts``, computed in a pool of Ray actors (GPUs when the cluster has them),
    in input order; and what the scoring cost (docs, tokens, seconds, engine)."""
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    cluster = ray.cluster_resources()
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 1.0)
    threads = params.num_threads or 1
    res = gpu_resources(params, Resources(num_cpus=threads, batch_size=CPU_FIT_ROWS), gpus, "askllm_distill")
    if res.num_gpus:
        res = dataclasses.replace(res, num_cpus=1)
        actors = params.fit_actors or res.concurrency or 1
    else:
        actors = params.fit_actors or max(1, int(cpus // threads))
    rows = res.batch_size
    actors = max(1, min(actors, math.ceil(len(texts) / rows)))
    table = pa.table({"text": texts, "_row": pa.array(np.arange(len(texts), dtype=np.int64))})
    blocks = [table.slice(i, rows) for i in range(0, table.num_rows, rows)]
    t0 = time.perf_counter()
    ds = ray.data.from_arrow(blocks).map_batches(
        _JudgeActor,
        fn_constructor_kwargs={"params": params},
        compute=ActorPoolStrategy(size=actors),
        batch_size=rows,
        batch_format="pyarrow",
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus or None,
    )
    parts = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    wall = time.perf_counter() - t0
    out = pa.concat_tables(parts).sort_by("_row")
    if out.num_rows != len(texts):
        raise RuntimeError(f"askllm_distill: the judge returned {out.num_rows} rows for {len(texts)}")
    tokens = int(np.asarray(out.column("askllm_tokens")).sum())
    cost = {
        "llm_docs": out.num_rows,
        "llm_tokens_processed": tokens,
        "llm_wall_s": round(wall, 3),
        "llm_docs_per_s": round(out.num_rows / wall, 2),
        "llm_tokens_per_s": round(tokens / wall, 1),
        "llm_actors": actors,
        "llm_actor_resources": {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus},
        "engine": sorted(set(out.column("_engine").to_pylist())),
        "truncated": int(np.asarray(out.column("askllm_truncated")).sum()),
    }
    return out.drop_columns(["_row", "_engine"]), cost


# -- the regressor and its agreement -----------------------------------------------------------------------


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...]) -> tuple[np.ndarray, float, float]:
    """``(coef, intercept, alpha)`` of a ridge regression, alpha chosen by leave-one-out CV (scikit-learn)."""
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=list(alphas)).fit(x, y)
    return np.asarray(model.coef_, dtype=np.float64), float(model.intercept_), float(model.alpha_)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -LOGIT_CLIP, LOGIT_CLIP)))


def agreement(pred: np.ndarray, truth: np.ndarray, top_fraction: float) -> dict[str, Any]:
    """Spearman correlation of ``pred`` with ``truth``, and the ROC AUC of ``pred`` for "``truth`` is in its top
    ``top_fraction``" (null when the held-out set has one class only)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    rho = spearmanr(pred, truth).statistic if len(pred) > 2 else float("nan")
    threshold = float(np.quantile(truth, 1.0 - top_fraction))
    positive = truth >= threshold
    auc = float(roc_auc_score(positive, pred)) if 0 < positive.sum() < len(positive) else None
    return {
        "spearman": None if not np.isfinite(rho) else round(float(rho), 4),
        "auc_top": None if auc is None else round(auc, 4),
        "top_fraction": top_fraction,
        "top_threshold_score": round(threshold, 6),
        "n": int(len(pred)),
    }


@register
class AskLLMDistill(Stage):
    """Ask-LLM on a sample, distilled to every document by a ridge regressor on its embedding."""

    name = "askllm_distill"
    inputs = ("text", "embedding", *KEY_COLUMNS)
    outputs = {
        "askllm_pred": pa.float32(),
        "askllm_score": OUTPUTS["askllm_score"],
        "quality_pred": pa.float32(),
        "quality_reason": pa.string(),
    }
    Params = AskLLMDistillParams
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=1024)

    # -- fit (driver, LLM work in Ray actors) ---------------------------------------------------------------
    def fit(self, data: FitData) -> dict[str, Any]:
        p: AskLLMDistillParams = self.params
        t0 = time.perf_counter()
        sample = data.sample(["text", "embedding", *KEY_COLUMNS], p.sample_size, seed=p.seed)
        log.info("askllm_distill: scoring a sample of %d documents with the LLM", sample.num_rows)
        scores, cost = score_sample(sample.column("text"), p)
        x = to_matrix(sample.column("embedding")).astype(np.float64)
        logit = np.asarray(scores.column("askllm_logp_yes"), np.float64) - np.asarray(
            scores.column("askllm_logp_no"), np.float64
        )
        valid = np.isfinite(logit)
        if valid.sum() < 10:
            raise RuntimeError(f"askllm_distill: only {int(valid.sum())} sampled documents got an LLM score")
        idx = np.flatnonzero(valid)
        y = np.clip(logit[idx], -LOGIT_CLIP, LOGIT_CLIP)
        order = np.random.default_rng(p.seed).permutation(len(idx))
        n_hold = max(2, int(round(len(idx) * p.holdout_fraction)))
        hold, train = order[:n_hold], order[n_hold:]
        coef, intercept, alpha = fit_ridge(x[idx[train]], y[train], p.alphas)
        pred_hold = sigmoid(x[idx[hold]] @ coef + intercept)
        truth_hold = sigmoid(y[hold])
        held_out = agreement(pred_hold, truth_hold, p.top_fraction)
        held_out["alpha"] = alpha
        coef, intercept, alpha = fit_ridge(x[idx], y, p.alphas)  # the final model: the whole sample

        info: dict[str, Any] = {
            "sample_size": sample.num_rows,
            "scored": int(valid.sum()),
            **cost,
            "tokens_processed": cost["llm_tokens_processed"],
            "target": "askllm_logp_yes - askllm_logp_no (log-odds), ridge on the embedding",
            "held_out": held_out,
            "train_rows": int(len(train)),
            "alpha": alpha,
            "dimension": int(x.shape[1]),
            "sample_score_mean": round(float(np.nanmean(np.asarray(scores.column("askllm_score"), np.float64))), 6),
            "fit_s": round(time.perf_counter() - t0, 3),
        }
        quality = None
        if p.quality:
            texts = sample.column("text").to_pylist()
            quality, info["quality"] = self._fit_quality([texts[i] for i in idx], y, train, hold)
        with local_dir(data.artifacts_dir) as out:
            np.savez(os.path.join(out, "regressor.npz"), coef=coef, intercept=intercept, alpha=alpha)
            if quality is not None:
                np.savez(os.path.join(out, "quality.npz"), **quality)
            keyed = pa.table({k: sample.column(k) for k in KEY_COLUMNS})
            for col in scores.column_names:
                keyed = keyed.append_column(col, scores.column(col))
            pq.write_table(keyed, os.path.join(out, "sample_scores.parquet"))
            with open(os.path.join(out, "distill.json"), "w", encoding="utf-8") as fh:
                json.dump(info, fh, indent=2)
        log.info("askllm_distill fit: %s", info)
        return info

    def _fit_quality(
        self, texts: list[str], y: np.ndarray, train: np.ndarray, hold: np.ndarray
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The text classifier on the fit's targets: held-out agreement (same split as the embedding ridge's),
        then the final model on the whole sample; ``(arrays for quality.npz, manifest info)``."""
        p: AskLLMDistillParams = self.params
        t0 = time.perf_counter()
        x = text_features(texts, p.quality_features, p.quality_max_chars)
        coef, intercept, alpha = fit_text_ridge(x[train], y[train], p.quality_alphas, seed=p.seed)
        held_out = agreement(sigmoid(text_logit(x[hold], coef, intercept)), sigmoid(y[hold]), p.top_fraction)
        held_out["alpha"] = alpha
        coef, intercept, alpha = fit_text_ridge(x, y, p.quality_alphas, seed=p.seed)
        arrays = {
            "coef": coef,
            "intercept": np.float64(intercept),
            "alpha": np.float64(alpha),
            "n_features": np.int64(p.quality_features),
            "max_chars": np.int64(p.quality_max_chars),
        }
        info = {
            "features": f"hashed word 1-2-grams, {p.quality_features} buckets, L2-normalised counts",
            "target": "askllm_logp_yes - askllm_logp_no (log-odds), ridge on the text features",
            "held_out": held_out,
            "alpha": alpha,
            "nonzero_features": int(np.count_nonzero(coef)),
            "fit_s": round(time.perf_counter() - t0, 3),
        }
        log.info("askllm_distill quality classifier: held-out %s (embedding ridge: see held_out)", held_out)
        return arrays, info

    # -- apply (every document) ---------------------------------------------------------------------------
    def setup(self) -> None:
        if not self.artifacts_dir:
            raise RuntimeError("askllm_distill: no artifacts_dir; the stage must be fitted before it runs")
        art = self.artifacts_dir
        digests = trusted_digests(art, self.artifact_digests)
        z = load_npz_trusted(art, "regressor.npz", digests)
        self.coef, self.intercept = z["coef"], float(z["intercept"])
        sampled = pq.read_table(pa.BufferReader(read_trusted(art, "sample_scores.parquet", digests)))
        keys = doc_key_int63(sampled)
        self.sampled = dict(zip(keys.tolist(), sampled.column("askllm_score").to_pylist()))
        self.quality = load_npz_trusted(art, "quality.npz", digests) if self.params.quality else None

    def process(self, batch: pa.Table) -> pa.Table:
        x = to_matrix(batch.column("embedding")).astype(np.float64)
        pred = sigmoid(x @ self.coef + self.intercept) if len(x) else np.zeros(0)
        llm = [self.sampled.get(k) for k in doc_key_int63(batch).tolist()]
        quality, why = self.predict_quality(batch.column("text").to_pylist())
        return append_columns(
            batch,
            {
                "askllm_pred": pa.array(pred.astype(np.float32), pa.float32()),
                "askllm_score": pa.array(llm, pa.float32()),
                "quality_pred": quality,
                "quality_reason": why,
            },
        )

    def predict_quality(self, texts: list[str | None]) -> tuple[pa.Array, pa.Array]:
        """``quality_pred`` and ``quality_reason`` of ``texts`` (nulls when ``quality`` is off)."""
        if self.quality is None:
            return pa.nulls(len(texts), pa.float32()), pa.nulls(len(texts), pa.string())
        q = self.quality
        why, valid = text_reasons(texts, int(q["max_chars"]))
        pred = np.full(len(texts), np.nan)
        if valid.any():
            x = text_features([t for t, ok in zip(texts, valid) if ok], int(q["n_features"]), int(q["max_chars"]))
            pred[valid] = sigmoid(text_logit(x, q["coef"], float(q["intercept"])))
        return pa.array(pred.astype(np.float32), pa.float32(), mask=~valid), pa.array(why, pa.string())

    def describe(self) -> dict[str, Any]:
        return {"params": dataclasses.asdict(self.params), **judge_info(self.params)}
