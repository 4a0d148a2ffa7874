"""The fast quality classifier of ``askllm_distill``: hashed word uni- and bigrams, and a ridge on the LLM's log-odds.

The FineWeb-Edu / DCLM recipe without embeddings: a large model judges a sample, a linear model over cheap text
features learns its judgement, and the linear model scores every document. Features are scikit-learn's
:class:`~sklearn.feature_extraction.text.HashingVectorizer` over lower-cased word 1- and 2-grams (no vocabulary to
fit or store: a document's features depend on its text alone), ``n_features`` buckets, counts L2-normalised per
document, on the first ``max_chars`` characters. The regressor is a ridge (conjugate gradient on the sparse matrix),
its regularisation chosen among ``alphas`` by ``folds``-fold cross-validation on the training rows. The artifact
is a plain ``.npz`` (coefficients as float32, intercept, alpha, ``n_features``, ``max_chars``): no pickle.

:func:`text_reasons` says which texts get no prediction (``no text``, ``empty``, ``no letters``) and what to know about
the others (``short``: fewer than ``MIN_WORDS`` words; ``capped``: only the first ``max_chars`` characters read).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: below this many words a prediction is kept but marked ``short``
MIN_WORDS = 3
NGRAMS = (1, 2)


def vectorizer(n_features: int) -> Any:
    """The stateless feature map: hashed lower-cased word 1- and 2-grams, L2-normalised counts."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        n_features=n_features, ngram_range=NGRAMS, alternate_sign=False, norm="l2", dtype=np.float32
    )


def text_features(texts: Sequence[str | None], n_features: int, max_chars: int) -> Any:
    """The sparse feature matrix of ``texts`` (a null text: an empty row)."""
    return vectorizer(n_features).transform([(t or "")[:max_chars] for t in texts])


def text_reasons(texts: Sequence[str | None], max_chars: int) -> tuple[list[str | None], np.ndarray]:
    """Per text, null or comma-separated notes (``short``, ``capped``) or why there is no prediction (``no
    text``, ``empty``, ``no letters``); and the mask of texts that get a prediction."""
    out: list[str | None] = []
    valid = np.ones(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        if text is None or not text.strip() or not any(ch.isalpha() for ch in text[:max_chars]):
            out.append("no text" if text is None else "empty" if not text.strip() else "no letters")
            valid[i] = False
            continue
        notes = []
        if len(text[:max_chars].split()) < MIN_WORDS:
            notes.append("short")
        if len(text) > max_chars:
            notes.append("capped")
        out.append(",".join(notes) or None)
    return out, valid


def _ridge(x: Any, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=alpha, solver="sparse_cg", tol=1e-6).fit(x, y)
    return np.asarray(model.coef_, dtype=np.float32), float(model.intercept_)


def fit_text_ridge(
    x: Any, y: np.ndarray, alphas: Sequence[float], folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, float, float]:
    """``(coef, intercept, alpha)`` of a ridge on sparse ``x``, alpha chosen by ``folds``-fold cross-validation
    (mean squared error; the only alpha when one is given or there are too few rows to fold)."""
    n = x.shape[0]
    alpha = float(alphas[0])
    if len(alphas) > 1 and n >= 2 * folds:
        order = np.random.default_rng(seed).permutation(n)
        errors = []
        for a in alphas:
            sq = 0.0
            for k in range(folds):
                test = order[k::folds]
                train = np.setdiff1d(order, test)
                coef, b = _ridge(x[train], y[train], a)
                sq += float(((x[test] @ coef + b - y[test]) ** 2).sum())
            errors.append(sq)
        alpha = float(alphas[int(np.argmin(errors))])
    coef, intercept = _ridge(x, y, alpha)
    return coef, intercept, alpha


def text_logit(x: Any, coef: np.ndarray, intercept: float) -> np.ndarray:
    """The regressor's output (the LLM's predicted log-odds) for the rows of ``x``."""
    return np.asarray(x @ coef, dtype=np.float64) + intercept
