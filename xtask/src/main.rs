//! Developer tasks, run as `cargo xtask <task>`.
//!
//! `ptx [--check]`: compiles every `kernels/*.cu` to `kernels/ptx/*.ptx`
//! (compute_80 PTX; `*_sm90a.cu` files compute_90a PTX for Hopper).
//! The PTX is committed and embedded by `crates/tensor`, so a normal build
//! never needs nvcc; only kernel authors and CI's staleness check do. nvcc
//! comes from `$NVCC`, the PATH, or the pinned CUDA 13.0.88 PyPI wheels
//! installed into a cache directory: their PTX ISA (9.0) is the newest the
//! deployed 580 drivers load, and newer wheels emit PTX those drivers reject.

mod new_op;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The PyPI wheels that make up a CUDA 13.0 nvcc, pinned as a set.
const NVCC_WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
];
/// Virtual architecture of the emitted PTX: runs on sm_80 and later by JIT.
const PTX_ARCH: &str = "compute_80";
/// Real architectures every portable PTX file must assemble for.
const PTXAS_ARCHS: &[&str] = &["sm_80", "sm_90"];
/// Kernels named `*_sm90a.cu` use Hopper-only instructions (wgmma): they are
/// compiled for this virtual architecture and assembled for sm_90a only; the
/// runtime loads them on compute capability 9.0 alone.
const HOPPER_SUFFIX: &str = "_sm90a";
const HOPPER_PTX_ARCH: &str = "compute_90a";
const HOPPER_PTXAS_ARCHS: &[&str] = &["sm_90a"];

/// (virtual arch to compile for, real archs to assemble for) of a kernel file stem.
fn archs(stem: &str) -> (&'static str, &'static [&'static str]) {
    if stem.ends_with(HOPPER_SUFFIX) {
        (HOPPER_PTX_ARCH, HOPPER_PTXAS_ARCHS)
    } else {
        (PTX_ARCH, PTXAS_ARCHS)
    }
}
/// Newest PTX ISA the CUDA 13.0 driver accepts.
const MAX_PTX_ISA: (u32, u32) = (9, 0);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["ptx"] => ptx(false),
        ["ptx", "--check"] => ptx(true),
        ["new-op", name] => {
            for f in new_op::new_op(&repo_root(), name)? {
                println!("wrote {}", f.display());
            }
            // The new kernel's PTX and the module table that embeds it.
            ptx(false)?;
            println!(
                "\nnew op family `{name}`: the workspace builds; its tests fail until the \
                 FILL INs and unimplemented!s are written (docs/architecture.md, Extending)"
            );
            Ok(())
        }
        _ => {
            eprintln!("usage: cargo xtask ptx [--check] | cargo xtask new-op NAME");
            eprintln!("  ptx          compile kernels/*.cu to kernels/ptx/*.ptx");
            eprintln!("  ptx --check  fail if a committed .ptx is stale; validate with ptxas");
            eprintln!(
                "  new-op NAME  write and wire a new op family's files (see docs/architecture.md)"
            );
            std::process::exit(2);
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}

fn kernel_sources(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("kernels");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "cu") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn ptx(check: bool) -> Result<()> {
    let root = repo_root();
    let sources = kernel_sources(&root)?;
    if sources.is_empty() {
        println!("no kernels/*.cu yet: nothing to compile or check");
        return Ok(());
    }
    let nvcc = find_nvcc()?;
    let ptxas = nvcc.with_file_name("ptxas");
    let out_dir = root.join("kernels/ptx");
    std::fs::create_dir_all(&out_dir)?;
    let scratch = std::env::temp_dir().join(format!("llm2comp-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let mut stale = Vec::new();
    for src in &sources {
        let name = src.file_stem().unwrap().to_string_lossy().to_string();
        let fresh = scratch.join(format!("{name}.ptx"));
        compile(&nvcc, &staged(&root, src)?, &fresh, archs(&name).0)?;
        check_isa(&fresh)?;
        let committed = out_dir.join(format!("{name}.ptx"));
        if check {
            let old = std::fs::read(&committed).unwrap_or_default();
            if old != std::fs::read(&fresh)? {
                stale.push(committed.display().to_string());
            }
        } else {
            std::fs::copy(&fresh, &committed)?;
            println!("wrote {}", committed.display());
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let table_path = root.join(MODULE_TABLE);
    let table = module_table(&sources)?;
    if check {
        if std::fs::read_to_string(&table_path).unwrap_or_default() != table {
            stale.push(table_path.display().to_string());
        }
    } else {
        std::fs::write(&table_path, &table)?;
        println!("wrote {}", table_path.display());
    }
    if !stale.is_empty() {
        bail!(
            "stale or missing PTX (run `cargo xtask ptx` and commit): {}",
            stale.join(", ")
        );
    }
    for src in &sources {
        let name = src.file_stem().unwrap().to_string_lossy().to_string();
        validate(&ptxas, &out_dir.join(format!("{name}.ptx")), archs(&name).1)?;
    }
    Ok(())
}

/// The tensor crate's table of PTX modules, generated so a new
/// `kernels/<family>.cu` is embedded without editing Rust by hand.
const MODULE_TABLE: &str = "crates/tensor/src/cuda/modules_table.rs";

/// The table's text: one `Module` constant per kernel source, named after
/// it (`attention_sm90a.cu` -> `ATTENTION_SM90A`), documented with the first
/// line of the source's header comment.
fn module_table(sources: &[PathBuf]) -> Result<String> {
    let mut out = String::from(
        "// Generated by `cargo xtask ptx` from kernels/*.cu: do not edit (a stale\n\
         // table fails `cargo xtask ptx --check`). Included by cuda/modules.rs.\n",
    );
    for src in sources {
        let name = src.file_stem().unwrap().to_string_lossy().to_string();
        let text =
            std::fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?;
        let doc = summary(&text).with_context(|| {
            format!(
                "{}: the first line must be a `// ...` summary",
                src.display()
            )
        })?;
        out.push_str(&format!(
            "\n/// {doc}\npub const {}: Module =\n    Module::new(\"{name}\", include_str!(\"../../../../kernels/ptx/{name}.ptx\"));\n",
            name.to_uppercase()
        ));
    }
    Ok(out)
}

/// The first sentence of a source's leading `//` comment paragraph.
fn summary(text: &str) -> Option<String> {
    let para: Vec<&str> = text
        .lines()
        .map_while(|l| l.strip_prefix("//"))
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let joined = para.join(" ");
    if joined.is_empty() {
        return None;
    }
    // A period ends the sentence only before a space (not in `torch.optim`).
    let end = joined
        .char_indices()
        .find(|&(i, c)| c == '.' && joined[i + 1..].starts_with(' '))
        .map_or(joined.len(), |(i, _)| i + 1);
    Some(joined[..end].to_string())
}

fn compile(nvcc: &Path, src: &Path, out: &Path, arch: &str) -> Result<()> {
    let status = Command::new(nvcc)
        .args(["-ptx", "-O3", "-std=c++17", "-lineinfo"])
        .arg(format!("-arch={arch}"))
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .with_context(|| format!("running {}", nvcc.display()))?;
    if !status.success() {
        bail!("nvcc failed on {}", src.display());
    }
    let text = std::fs::read_to_string(out)?;
    std::fs::write(out, portable_file_paths(&text))?;
    Ok(())
}

/// Where sources are compiled from. nvcc mangles a hash of the source file's
/// absolute path into internal symbol names, so PTX built from two checkouts
/// differs; compiling a copy at one fixed path makes the output depend on the
/// source alone, and `--check` works in any clone. (Two concurrent runs on one
/// machine would share this directory: do not run them in parallel.)
const STAGE_DIR: &str = "/tmp/llm2comp-kernels-stage";

/// Copies every file of `kernels/` (headers too) to [`STAGE_DIR`] and returns
/// the staged path of `src`.
fn staged(root: &Path, src: &Path) -> Result<PathBuf> {
    let dir = Path::new(STAGE_DIR).join("kernels");
    std::fs::create_dir_all(&dir)?;
    for e in std::fs::read_dir(root.join("kernels"))? {
        let p = e?.path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap()))?;
        }
    }
    Ok(dir.join(src.file_name().unwrap()))
}

/// `-lineinfo` records absolute paths in `.file` directives: the checkout's
/// and nvcc's install directory. Both differ between machines, which would make
/// every committed PTX look stale elsewhere; rewrite them to `kernels/x.cu`
/// and `<cuda>/include/x.h` (profilers still map lines by file name).
fn portable_file_paths(ptx: &str) -> String {
    let mut out = String::with_capacity(ptx.len());
    for line in ptx.lines() {
        match line.split_once('"') {
            Some((head, rest)) if line.trim_start().starts_with(".file") => {
                let (path, tail) = rest.split_once('"').unwrap_or((rest, ""));
                let portable = if let Some(i) = path.rfind("/kernels/") {
                    path[i + 1..].to_string()
                } else if let Some(i) = path.rfind("/include/") {
                    format!("<cuda>{}", &path[i..])
                } else {
                    path.to_string()
                };
                out.push_str(&format!("{head}\"{portable}\"{tail}"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Refuses PTX whose `.version` the deployed driver would reject at load time.
fn check_isa(ptx: &Path) -> Result<()> {
    let text = std::fs::read_to_string(ptx)?;
    let line = text
        .lines()
        .find(|l| l.starts_with(".version"))
        .with_context(|| format!("{}: no .version line", ptx.display()))?;
    let v = line.trim_start_matches(".version").trim();
    let (maj, min) = v
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .with_context(|| format!("{}: unreadable `{line}`", ptx.display()))?;
    if (maj, min) > MAX_PTX_ISA {
        bail!(
            "{}: PTX ISA {maj}.{min} is newer than {}.{} (CUDA 13.0 driver); use the pinned nvcc 13.0.88",
            ptx.display(),
            MAX_PTX_ISA.0,
            MAX_PTX_ISA.1
        );
    }
    Ok(())
}

/// Assembles the PTX for each target architecture and prints ptxas's resource report.
fn validate(ptxas: &Path, ptx: &Path, archs: &[&str]) -> Result<()> {
    for arch in archs {
        let out = Command::new(ptxas)
            .args(["-v", "-o", "/dev/null"])
            .arg(format!("-arch={arch}"))
            .arg(ptx)
            .output()
            .with_context(|| format!("running {}", ptxas.display()))?;
        let report = String::from_utf8_lossy(&out.stderr);
        println!("== {} on {arch}", ptx.display());
        for l in report
            .lines()
            .filter(|l| l.contains("registers") || l.contains("spill") || l.contains("Compiling"))
        {
            println!("  {}", l.trim_start_matches("ptxas info    : "));
        }
        if !out.status.success() {
            bail!("ptxas rejected {} for {arch}:\n{report}", ptx.display());
        }
    }
    Ok(())
}

/// `$NVCC`, then the PATH, then the pinned wheels in the cache (installed on first use).
fn find_nvcc() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
    {
        return Ok(p);
    }
    let cache = std::env::var_os("LLM2COMP_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("llm2comp")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/llm2comp")))
        .context("no HOME or XDG_CACHE_HOME to put the nvcc cache in; set NVCC")?
        .join("nvcc-13.0.88");
    let nvcc = cache.join("nvidia/cu13/bin/nvcc");
    if !nvcc.is_file() {
        eprintln!("installing nvcc 13.0.88 from PyPI into {}", cache.display());
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&cache)
            .args(NVCC_WHEELS)
            .status()
            .context("running python3 -m pip (needed to fetch nvcc; or set NVCC)")?;
        if !status.success() || !nvcc.is_file() {
            bail!("could not install nvcc into {}", cache.display());
        }
    }
    Ok(nvcc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_table_lists_every_kernel_with_its_summary() {
        let d = std::env::temp_dir().join(format!("xtask-table-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let a = d.join("attention_sm90a.cu");
        std::fs::write(
            &a,
            "// Attention on Hopper (torch.nn style).\n// More. Not this\n",
        )
        .unwrap();
        let b = d.join("cast.cu");
        std::fs::write(&b, "// Casts.\n").unwrap();
        let t = module_table(&[a.clone(), b]).unwrap();
        assert!(
            t.contains(
                "/// Attention on Hopper (torch.nn style).\npub const ATTENTION_SM90A: Module ="
            ),
            "{t}"
        );
        assert!(
            t.contains("Module::new(\"cast\", include_str!(\"../../../../kernels/ptx/cast.ptx\"))"),
            "{t}"
        );
        std::fs::write(&a, "#include <x>\n").unwrap();
        assert!(
            module_table(&[a])
                .unwrap_err()
                .to_string()
                .contains("first line")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The committed table is what the kernels say (no nvcc needed for this part).
    #[test]
    fn the_committed_module_table_is_current() {
        let root = repo_root();
        let want = module_table(&kernel_sources(&root).unwrap()).unwrap();
        let got = std::fs::read_to_string(root.join(MODULE_TABLE)).unwrap();
        assert_eq!(got, want, "run `cargo xtask ptx` and commit {MODULE_TABLE}");
    }
}
