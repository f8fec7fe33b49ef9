//! `--config FILE`: settings from a TOML file, turned into flags.
//!
//! Keys are flag names (`stratum_listen` or `stratum-listen`); strings, integers, floats and booleans
//! (`true` sets a switch) are accepted, and arrays repeat the flag. The file's flags are placed right
//! after the subcommand, before the command line's own, and the subcommand lets a later flag override
//! an earlier one: so the command line wins. An unknown key, a nested table or an unreadable file is an
//! error naming the file and the key.

use anyhow::Context as _;
use std::ffi::OsString;

/// Expands `--config FILE` (or `--config=FILE`) in `args` for the subcommand it follows.
pub fn expand(args: Vec<OsString>, cmd: &clap::Command) -> anyhow::Result<Vec<OsString>> {
    let mut path = None;
    for (i, a) in args.iter().enumerate() {
        let s = a.to_string_lossy();
        if s == "--config" {
            path = args.get(i + 1).map(|p| p.to_string_lossy().into_owned());
        } else if let Some(p) = s.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
    }
    let Some(path) = path else { return Ok(args) };
    let Some(sub_name) = args.get(1).map(|a| a.to_string_lossy().into_owned()) else {
        return Ok(args);
    };
    let Some(sub) = cmd.find_subcommand(&sub_name) else {
        return Ok(args);
    };
    let known: Vec<String> = sub
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading the config file {path}"))?;
    let table: toml::Table = text.parse().with_context(|| format!("{path}: not valid TOML"))?;
    let mut extra = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        if flag == "config" || !known.contains(&flag) {
            anyhow::bail!("{path}: unknown key '{key}' (keys are the flags of `cloudmine {sub_name}`)");
        }
        let mut push = |v: String| {
            extra.push(OsString::from(format!("--{flag}")));
            extra.push(OsString::from(v));
        };
        match value {
            toml::Value::String(s) => push(s.clone()),
            toml::Value::Integer(i) => push(i.to_string()),
            toml::Value::Float(f) => push(f.to_string()),
            toml::Value::Boolean(true) => extra.push(OsString::from(format!("--{flag}"))),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for it in items {
                    match it {
                        toml::Value::String(s) => push(s.clone()),
                        toml::Value::Integer(i) => push(i.to_string()),
                        other => anyhow::bail!(
                            "{path}: key '{key}': unsupported array item ({})",
                            other.type_str()
                        ),
                    }
                }
            }
            other => anyhow::bail!(
                "{path}: key '{key}': unsupported value ({}): use a string, number, boolean or array",
                other.type_str()
            ),
        }
    }
    let mut out = Vec::with_capacity(args.len() + extra.len());
    out.extend(args.iter().take(2).cloned());
    out.extend(extra);
    out.extend(args.into_iter().skip(2));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::expand;
    use clap::{CommandFactory, Parser};

    fn args(v: &[&str]) -> Vec<std::ffi::OsString> {
        v.iter().map(std::ffi::OsString::from).collect()
    }

    #[test]
    fn file_values_apply_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "min_difficulty = 0.01\nstatus-interval = 3\nbitcoind_url = [\"http://a:1\", \"http://b:2\"]\n",
        )
        .unwrap();
        let p = f.to_str().unwrap();
        let expanded = expand(
            args(&["cloudmine", "serve", "--config", p, "--status-interval", "9"]),
            &crate::Cli::command(),
        )
        .unwrap();
        let cli = crate::Cli::try_parse_from(expanded).unwrap();
        let crate::Command::Serve(a) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(a.status_interval, 9);
        assert!((a.min_difficulty - 0.01).abs() < 1e-12);
        assert_eq!(
            a.bitcoind_url,
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "stratum_listen = \"127.0.0.1:1\"\nbogus = 1\n").unwrap();
        let p = f.to_str().unwrap();
        let e = expand(
            args(&["cloudmine", "serve", "--config", p]),
            &crate::Cli::command(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad.toml") && e.contains("'bogus'"), "{e}");
        std::fs::write(&f, "[section]\nx = 1\n").unwrap();
        assert!(expand(
            args(&["cloudmine", "serve", "--config", p]),
            &crate::Cli::command()
        )
        .is_err());
        std::fs::write(&f, "x = [").unwrap();
        assert!(expand(
            args(&["cloudmine", "serve", "--config", p]),
            &crate::Cli::command()
        )
        .unwrap_err()
        .to_string()
        .contains("not valid TOML"));
        let missing = dir.path().join("nope.toml");
        let e = expand(
            args(&["cloudmine", "serve", "--config", missing.to_str().unwrap()]),
            &crate::Cli::command(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope.toml"));
    }
}
