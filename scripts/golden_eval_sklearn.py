#!/usr/bin/env python3
"""Reference numbers for the eval crate's metrics and tasks, from SciPy and
scikit-learn, independent of our Rust code.

Writes crates/eval/tests/fixtures/sklearn_reference.json, read by
crates/eval/tests/reference_numbers.rs. Small synthetic inputs (seeded), and:

- spearman / pearson: scipy.stats.spearmanr / pearsonr on series with ties;
- v_measure: sklearn.metrics.v_measure_score, degenerate cases included;
- accuracy / macro_f1: sklearn.metrics (a label only predicted included);
- logreg: sklearn LogisticRegression(C=1) fitted to convergence on 8 rows per
  label (the probe's training set size): weights, intercepts, the objective
  (log_loss + ||W||^2 / (2 C n), what our fit minimises) and predictions;
- sts task: Spearman and Pearson x 100 of numpy cosines against gold scores;
- classification task: the protocol's 10 experiments, each drawing 8 rows
  per label with OUR SplitMix64 shuffle (re-implemented below: the draw is
  our protocol's definition, MTEB's NumPy draw cannot be reproduced), a
  LogisticRegression(C=1) fit and sklearn's accuracy / macro-F1 on the test
  set, averaged x 100;
- clustering task: k-means. Our k-means++ seeding uses our own generator,
  so it cannot start where sklearn does; the data are blobs whose best
  partition sklearn finds from every one of 20 seeds (checked here), and
  the numbers compared are that optimum's inertia and V-measure x 100.

Fits run to convergence (tol 1e-10) rather than with MTEB's max_iter=100:
our fit also runs to convergence, and the optimum is what both approximate.
Every test prediction wins by a logit margin > MARGIN (data with a nearer
tie are redrawn), so the small weight differences of two converged fits
cannot flip one.

usage: python scripts/golden_eval_sklearn.py   (needs numpy, scipy, scikit-learn)
"""
import json
import pathlib

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, v_measure_score

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/eval/tests/fixtures/sklearn_reference.json"

M64 = (1 << 64) - 1
EXPERIMENTS, PER_LABEL, SEED = 10, 8, 42  # crates/eval/src/tasks/classification.rs


class SplitMix64:
    """crates/eval/src/metrics/kmeans.rs's generator, bit for bit."""

    def __init__(self, seed):
        self.s = seed & M64

    def next_u64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        return int((self.next_u64() >> 11) / float(1 << 53) * n) % n


def f32(a):
    """Values as the Rust side will hold them (f32), back in f64."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def fit(x, y):
    m = LogisticRegression(C=1.0, tol=1e-10, max_iter=100000)
    m.fit(x, y)
    return m


# Our fit stops when every gradient entry is below 1e-5; the objective is
# at least 1/(C n) = 1/32 strongly convex, so its weights are within about
# 32 * 1e-5 * sqrt(28 entries) = 2e-3 of the optimum, and its logits within
# about 1e-2 (rows of norm ~3). A test prediction whose best two logits are
# closer than MARGIN could go either way, so the data must have none.
MARGIN = 0.02


def margin(m, x):
    """The smallest gap between a row's best and second-best logit."""
    z = np.sort(m.decision_function(x), axis=1)
    return (z[:, -1] - z[:, -2]).min()


def check_margins(m, x):
    gap = margin(m, x)
    assert gap > MARGIN, f"a prediction is too close to call: margin {gap}"


def correlations(rng):
    out = []
    for n, levels in [(12, 4), (40, 6), (200, 21)]:
        # Few distinct values on both sides: many ties, as STS gold has.
        x = rng.integers(0, levels, n).astype(float) / 2
        y = np.round(x + rng.normal(0, 1.5, n), 1)
        out.append({
            "x": x.tolist(), "y": y.tolist(),
            "spearman": float(spearmanr(x, y).statistic),
            "pearson": float(pearsonr(x, y).statistic),
        })
    return out


def v_measures(rng):
    out = []
    for n, c, k in [(30, 3, 4), (100, 5, 5), (57, 7, 3), (20, 1, 3), (20, 4, 1)]:
        labels = rng.integers(0, c, n)
        # Clusters agree with the labels two times in three.
        clusters = np.where(rng.random(n) < 0.67, labels % k, rng.integers(0, k, n))
        out.append({
            "labels": labels.tolist(), "clusters": clusters.tolist(),
            "v_measure": float(v_measure_score(labels, clusters)),
        })
    return out


def f1s(rng):
    out = []
    for n, c in [(25, 3), (60, 5)]:
        gold = rng.integers(0, c, n)
        # Some predictions use a label absent from the gold (c).
        pred = np.where(rng.random(n) < 0.6, gold, rng.integers(0, c + 1, n))
        out.append({
            "gold": gold.tolist(), "pred": pred.tolist(),
            "accuracy": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, average="macro")),
        })
    return out


def blobs(rng, centres, per_label, spread):
    """per_label points around each centre (labels in order), as f32 values."""
    y = np.repeat(np.arange(len(centres)), per_label)
    return f32(centres[y] + rng.normal(0, spread, (len(y), centres.shape[1]))), y


def logreg(rng):
    classes, dim = 4, 6
    centres = rng.normal(0, 1, (classes, dim))
    x, y = blobs(rng, centres, PER_LABEL, 0.8)
    xt, _ = blobs(rng, centres, 6, 0.8)
    m = fit(x, y)
    check_margins(m, xt)
    n = len(y)
    p = m.predict_proba(x)
    objective = log_loss(y, p) + 0.5 * np.sum(m.coef_ ** 2) / (m.C * n)
    return {
        "x": x.tolist(), "y": y.tolist(), "classes": classes, "c": 1.0,
        "coef": m.coef_.tolist(), "intercept": m.intercept_.tolist(),
        "objective": float(objective),
        "test_x": xt.tolist(), "predictions": m.predict(xt).tolist(),
    }


def sts_task(rng):
    n, dim = 40, 8
    a = f32(rng.normal(0, 1, (n, dim)))
    b = f32(a + rng.normal(0, 1.2, (n, dim)))
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # Gold on STS's 0-5 scale in steps of 0.5 (ties), loosely following the cosines.
    gold = np.clip(np.round(2 * ((cos + 1) * 2.5 + rng.normal(0, 0.6, n))) / 2, 0, 5)
    emb = {f"s{i}a": a[i].tolist() for i in range(n)} | {f"s{i}b": b[i].tolist() for i in range(n)}
    return {
        "rows": [[float(gold[i]), f"s{i}a", f"s{i}b"] for i in range(n)],
        "embeddings": emb,
        "spearman": 100 * float(spearmanr(cos, gold).statistic),
        "pearson": 100 * float(pearsonr(cos, gold).statistic),
    }


def classification_task(rng):
    # Data sets are drawn until no test prediction of any experiment is a
    # near tie (see MARGIN), so the fixture does not hinge on the last digit.
    while True:
        task, gap = classification_draw(rng)
        if gap > MARGIN:
            return task


def classification_draw(rng):
    # Label names whose sorted order (our label ids) is not their order here.
    names = ["delta", "alpha", "charlie", "bravo"]
    centres = rng.normal(0, 1, (len(names), 6))
    train_x, train_y = blobs(rng, centres, 14, 1.3)
    test_x, test_y = blobs(rng, centres, 6, 1.3)
    label = [sorted(names).index(n) for n in names]
    # Rows interleave the labels, so the shuffle decides who is drawn.
    order = rng.permutation(len(train_y))
    train_x, train_y = train_x[order], train_y[order]
    train = [[names[c], f"train {i}"] for i, c in enumerate(train_y)]
    test = [[names[c], f"test {i}"] for i, c in enumerate(test_y)]
    # Our label ids: positions in the sorted names.
    train_y, test_y = np.array([label[c] for c in train_y]), np.array([label[c] for c in test_y])
    accs, f1, gap = [], [], np.inf
    for e in range(EXPERIMENTS):
        idx = list(range(len(train)))
        g = SplitMix64(SEED + e)
        for i in range(len(idx) - 1, 0, -1):
            j = g.below(i + 1)
            idx[i], idx[j] = idx[j], idx[i]
        taken, rows = [0] * len(names), []
        for i in idx:
            if taken[train_y[i]] < PER_LABEL:
                taken[train_y[i]] += 1
                rows.append(i)
        m = fit(train_x[rows], train_y[rows])
        gap = min(gap, margin(m, test_x))
        pred = m.predict(test_x)
        accs.append(accuracy_score(test_y, pred))
        f1.append(f1_score(test_y, pred, average="macro"))
    emb = {f"train {i}": train_x[i].tolist() for i in range(len(train))}
    emb |= {f"test {i}": test_x[i].tolist() for i in range(len(test))}
    return {
        "train": train, "test": test, "embeddings": emb,
        "accuracy": 100 * float(np.mean(accs)), "macro_f1": 100 * float(np.mean(f1)),
    }, gap


def clustering_task(rng):
    # Blobs are drawn until sklearn's 20 seeds all end in one partition (an
    # unambiguous best clustering, which our differently seeded k-means
    # should find too) that still mixes some points (V-measure < 1).
    k, dim = 5, 4
    while True:
        x, y = blobs(rng, rng.normal(0, 1.2, (k, dim)), 16, 0.45)
        runs = [KMeans(n_clusters=k, n_init=10, random_state=s).fit(x) for s in range(20)]
        km = runs[0]
        same = all(v_measure_score(km.labels_, r.labels_) == 1.0 for r in runs)
        v = v_measure_score(y, km.labels_)
        if same and v < 0.999:
            break
    # Recomputed in f64 from the assignment, as our k-means reports it.
    inertia = sum(np.sum((x[km.labels_ == c] - x[km.labels_ == c].mean(0)) ** 2) for c in range(k))
    return {
        "rows": [[f"topic{c}", f"point {i}"] for i, c in enumerate(y)],
        "embeddings": {f"point {i}": x[i].tolist() for i in range(len(y))},
        "k": k, "inertia": float(inertia), "v_measure": 100 * float(v),
    }


def main():
    rng = np.random.default_rng(2024)
    out = {
        "correlations": correlations(rng),
        "v_measure": v_measures(rng),
        "f1": f1s(rng),
        "logreg": logreg(rng),
        "sts_task": sts_task(rng),
        "classification_task": classification_task(rng),
        "clustering_task": clustering_task(rng),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
