//! `cargo xtask new-op NAME`: the files of a new op family, wired in so the
//! workspace builds and the family's tests run — and fail until its
//! `unimplemented!`s and FILL INs are written. The templates (new_op/*.tmpl)
//! are an elementwise y = f(x) with dx = f'(x)·dy, the smallest complete
//! family: ops dispatch, CPU kernel with a reference and a finite-difference
//! test, CUDA launcher and kernel (NaN until written, so the GPU test fails),
//! the GPU test, a criterion bench and the docs' table row.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const OPS: &str = include_str!("new_op/ops.rs.tmpl");
const CPU: &str = include_str!("new_op/cpu.rs.tmpl");
const CUDA: &str = include_str!("new_op/cuda.rs.tmpl");
const KERNEL: &str = include_str!("new_op/kernel.cu.tmpl");
const GPU_TEST: &str = include_str!("new_op/gpu_test.rs.tmpl");
const BENCH: &str = include_str!("new_op/bench.rs.tmpl");

fn fill(t: &str, name: &str) -> String {
    t.replace("{{name}}", name)
        .replace("{{NAME}}", &name.to_uppercase())
}

/// Inserts `line` among the consecutive lines of `file` that start with
/// `prefix`, in sorted order.
fn insert_sorted(file: &Path, prefix: &str, line: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.starts_with(prefix))
        .with_context(|| format!("{}: no `{prefix}` line to insert beside", file.display()))?;
    let mut at = first;
    while at < lines.len() && lines[at].starts_with(prefix) && lines[at] < line {
        at += 1;
    }
    lines.insert(at, line);
    std::fs::write(file, lines.join("\n") + "\n")?;
    Ok(())
}

/// Appends a row to the docs' table of op families (after its last row).
fn add_doc_row(file: &Path, name: &str) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let head = text
        .find("| family | forward | backward |")
        .with_context(|| format!("{}: no op-family table", file.display()))?;
    let mut end = head;
    for l in text[head..].split_inclusive('\n') {
        if !l.starts_with('|') {
            break;
        }
        end += l.len();
    }
    let row = format!(
        "| `{name}` | FILL IN (`cargo xtask new-op` wrote an elementwise stub) | FILL IN |\n"
    );
    std::fs::write(file, format!("{}{row}{}", &text[..end], &text[end..]))?;
    Ok(())
}

/// Writes and wires the family `name` under the repository `root`; returns
/// the files written. Does not build the PTX (the caller runs `ptx`).
pub fn new_op(root: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!("op name {name:?}: use snake_case (a-z, 0-9, _), starting with a letter");
    }
    let tensor = root.join("crates/tensor");
    let files = [
        (tensor.join(format!("src/ops/{name}.rs")), OPS),
        (tensor.join(format!("src/cpu/{name}.rs")), CPU),
        (tensor.join(format!("src/cuda/{name}.rs")), CUDA),
        (root.join(format!("kernels/{name}.cu")), KERNEL),
        (tensor.join(format!("tests/gpu/{name}.rs")), GPU_TEST),
        (root.join(format!("benches/{name}.rs")), BENCH),
    ];
    if let Some((p, _)) = files.iter().find(|(p, _)| p.exists()) {
        bail!("{} exists: the family {name} is already there", p.display());
    }
    for (p, t) in &files {
        std::fs::write(p, fill(t, name)).with_context(|| format!("writing {}", p.display()))?;
    }
    let module = format!("pub mod {name};");
    for m in ["src/ops/mod.rs", "src/cpu/mod.rs", "src/cuda/mod.rs"] {
        insert_sorted(&tensor.join(m), "pub mod ", &module)?;
    }
    insert_sorted(
        &tensor.join("tests/gpu/main.rs"),
        "mod ",
        &format!("mod {name};"),
    )?;
    let cargo = root.join("benches/Cargo.toml");
    let mut c = std::fs::read_to_string(&cargo)?;
    c.push_str(&format!(
        "\n[[bench]]\nname = \"{name}\"\npath = \"{name}.rs\"\nharness = false\n"
    ));
    std::fs::write(&cargo, c)?;
    add_doc_row(&root.join("docs/architecture.md"), name)?;
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch tree holding copies of the files `new_op` edits.
    fn scratch() -> PathBuf {
        let repo = crate::repo_root();
        let d = std::env::temp_dir().join(format!("xtask-new-op-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for f in [
            "crates/tensor/src/ops/mod.rs",
            "crates/tensor/src/cpu/mod.rs",
            "crates/tensor/src/cuda/mod.rs",
            "crates/tensor/tests/gpu/main.rs",
            "benches/Cargo.toml",
            "docs/architecture.md",
        ] {
            std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            std::fs::copy(repo.join(f), d.join(f)).unwrap();
        }
        std::fs::create_dir_all(d.join("kernels")).unwrap();
        d
    }

    #[test]
    fn new_op_writes_and_wires_a_family_once() {
        let d = scratch();
        let files = new_op(&d, "softcap").unwrap();
        assert_eq!(files.len(), 6);
        assert!(files.iter().all(|f| f.is_file()));
        let read = |p: &str| std::fs::read_to_string(d.join(p)).unwrap();
        for m in ["ops", "cpu", "cuda"] {
            assert!(read(&format!("crates/tensor/src/{m}/mod.rs")).contains("pub mod softcap;\n"));
        }
        let ops = read("crates/tensor/src/ops/mod.rs");
        let (a, b) = (
            ops.find("pub mod rope;").unwrap(),
            ops.find("pub mod softcap;").unwrap(),
        );
        assert!(
            a < b && b < ops.find("pub mod swiglu;").unwrap(),
            "sorted among the modules"
        );
        assert!(read("crates/tensor/tests/gpu/main.rs").contains("mod softcap;"));
        assert!(read("benches/Cargo.toml").contains("name = \"softcap\""));
        assert!(read("docs/architecture.md").contains("| `softcap` | FILL IN"));
        let k = read("kernels/softcap.cu");
        assert!(k.starts_with("// softcap: FILL IN") && k.contains("softcap_bwd_bf16"));
        assert!(read("crates/tensor/src/cuda/softcap.rs").contains("modules::SOFTCAP"));
        let e = new_op(&d, "softcap").unwrap_err().to_string();
        assert!(e.contains("already there"), "{e}");
        assert!(new_op(&d, "Soft-Cap").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
