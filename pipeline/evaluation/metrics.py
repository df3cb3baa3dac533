"""Cross-modal evaluation metrics on paired cells (numpy / scipy / scikit-learn only).

Conventions: ``a`` and ``b`` are the two modalities' representations of the same ``n`` cells, row ``i`` of ``a``
paired with row ``i`` of ``b``. Similarity is cosine (default) or negative squared Euclidean distance. Every
cross-modal metric is computed in both directions (a→b and b→a) and averaged. Similarities are computed in
row chunks, so memory is O(chunk × n), never O(n²).

Tie handling: FOSCTTM counts a tied candidate as half closer (a collapsed embedding scores 0.5, not 0); recall
is pessimistic (a tied candidate counts as ranked above the true partner).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from omicsclip.conventions import is_unlabelled

log = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean")
MATCH_TOP_K = 1000  # the NeurIPS 2021 matching task allowed at most 1000 non-zeros per row
_CHUNK_ELEMENTS = 1 << 24  # similarity entries held at once (64 MiB in float32)
MATCH_TEMPERATURE = 0.05  # softmax temperature of the matching distribution when none is calibrated
TEMPERATURE_GRID = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"expected 2-D arrays, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"paired representations must have the same shape, got {a.shape} and {b.shape}")
    if a.shape[0] < 2:
        raise ValueError("need at least 2 paired cells")
    return a, b


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(norms, 1e-12)
    if metric == "euclidean":
        return x
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _chunk_rows(n: int, chunk_size: int | None) -> int:
    if chunk_size is not None and chunk_size > 0:
        return int(chunk_size)
    return max(1, _CHUNK_ELEMENTS // max(n, 1))


def _similarity_chunks(
    a: np.ndarray, b: np.ndarray, metric: str, chunk_size: int | None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, S[start:stop])`` with ``S[i, j]`` the similarity of ``a[i]`` and ``b[j]``."""
    pa, pb = _prepare(a, metric), _prepare(b, metric)
    sq_b = (pb * pb).sum(1) if metric == "euclidean" else None
    rows = _chunk_rows(len(pb), chunk_size)
    for start in range(0, len(pa), rows):
        blk = pa[start:start + rows]
        sims = blk @ pb.T
        if sq_b is not None:  # -||x - y||^2 = 2 x.y - ||x||^2 - ||y||^2
            sims = 2.0 * sims - (blk * blk).sum(1)[:, None] - sq_b[None, :]
        yield start, sims


@dataclass
class DirectionStats:
    """Per-query-cell results of one retrieval direction (query modality → candidate modality).

    Attributes
    ----------
    n_closer
        Candidates strictly more similar than the true partner.
    n_ties
        Other candidates exactly as similar as the true partner.
    top1
        Index of the most similar candidate.
    match_prob
        Probability of the true partner under the row's top-k softmax matching distribution.
    """

    n_closer: np.ndarray
    n_ties: np.ndarray
    top1: np.ndarray
    match_prob: np.ndarray

    @property
    def n(self) -> int:
        """Number of query cells."""
        return len(self.n_closer)

    def foscttm(self) -> np.ndarray:
        """Per-cell fraction of candidates closer than the true match (ties count half)."""
        return (self.n_closer + 0.5 * self.n_ties) / (self.n - 1)

    def recall(self, k: int) -> float:
        """Fraction of cells whose true partner ranks within the top ``k`` (ties pessimistic)."""
        return float(np.mean(self.n_closer + self.n_ties < k))


def direction_stats(
    a: np.ndarray,
    b: np.ndarray,
    *,
    metric: str = "cosine",
    temperature: float = MATCH_TEMPERATURE,
    top_k: int = MATCH_TOP_K,
    chunk_size: int | None = None,
) -> DirectionStats:
    """One chunked pass over the similarities of each ``a[i]`` to every ``b[j]``.

    Parameters
    ----------
    a, b
        Paired representations (n × d each); ``b[i]`` is the true partner of ``a[i]``.
    metric
        ``"cosine"`` or ``"euclidean"``.
    temperature
        Softmax temperature of the matching distribution used by :func:`match_score`.
    top_k
        The matching distribution of each row is restricted to its ``top_k`` most similar candidates.
    chunk_size
        Rows per chunk (default: bounded so that a chunk holds about 16 M similarities).

    Returns
    -------
    DirectionStats
    """
    a, b = _check_pair(a, b)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = a.shape[0]
    k = int(min(max(top_k, 1), n))
    n_closer = np.empty(n, dtype=np.int64)
    n_ties = np.empty(n, dtype=np.int64)
    top1 = np.empty(n, dtype=np.int64)
    match_prob = np.empty(n, dtype=np.float64)
    for start, sims in _similarity_chunks(a, b, metric, chunk_size):
        rows = np.arange(sims.shape[0])
        true_idx = start + rows
        true_sim = sims[rows, true_idx][:, None]
        n_closer[true_idx] = (sims > true_sim).sum(1)
        n_ties[true_idx] = (sims == true_sim).sum(1) - 1
        top1[true_idx] = sims.argmax(1)
        match_prob[true_idx] = _true_match_prob(*_top_candidates(sims, true_idx, k), temperature)
    return DirectionStats(n_closer=n_closer, n_ties=n_ties, top1=top1, match_prob=match_prob)


def _top_candidates(sims: np.ndarray, true_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest similarities (float64) and which of them is the true partner."""
    n = sims.shape[1]
    cand = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), sims.shape)
    return np.take_along_axis(sims, cand, axis=1).astype(np.float64), cand == true_idx[:, None]


def _true_match_prob(top: np.ndarray, hit: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax(top / temperature) probability given to the true partner, per row."""
    z = top / temperature
    z -= z.max(1, keepdims=True)
    w = np.exp(z)
    return (w * hit).sum(1) / w.sum(1)


def _both(a: np.ndarray, b: np.ndarray, **kw) -> tuple[DirectionStats, DirectionStats]:
    return direction_stats(a, b, **kw), direction_stats(b, a, **kw)


def foscttm(a: np.ndarray, b: np.ndarray, *, metric: str = "cosine", chunk_size: int | None = None) -> float:
    """FOSCTTM: Fraction Of Samples Closer Than the True Match, averaged over cells and both directions.

    0 is perfect, about 0.5 is random. Memory is bounded by ``chunk_size`` rows of similarities.

    Parameters
    ----------
    a, b
        Paired representations (n × d); row ``i`` of ``a`` is paired with row ``i`` of ``b``.
    metric
        ``"cosine"`` or ``"euclidean"``.
    chunk_size
        Rows per chunk (default: automatic, about 16 M similarities per chunk).
    """
    ab, ba = _both(a, b, metric=metric, chunk_size=chunk_size)
    return float((ab.foscttm().mean() + ba.foscttm().mean()) / 2)


def recall_at_k(
    a: np.ndarray,
    b: np.ndarray,
    ks: Sequence[int] = (1, 10, 50),
    *,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> dict[int, float]:
    """Fraction of cells whose true partner is among the ``k`` nearest cells of the other modality.

    Averaged over both directions; ``{k: recall}``.
    """
    ab, ba = _both(a, b, metric=metric, chunk_size=chunk_size)
    return {int(k): (ab.recall(k) + ba.recall(k)) / 2 for k in ks}


def match_score(
    a: np.ndarray,
    b: np.ndarray,
    *,
    temperature: float = MATCH_TEMPERATURE,
    top_k: int = MATCH_TOP_K,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> float:
    """NeurIPS 2021 "match modality" score, averaged over both directions.

    The matching matrix has, in each row, a softmax over the ``top_k`` most similar candidates
    (``exp(sim / temperature)``, zero elsewhere), so rows sum to 1 as the competition required. The score is the
    mean over cells of the probability given to the true partner (``mean(diag(P) / rowSums(P))`` in the
    competition's ``match_probability`` metric). 1 is perfect, ``1/n`` is a uniform guess.
    """
    ab, ba = _both(a, b, metric=metric, temperature=temperature, top_k=top_k, chunk_size=chunk_size)
    return float((ab.match_prob.mean() + ba.match_prob.mean()) / 2)


def best_match_temperature(
    a: np.ndarray,
    b: np.ndarray,
    *,
    grid: Sequence[float] = TEMPERATURE_GRID,
    top_k: int = MATCH_TOP_K,
    metric: str = "cosine",
    max_cells: int = 5000,
    seed: int = 0,
) -> float:
    """Return the temperature of ``grid`` that maximises :func:`match_score` on these (validation) cells.

    Each method turns its similarities into matching probabilities with its own calibrated temperature, chosen
    on validation cells only, so that methods with different similarity scales are compared fairly. At most
    ``max_cells`` randomly chosen cells are used; the similarities and top-k candidates are computed once per
    direction and the whole grid is scored on them.
    """
    a, b = _check_pair(a, b)
    if len(a) > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(len(a), size=max_cells, replace=False))
        a, b = a[keep], b[keep]
    # the similarities and each row's top-k candidates are computed once per direction; every temperature of the
    # grid is scored on them (the same numbers as match_score at each temperature, one pass instead of one each)
    k = int(min(max(top_k, 1), len(a)))
    total = np.zeros(len(grid))
    for x, y in ((a, b), (b, a)):
        for start, sims in _similarity_chunks(x, y, metric, None):
            top, hit = _top_candidates(sims, start + np.arange(sims.shape[0]), k)
            total += [_true_match_prob(top, hit, t).sum() for t in grid]
    return list(grid)[int(np.argmax(total))]


def celltype_match(
    a: np.ndarray,
    b: np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> float | None:
    """Fraction of cells whose top cross-modal match has the same label, averaged over both directions.

    Unlabelled cells (:func:`omicsclip.conventions.is_unlabelled`: ``None``, NaN, blank or NA strings) are not
    scored (a match to them counts as a disagreement); ``None`` when no cell is labelled.
    """
    ab, ba = _both(a, b, metric=metric, chunk_size=chunk_size)
    return _celltype_from_stats(ab, ba, labels)


def _celltype_from_stats(ab: DirectionStats, ba: DirectionStats, labels: Sequence | np.ndarray) -> float | None:
    y = np.asarray(labels, dtype=object)
    if len(y) != ab.n:
        raise ValueError(f"labels has {len(y)} entries for {ab.n} cells")
    known = np.array([not is_unlabelled(v) for v in y], dtype=bool)
    if not known.any():
        return None
    ys = y.astype(str)
    return float(((ys[ab.top1] == ys)[known].mean() + (ys[ba.top1] == ys)[known].mean()) / 2)


def retrieval_metrics(
    a: np.ndarray,
    b: np.ndarray,
    *,
    labels: Sequence | np.ndarray | None = None,
    metric: str = "cosine",
    temperature: float = MATCH_TEMPERATURE,
    top_k: int = MATCH_TOP_K,
    ks: Sequence[int] = (1, 10, 50),
    chunk_size: int | None = None,
) -> dict[str, float | None]:
    """All cross-modal retrieval metrics from one pass per direction.

    Returns
    -------
    dict
        ``foscttm``, ``recall_at_{k}`` for each ``k``, ``match_score`` and ``celltype_match`` (``None`` without
        labels).
    """
    ab, ba = _both(a, b, metric=metric, temperature=temperature, top_k=top_k, chunk_size=chunk_size)
    out: dict[str, float | None] = {"foscttm": float((ab.foscttm().mean() + ba.foscttm().mean()) / 2)}
    for k in ks:
        out[f"recall_at_{int(k)}"] = (ab.recall(int(k)) + ba.recall(int(k))) / 2
    out["match_score"] = float((ab.match_prob.mean() + ba.match_prob.mean()) / 2)
    out["celltype_match"] = None if labels is None else _celltype_from_stats(ab, ba, labels)
    return out


def _labelled_subset(y: np.ndarray, n_labelled: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the positions of ``n_labelled`` cells proportionally to class frequency.

    At least one per class while the budget allows.
    """
    classes, inverse = np.unique(y, return_inverse=True)
    n_labelled = int(min(max(n_labelled, 1), len(y)))
    counts = np.bincount(inverse)
    quota = np.floor(counts / counts.sum() * n_labelled).astype(int)
    if n_labelled >= len(classes):
        quota = np.maximum(quota, 1)
    # hand out the remainder to the largest classes, then trim any excess from the largest quotas
    order = np.argsort(-counts)
    i = 0
    while quota.sum() < n_labelled:
        c = order[i % len(order)]
        if quota[c] < counts[c]:
            quota[c] += 1
        i += 1
    while quota.sum() > n_labelled:
        quota[np.argmax(quota)] -= 1
    picked = [rng.choice(np.flatnonzero(inverse == c), size=q, replace=False) for c, q in enumerate(quota) if q]
    return np.sort(np.concatenate(picked))


def fewlabel_accuracy(
    train_x: np.ndarray,
    train_y: Sequence | np.ndarray,
    test_x: np.ndarray,
    test_y: Sequence | np.ndarray,
    *,
    fraction: float,
    n_repeats: int = 5,
    seed: int = 0,
) -> float:
    """Accuracy of a logistic regression trained on ``fraction`` of the training cells, tested on ``test_x``.

    The labelled cells are drawn per class in proportion to class size (at least one per class when the budget
    allows); the accuracy is averaged over ``n_repeats`` draws. Features are standardised on the labelled cells.

    Parameters
    ----------
    train_x, train_y
        Representation and labels of the training cells (the labelled subset is drawn from these).
    test_x, test_y
        Held-out cells.
    fraction
        Fraction of the training cells that get a label (at least 2 cells; ``evaluate.fewlabel_fraction``).
    n_repeats
        Independent draws of the labelled subset.
    seed
        Seed of the draws.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    ytr = np.asarray(train_y).astype(str)
    yte = np.asarray(test_y).astype(str)
    if len(ytr) != len(train_x) or len(yte) != len(test_x):
        raise ValueError("labels and representations disagree in length")
    n_lab = max(2, int(round(fraction * len(ytr))))
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(n_repeats):
        idx = _labelled_subset(ytr, n_lab, rng)
        classes = np.unique(ytr[idx])
        if len(classes) < 2:
            pred = np.full(len(yte), classes[0])
        else:
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            clf.fit(train_x[idx], ytr[idx])
            pred = clf.predict(test_x)
        accs.append(float((pred == yte).mean()))
    return float(np.mean(accs))


def protein_pearson(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson correlation across cells, per protein (NaN where either side is constant)."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} != measured shape {true.shape}")
    pc = pred - pred.mean(0)
    tc = true - true.mean(0)
    denom = np.sqrt((pc * pc).sum(0) * (tc * tc).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(0) / denom
    r[denom == 0] = np.nan
    return r


def protein_rmse(pred: np.ndarray, true: np.ndarray) -> float:
    """Root mean squared error over all cells and proteins."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} != measured shape {true.shape}")
    return float(np.sqrt(np.mean((pred - true) ** 2)))
