//! The eval protocol's numbers against SciPy and scikit-learn on small
//! synthetic inputs: `tests/fixtures/sklearn_reference.json`, written by
//! `scripts/golden_eval_sklearn.py` (its docstring says what each number
//! is). The metrics are compared on their own and inside the tasks (the
//! files read as the real data sets are), so a wrong tie rule, a misread
//! column, a regularisation off by a factor or a label mix-up all show.
//!
//! Where the protocol is ours by definition, the reference follows it: the
//! classification draw is our SplitMix64 shuffle (re-implemented in the
//! script), and k-means cannot start where sklearn's does, so the
//! clustering data have one best partition that every sklearn seed finds,
//! and the optimum's inertia and V-measure are compared.

use std::collections::HashMap;
use std::path::Path;

use llm2comp_eval::metrics::correlation::{pearson, spearman};
use llm2comp_eval::metrics::f1::{accuracy, macro_f1};
use llm2comp_eval::metrics::kmeans::{KMeansOptions, kmeans};
use llm2comp_eval::metrics::logreg::{LogRegOptions, LogisticRegression, objective};
use llm2comp_eval::metrics::vmeasure::v_measure;
use llm2comp_eval::tasks::classification::Classification;
use llm2comp_eval::tasks::clustering::Clustering;
use llm2comp_eval::tasks::sts::Sts;
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sklearn_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Rows of f32 values (the fixture holds f32 values written exactly).
fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| f64s(r).into_iter().map(|x| x as f32).collect())
        .collect()
}

#[track_caller]
fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: {got} vs reference {want} (tolerance {tol:e})"
    );
}

/// Writes a TSV with `header` and the fixture's `rows` (arrays of fields).
fn write_tsv(path: &Path, header: &str, rows: &Value) {
    let mut s = format!("{header}\n");
    for r in rows.as_array().unwrap() {
        let fields: Vec<String> = r
            .as_array()
            .unwrap()
            .iter()
            .map(|f| match f {
                Value::String(t) => t.clone(),
                other => other.to_string(),
            })
            .collect();
        s.push_str(&fields.join("\t"));
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// One embedding row per text of a task, from the fixture's text → vector map.
fn embeddings(texts: &[String], map: &Value) -> Vec<Vec<f32>> {
    let map: HashMap<&str, Vec<f32>> = map
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, v)| (t.as_str(), f64s(v).into_iter().map(|x| x as f32).collect()))
        .collect();
    texts.iter().map(|t| map[t.as_str()].clone()).collect()
}

// Closed-form metrics in f64 on the same inputs: only summation order
// differs, so they agree to rounding (1e-12).

#[test]
fn spearman_and_pearson_match_scipy() {
    for (i, c) in fixture()["correlations"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let (x, y) = (f64s(&c["x"]), f64s(&c["y"]));
        let what = format!("series {i} (n {})", x.len());
        let s = spearman(&x, &y).unwrap();
        close(
            &format!("spearman {what}"),
            s,
            c["spearman"].as_f64().unwrap(),
            1e-12,
        );
        let p = pearson(&x, &y).unwrap();
        close(
            &format!("pearson {what}"),
            p,
            c["pearson"].as_f64().unwrap(),
            1e-12,
        );
    }
}

#[test]
fn v_measure_matches_sklearn() {
    for (i, c) in fixture()["v_measure"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let v = v_measure(&ids(&c["labels"]), &ids(&c["clusters"])).unwrap();
        close(
            &format!("case {i}"),
            v,
            c["v_measure"].as_f64().unwrap(),
            1e-12,
        );
    }
}

#[test]
fn accuracy_and_macro_f1_match_sklearn() {
    for (i, c) in fixture()["f1"].as_array().unwrap().iter().enumerate() {
        let (gold, pred) = (ids(&c["gold"]), ids(&c["pred"]));
        let a = accuracy(&gold, &pred).unwrap();
        close(
            &format!("accuracy {i}"),
            a,
            c["accuracy"].as_f64().unwrap(),
            1e-12,
        );
        let f = macro_f1(&gold, &pred).unwrap();
        close(
            &format!("macro_f1 {i}"),
            f,
            c["macro_f1"].as_f64().unwrap(),
            1e-12,
        );
    }
}

/// 8 rows per label, 4 labels, 6 features: the probe's training set size.
#[test]
fn logistic_regression_matches_sklearn_at_the_optimum() {
    let g = fixture();
    let r = &g["logreg"];
    let (x, y) = (rows(&r["x"]), ids(&r["y"]));
    let classes = r["classes"].as_u64().unwrap() as usize;
    let c = r["c"].as_f64().unwrap();
    let dim = x[0].len();
    // sklearn's solution in our layout: [(D + 1) × C], the last row the bias.
    let coef = rows(&r["coef"]);
    let intercept = f64s(&r["intercept"]);
    let mut w_sk = vec![0f32; (dim + 1) * classes];
    for (k, row) in coef.iter().enumerate() {
        for (d, &v) in row.iter().enumerate() {
            w_sk[d * classes + k] = v;
        }
        w_sk[dim * classes + k] = intercept[k] as f32;
    }
    // Our objective is sklearn's divided by C·n: the same value at the same
    // weights, up to the f32 logits (relative ~1e-7).
    let lambda = 1.0 / (c * x.len() as f64);
    let (obj, _) = objective(&x, &y, &w_sk, classes, lambda);
    let want = r["objective"].as_f64().unwrap();
    close("objective at sklearn's weights", obj, want, 1e-6 * want);

    // Fitted tightly, our weights land on sklearn's optimum. Gradient entries
    // below 1e-6 and strong convexity 1/(C·n) = 1/32 bound the distance by
    // 32 · 1e-6 · √28 ≈ 2e-4; f32 gradients add rounding of the same order.
    let tight = LogRegOptions {
        c,
        max_iter: 20_000,
        tol: 1e-6,
    };
    let m = LogisticRegression::fit(&x, &y, classes, &tight).unwrap();
    let dist =
        m.w.iter()
            .zip(&w_sk)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
    assert!(dist <= 5e-4, "‖w − w_sklearn‖ = {dist:.2e}");
    let (ours, _) = objective(&x, &y, &m.w, classes, lambda);
    assert!(
        ours <= want + 1e-7,
        "our optimum {ours} vs sklearn's {want}"
    );

    // With the protocol's own settings, the same predictions as sklearn.
    let m = LogisticRegression::fit(&x, &y, classes, &LogRegOptions::default()).unwrap();
    let pred = m.predict(&rows(&r["test_x"])).unwrap();
    assert_eq!(pred, ids(&r["predictions"]));
}

/// Cosines of 40 pairs against gold scores in steps of 0.5 (many ties).
#[test]
fn sts_task_matches_scipy() {
    let g = fixture();
    let t = &g["sts_task"];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.tsv");
    write_tsv(&path, "score\tsentence1\tsentence2", &t["rows"]);
    let task = Sts::load(&path, None).unwrap();
    let scores = task
        .score(&embeddings(task.texts(), &t["embeddings"]))
        .unwrap();
    let by = |m: &str| scores.iter().find(|s| s.metric == m).unwrap().value;
    close(
        "spearman",
        by("spearman"),
        t["spearman"].as_f64().unwrap(),
        1e-9,
    );
    close(
        "pearson",
        by("pearson"),
        t["pearson"].as_f64().unwrap(),
        1e-9,
    );
}

/// 4 labels of 14 training and 6 test rows, the protocol's 10 draws of 8
/// per label: the same training rows, sklearn's fits and metrics, so the
/// same mean accuracy and macro-F1 exactly (the script keeps every test
/// prediction clear of a near tie).
#[test]
fn classification_task_matches_sklearn() {
    let g = fixture();
    let t = &g["classification_task"];
    let dir = tempfile::tempdir().unwrap();
    write_tsv(&dir.path().join("train.tsv"), "label\ttext", &t["train"]);
    write_tsv(&dir.path().join("test.tsv"), "label\ttext", &t["test"]);
    let task = Classification::load(dir.path(), None).unwrap();
    let scores = task
        .score(&embeddings(task.texts(), &t["embeddings"]))
        .unwrap();
    let by = |m: &str| scores.iter().find(|s| s.metric == m).unwrap().value;
    close(
        "accuracy",
        by("accuracy"),
        t["accuracy"].as_f64().unwrap(),
        1e-9,
    );
    close(
        "macro_f1",
        by("macro_f1"),
        t["macro_f1"].as_f64().unwrap(),
        1e-9,
    );
}

/// 5 overlapping blobs of 16 points: the task's k-means (3 k-means++
/// restarts, seed 42) reaches the partition every sklearn seed reaches.
#[test]
fn clustering_task_matches_the_sklearn_optimum() {
    let g = fixture();
    let t = &g["clustering_task"];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.tsv");
    write_tsv(&path, "label\ttext", &t["rows"]);
    let task = Clustering::load(&path, None).unwrap();
    let emb = embeddings(task.texts(), &t["embeddings"]);
    let scores = task.score(&emb).unwrap();
    close(
        "v_measure",
        scores[0].value,
        t["v_measure"].as_f64().unwrap(),
        1e-9,
    );
    // The same optimum, by its inertia (every text occurs once, so the
    // task's rows are the distinct texts).
    let opts = KMeansOptions {
        k: t["k"].as_u64().unwrap() as usize,
        restarts: 3,
        max_iter: 100,
        seed: 42,
    };
    let want = t["inertia"].as_f64().unwrap();
    close(
        "inertia",
        kmeans(&emb, &opts).unwrap().inertia,
        want,
        1e-9 * want,
    );
}
