//! Memory-mapped safetensors: values come back exactly in each dtype, single
//! files and sharded sets open alike, and every defect (missing, misshaped,
//! wrongly typed, duplicated or truncated tensor, missing shard) is an error
//! naming the tensor and the file.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use llm2comp_backbone::SafetensorsFiles;
use safetensors::tensor::{Dtype, TensorView};

fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sample(dir: &Path) -> PathBuf {
    let p = dir.join("model.safetensors");
    let bf: Vec<u8> = [1.5f32, -2.0, 0.25]
        .iter()
        .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
        .collect();
    let hf: Vec<u8> = [3.0f32, 0.5]
        .iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect();
    write(
        &p,
        &[
            (
                "model.norm.weight",
                Dtype::F32,
                vec![2, 3],
                f32_bytes(&[1., 2., 3., 4., 5., 6.]),
            ),
            ("model.embed_tokens.weight", Dtype::BF16, vec![3, 1], bf),
            ("lm_head.weight", Dtype::F16, vec![1, 2], hf),
            ("ids", Dtype::I64, vec![1], 7i64.to_le_bytes().to_vec()),
        ],
    );
    p
}

#[test]
fn values_come_back_exactly_in_each_dtype() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    // Opening the directory finds model.safetensors.
    let st = SafetensorsFiles::open(dir.path()).unwrap();
    assert_eq!(
        st.names(),
        vec![
            "ids",
            "lm_head.weight",
            "model.embed_tokens.weight",
            "model.norm.weight"
        ]
    );
    let t = st.tensor("model.norm.weight", &[2, 3]).unwrap();
    assert_eq!(t.as_slice::<f32>().unwrap(), &[1., 2., 3., 4., 5., 6.]);
    let t = st.tensor("model.embed_tokens.weight", &[3, 1]).unwrap();
    assert_eq!(t.to_vec_f32(), vec![1.5, -2.0, 0.25]);
    assert_eq!(t.dtype(), llm2comp_tensor::DType::BF16);
    let t = st.tensor("lm_head.weight", &[1, 2]).unwrap();
    assert_eq!(t.to_vec_f32(), vec![3.0, 0.5]);
}

#[test]
fn defects_name_the_tensor_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = sample(dir.path());
    let st = SafetensorsFiles::open(&p).unwrap();
    let file = p.display().to_string();
    let e = st
        .tensor("model.norm.weight", &[3, 2])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&file)
            && e.contains("model.norm.weight")
            && e.contains("[2, 3]")
            && e.contains("[3, 2]"),
        "{e}"
    );
    let e = st
        .tensor("model.layers.0.mlp.up_proj.weight", &[1])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0.mlp.up_proj.weight")
            && e.contains("missing")
            && e.contains(&file),
        "{e}"
    );
    let e = st.tensor("ids", &[1]).unwrap_err().to_string();
    assert!(e.contains("ids") && e.contains("I64"), "{e}");
}

#[test]
fn a_truncated_file_is_refused_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let p = sample(dir.path());
    let bytes = std::fs::read(&p).unwrap();
    for cut in [1, 9, bytes.len() - 4] {
        std::fs::write(&p, &bytes[..bytes.len() - cut]).unwrap();
        let e = SafetensorsFiles::open(&p).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("truncated"),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn shards_open_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("a.safetensors"),
        &[("x", Dtype::F32, vec![2], f32_bytes(&[1., 2.]))],
    );
    write(
        &d.join("b.safetensors"),
        &[("y", Dtype::F32, vec![1], f32_bytes(&[3.]))],
    );
    let index = r#"{"metadata": {}, "weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}"#;
    std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();
    let st = SafetensorsFiles::open(d).unwrap();
    assert_eq!(st.names(), vec!["x", "y"]);
    assert_eq!(st.file_of("y"), Some(d.join("b.safetensors").as_path()));
    assert_eq!(st.tensor("y", &[1]).unwrap().to_vec_f32(), vec![3.0]);
    // The index file itself opens the same shards (it is not a shard).
    let by_index = SafetensorsFiles::open(d.join("model.safetensors.index.json")).unwrap();
    assert_eq!(by_index.names(), vec!["x", "y"]);

    // A stale index: a tensor in another shard than it says, or in none.
    let stale = r#"{"weight_map": {"x": "b.safetensors", "y": "a.safetensors"}}"#;
    std::fs::write(d.join("model.safetensors.index.json"), stale).unwrap();
    let e = SafetensorsFiles::open(d).unwrap_err().to_string();
    assert!(
        e.contains("puts tensor `x`") && e.contains("but it is in"),
        "{e}"
    );
    let stale =
        r#"{"weight_map": {"x": "a.safetensors", "y": "b.safetensors", "z": "b.safetensors"}}"#;
    std::fs::write(d.join("model.safetensors.index.json"), stale).unwrap();
    let e = SafetensorsFiles::open(d).unwrap_err().to_string();
    assert!(e.contains("`z`") && e.contains("does not hold it"), "{e}");
    std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();

    // The same tensor in two shards is ambiguous.
    write(
        &d.join("b.safetensors"),
        &[("x", Dtype::F32, vec![1], f32_bytes(&[3.]))],
    );
    let e = SafetensorsFiles::open(d).unwrap_err().to_string();
    assert!(e.contains("tensor `x` is also in"), "{e}");

    // A shard the index names but the directory lacks.
    std::fs::remove_file(d.join("b.safetensors")).unwrap();
    let e = SafetensorsFiles::open(d).unwrap_err().to_string();
    assert!(e.contains("b.safetensors"), "{e}");

    // A shard path that escapes the directory.
    let bad = r#"{"weight_map": {"x": "../a.safetensors"}}"#;
    std::fs::write(d.join("model.safetensors.index.json"), bad).unwrap();
    let e = SafetensorsFiles::open(d).unwrap_err().to_string();
    assert!(e.contains("plain file name"), "{e}");
}

#[test]
fn a_directory_without_weights_names_what_it_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let e = SafetensorsFiles::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}
