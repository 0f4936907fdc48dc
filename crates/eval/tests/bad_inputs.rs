//! Inputs that must end in an error, not a score: non-finite embeddings,
//! non-finite gold scores, and data sets that leave nothing to average
//! (which used to print 0.00, a score no model deserves or can be blamed for).

use std::path::Path;

use llm2comp_eval::{Task, tasks::find};

fn write(dir: &Path, rel: &str, body: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

fn load_err(dir: &Path, task: &str) -> String {
    Task::load(find(task).unwrap(), dir, None)
        .err()
        .unwrap_or_else(|| panic!("{task} loaded"))
        .to_string()
}

#[test]
fn non_finite_gold_scores_are_refused_naming_the_line() {
    for bad in ["NaN", "inf", "-inf", "nan"] {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "sts/stsb/test.tsv",
            &format!("score\tsentence1\tsentence2\n1.0\ta\tb\n{bad}\ta\tc\n"),
        );
        let e = load_err(d.path(), "stsb");
        assert!(
            e.contains("test.tsv:3") && e.contains("not a finite number"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn non_finite_embeddings_are_refused_naming_the_row() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "sts/stsb/test.tsv",
        "score\tsentence1\tsentence2\n1.0\ta\tb\n2.0\ta\tc\n3.0\tb\tc\n",
    );
    let t = Task::load(find("stsb").unwrap(), d.path(), None).unwrap();
    let good = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
    assert!(t.score(&good).is_ok());
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut emb = good.clone();
        emb[2][1] = bad;
        let e = t.score(&emb).unwrap_err().to_string();
        assert!(e.contains("row 2") && e.contains("column 1"), "{e}");
    }
}

#[test]
fn an_sts_file_without_pairs_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "sts/stsb/test.tsv",
        "score\tsentence1\tsentence2\n",
    );
    let e = load_err(d.path(), "stsb");
    assert!(e.contains("no sentence pairs"), "{e}");
}

#[test]
fn retrieval_without_usable_queries_or_documents_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let corpus = "{\"_id\": \"d1\", \"title\": \"\", \"text\": \"one\"}\n";
    write(d.path(), "retrieval/scifact/corpus.jsonl", corpus);
    write(
        d.path(),
        "retrieval/scifact/queries.jsonl",
        "{\"_id\": \"q1\", \"text\": \"cat?\"}\n",
    );
    // Only a zero judgement: no query is usable.
    write(
        d.path(),
        "retrieval/scifact/qrels.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\t0\n",
    );
    let e = load_err(d.path(), "scifact");
    assert!(e.contains("no query") && e.contains("qrels.tsv"), "{e}");

    write(
        d.path(),
        "retrieval/scifact/qrels.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\t1\n",
    );
    write(d.path(), "retrieval/scifact/corpus.jsonl", "");
    let e = load_err(d.path(), "scifact");
    assert!(
        e.contains("corpus.jsonl") && e.contains("no documents"),
        "{e}"
    );
}

#[test]
fn labelled_files_without_rows_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    let one = "label\ttext\ncats\tcat one\n";
    write(d.path(), "classification/banking77/train.tsv", one);
    write(
        d.path(),
        "classification/banking77/test.tsv",
        "label\ttext\n",
    );
    let e = load_err(d.path(), "banking77");
    assert!(e.contains("test.tsv: no labelled rows"), "{e}");
    let e = load_err(d.path(), "banking77-clustering");
    assert!(e.contains("test.tsv: no labelled rows"), "{e}");
    write(d.path(), "classification/banking77/test.tsv", one);
    write(
        d.path(),
        "classification/banking77/train.tsv",
        "label\ttext\n",
    );
    let e = load_err(d.path(), "banking77");
    assert!(e.contains("train.tsv: no labelled rows"), "{e}");
}
