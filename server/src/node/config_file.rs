//! `--config FILE` (`RAFTSQL_CONFIG`; design.md §7): settings from a TOML file, below the
//! command line and the environment. Each key is a flag's long name (`listen`, `data-dir`,
//! `max-query-memory`; `data_dir` is the same key), each value a string, number or boolean:
//!
//! ```toml
//! listen = "0.0.0.0:7000"
//! peer-listen = "0.0.0.0:7001"
//! data-dir = "/var/lib/raftsql"
//! statefulset-replicas = 3
//! forward-writes = true
//! ```
//!
//! The file is read before the command line is parsed, and each setting becomes the flag's
//! `RAFTSQL_*` variable unless that variable is set already; clap then takes a flag over its
//! variable. So precedence is flag, then environment, then file, then the default, with one
//! parser and one set of checks for all of them. A key that names no flag, a value of another
//! kind, or a file that does not parse is refused with the file, the key and what to do.

use anyhow::{bail, Context};
use clap::CommandFactory;
use std::path::{Path, PathBuf};

/// The `--config` path from the command line (`--config F` or `--config=F`), else
/// `RAFTSQL_CONFIG`.
pub fn path(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("RAFTSQL_CONFIG").map(PathBuf::from)
}

/// The settings of the TOML text `text` (read from `file`), as (environment variable, value)
/// pairs, in the file's order.
pub fn settings(text: &str, file: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", file.display()))?;
    let command = super::Config::command();
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && !a.is_hide_set())
            .filter(|a| a.get_long() != Some("config"));
        let Some(env) = arg.and_then(|a| a.get_env()) else {
            bail!(
                "{}: {key:?} is not a setting of raftsql-server (keys are the long flag names \
                 `raftsql-server --help` lists, such as \"listen\" or \"data-dir\")",
                file.display()
            );
        };
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "{}: {key:?} has a value of type {}, but a setting is a string, a number or a boolean",
                file.display(),
                other.type_str()
            ),
        };
        out.push((env.to_string_lossy().into_owned(), value));
    }
    Ok(out)
}

/// Reads the `--config` file, if one is named, into the environment of this process (each
/// setting whose variable is not set already). Call before any thread starts.
pub fn load(args: &[String]) -> anyhow::Result<()> {
    let Some(file) = path(args) else { return Ok(()) };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the configuration file {} (--config)", file.display()))?;
    for (env, value) in settings(&text, &file)? {
        if std::env::var_os(&env).is_none() {
            // Single-threaded here (main calls this first): nothing reads the environment
            // concurrently.
            std::env::set_var(&env, value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_flag_names_and_values_become_their_variables() {
        let text = "listen = \"0.0.0.0:7000\"\ndata_dir = \"/data\"\nstatefulset-replicas = 3\nforward-writes = true\n";
        let got = settings(text, Path::new("c.toml")).unwrap();
        assert_eq!(
            got,
            vec![
                ("RAFTSQL_DATA_DIR".to_string(), "/data".to_string()),
                ("RAFTSQL_FORWARD_WRITES".into(), "true".into()),
                ("RAFTSQL_LISTEN".into(), "0.0.0.0:7000".into()),
                ("RAFTSQL_STATEFULSET_REPLICAS".into(), "3".into()),
            ]
        );
    }

    #[test]
    fn unknown_keys_wrong_kinds_and_bad_toml_are_refused_with_the_file() {
        for (text, says) in [
            ("lisen = \"x\"", "\"lisen\" is not a setting"),
            ("config = \"other.toml\"", "\"config\" is not a setting"),
            ("statefulset-test-addrs = \"x\"", "is not a setting"),
            ("listen = [1, 2]", "of type array"),
            ("listen = ", "not valid TOML"),
        ] {
            let e = format!("{:#}", settings(text, Path::new("c.toml")).unwrap_err());
            assert!(e.contains("c.toml") && e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_path_comes_from_the_command_line_first() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(path(&args(&["x", "--config", "a.toml"])), Some(PathBuf::from("a.toml")));
        assert_eq!(path(&args(&["x", "--config=b.toml"])), Some(PathBuf::from("b.toml")));
    }
}
