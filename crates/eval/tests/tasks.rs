//! Whole tasks on tiny files with embeddings built so the answer is known.

use std::path::Path;

use llm2comp_eval::tasks::{DEFAULT_TASKS, find};
use llm2comp_eval::{CachedEncoder, Encoder, Result, Task};

/// One-hot of the text's first word among `vocab` (a perfect "model").
struct FirstWord(Vec<&'static str>);

impl Encoder for FirstWord {
    fn encode(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let w = t.split_whitespace().next().unwrap_or_default();
                self.0
                    .iter()
                    .map(|v| if *v == w { 1.0 } else { 0.0 })
                    .collect()
            })
            .collect())
    }
}

fn write(dir: &Path, rel: &str, body: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

#[test]
fn tasks_score_a_perfect_encoder_fully() {
    let d = tempfile::tempdir().unwrap();
    // Same first word <-> score 5, else 0 (ties on both sides).
    write(
        d.path(),
        "sts/stsb/test.tsv",
        "score\tsentence1\tsentence2\n5.0\tcat a\tcat b\n0\tcat a\tdog c\n5\tdog c\tdog d\n0.0\tbird x\tcat b\n",
    );
    let mut train = String::from("label\ttext\n");
    let mut test = String::from("label\ttext\n");
    for l in ["cat", "dog", "bird"] {
        for i in 0..10 {
            train.push_str(&format!("{l}s\t{l} train {i}\n"));
        }
        for i in 0..4 {
            test.push_str(&format!("{l}s\t{l} test {i}\n"));
        }
    }
    write(d.path(), "classification/banking77/train.tsv", &train);
    write(d.path(), "classification/banking77/test.tsv", &test);
    let mut enc = CachedEncoder::new(FirstWord(vec!["cat", "dog", "bird"]));
    let mut main = Vec::new();
    for name in DEFAULT_TASKS.split(',').filter(|n| *n != "sickr") {
        let task = Task::load(find(name).unwrap(), d.path(), None).unwrap();
        let scores = task.evaluate(&mut enc).unwrap();
        main.push((name, scores[0].metric, scores[0].value));
    }
    for (name, metric, v) in &main {
        assert!((v - 100.0).abs() < 1e-9, "{name} {metric} = {v}");
    }
    // STS sentences 5 distinct + 24 + 12 classification texts; the clustering
    // task reuses the 12 test texts from the cache.
    assert_eq!(enc.encoded, 5 + 30 + 12);

    // A limit keeps about that many rows, spread over the file.
    let t = Task::load(find("banking77").unwrap(), d.path(), Some(6)).unwrap();
    assert_eq!(t.texts().len(), 6 + 6);
    // Rows must match the text list.
    let sts = Task::load(find("stsb").unwrap(), d.path(), None).unwrap();
    let err = sts.score(&[vec![1.0]]).unwrap_err().to_string();
    assert!(err.contains("5 rows"), "{err}");
    assert!(find("nope").unwrap_err().to_string().contains("stsb"));
}

#[test]
fn retrieval_by_hand() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "retrieval/scifact/corpus.jsonl",
        concat!(
            "{\"_id\": \"d1\", \"title\": \"cat\", \"text\": \"one\"}\n",
            "{\"_id\": \"d2\", \"title\": \"\", \"text\": \"dog two\"}\n",
            "{\"_id\": \"d3\", \"title\": \"bird\", \"text\": \"three\\nlines\"}\n"
        ),
    );
    write(
        d.path(),
        "retrieval/scifact/queries.jsonl",
        concat!(
            "{\"_id\": \"q1\", \"text\": \"cat?\"}\n",
            "{\"_id\": \"q2\", \"text\": \"dog?\"}\n",
            "{\"_id\": \"q3\", \"text\": \"unjudged\"}\n"
        ),
    );
    write(
        d.path(),
        "retrieval/scifact/qrels.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\nq2\td2\t2\n",
    );
    let t = Task::load(find("scifact").unwrap(), d.path(), None).unwrap();
    assert_eq!(
        t.texts(),
        ["cat?", "dog?", "cat one", "dog two", "bird three lines"]
    );
    // q1 -> d1 first: nDCG 1. q2 -> [dog, cat, bird] + ties: d2 (rel 2) first,
    // then d1 (index order among the zero scores), then d3 (rel 1):
    // DCG = 2 + 1/log2(4) = 2.5; IDCG = 2 + 1/log2(3) -> 2.5/2.6309298.
    let emb = vec![
        vec![1.0, 0.0],
        vec![0.0, 1.0],
        vec![1.0, 0.0],
        vec![0.0, 1.0],
        vec![0.0, 0.0],
    ];
    let s = t.score(&emb).unwrap();
    let q2 = 2.5 / (2.0 + 1.0 / 3f64.log2());
    assert!(
        (s[0].value - 100.0 * (1.0 + q2) / 2.0).abs() < 1e-9,
        "{s:?}"
    );
    assert_eq!(s[1].value, 100.0);
}
