//! `pipeline --config FILE.toml`: a recipe as a file. Its keys are the
//! pipeline's own flags (`ucl_steps = 100` is `--ucl-steps 100`); they are
//! placed before the command line's flags, and a flag given on the command
//! line wins over the file (the subcommand lets a later flag override an
//! earlier one). So `configs/NAME.toml` holds the settings and the command
//! line what differs per run (model, output directory, seed).

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::CommandFactory;

#[derive(Debug, clap::Parser)]
struct PipelineFlags {
    #[command(flatten)]
    args: crate::pipeline::Args,
}

/// The flags a recipe file stands for, checked against the pipeline's own.
pub fn flags_of(path: &Path) -> Result<Vec<OsString>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{}: not a valid TOML file", path.display()))?;
    let cmd = PipelineFlags::command();
    let known: Vec<&str> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
    let mut out = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        if flag == "config" {
            bail!(
                "{}: a recipe cannot name another (`config`)",
                path.display()
            );
        }
        if !known.contains(&flag.as_str()) {
            bail!(
                "{}: unknown setting `{key}`; the settings are the flags of `llm2comp pipeline \
                 --help` without the dashes",
                path.display()
            );
        }
        let v = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => bail!(
                "{}: `{key}` is {}; give a string or a number",
                path.display(),
                other.type_str()
            ),
        };
        out.push(format!("--{flag}").into());
        out.push(v.into());
    }
    Ok(out)
}

/// The process's arguments with a pipeline's `--config FILE` expanded in
/// place (its settings first, then the command line's flags).
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(at) = args.iter().position(|a| a == "pipeline") else {
        return Ok(args);
    };
    let mut file = None;
    for (i, a) in args.iter().enumerate().skip(at + 1) {
        let s = a.to_string_lossy();
        if s == "--config" {
            file = args.get(i + 1).cloned();
        } else if let Some(f) = s.strip_prefix("--config=") {
            file = Some(f.into());
        }
    }
    let Some(file) = file else { return Ok(args) };
    let settings = flags_of(Path::new(&file))?;
    let mut out: Vec<OsString> = args[..=at].to_vec();
    out.extend(settings);
    out.extend(args[at + 1..].iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_recipe_becomes_flags_before_the_command_lines() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r.toml");
        std::fs::write(
            &f,
            "ucl_steps = 100\nobjective = \"kl\"\nmax-length = 128\n",
        )
        .unwrap();
        let fs = f.to_str().unwrap();
        let got = expand(os(&[
            "llm2comp",
            "--threads",
            "2",
            "pipeline",
            "--config",
            fs,
            "--seed",
            "43",
        ]))
        .unwrap();
        assert_eq!(
            got,
            os(&[
                "llm2comp",
                "--threads",
                "2",
                "pipeline",
                "--max-length",
                "128",
                "--objective",
                "kl",
                "--ucl-steps",
                "100",
                "--config",
                fs,
                "--seed",
                "43",
            ])
        );
        // Other commands, and a pipeline without --config, are left alone.
        let plain = os(&["llm2comp", "embed", "--config", fs]);
        assert_eq!(expand(plain.clone()).unwrap(), plain);
    }

    /// The committed recipes stay in step with the flags.
    #[test]
    fn the_committed_recipes_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let flags = flags_of(&p).unwrap();
                assert!(!flags.is_empty(), "{}", p.display());
                let argv = os(&["pipeline", "--model", "m", "--out", "o"])
                    .into_iter()
                    .chain(flags);
                if let Err(e) = <PipelineFlags as clap::Parser>::try_parse_from(argv) {
                    panic!("{}: {e}", p.display());
                }
                n += 1;
            }
        }
        assert!(n >= 1, "no recipe in {}", dir.display());
    }

    #[test]
    fn bad_recipes_are_named() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r.toml");
        for (text, want) in [
            ("ucl_stepz = 3\n", "unknown setting `ucl_stepz`"),
            ("ucl_steps = [1]\n", "`ucl_steps` is array"),
            ("ucl_steps = \n", "not a valid TOML file"),
            ("config = \"x\"\n", "cannot name another"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = format!("{:#}", flags_of(&f).unwrap_err());
            assert!(e.contains(want) && e.contains("r.toml"), "{text}: {e}");
        }
    }
}
