//! `--config FILE` for the service commands (`up`, `worker`, `shard`, `gateway`): a TOML
//! file whose keys are the command's long flags, e.g. for `turnpike gateway`:
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! shard = ["127.0.0.1:7001", "127.0.0.1:7002"]
//! route = ["/hello=ab12...@critical"]
//! max-body-bytes = 1048576
//! ```
//!
//! The file's settings go in front of the command line's flags, so a flag given on the
//! command line wins over the file (and a list, like `shard`, gets the command line's items
//! added). Keys may use `-` or `_`. A key the command does not have, a value that is not a
//! string, number, boolean or list of those, and a TOML syntax error are refused with the
//! file, the line and the key named. (`turnpike sim run --config` is the simulator's own
//! config file and is left alone.)

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `--config FILE` as each service command declares it, for `--help`; [`expand`] has taken
/// it out of the command line before clap parses, so it is never read.
#[derive(clap::Args, Debug)]
pub struct ConfigFileArg {
    /// A TOML file of settings whose keys are this command's flags (`listen = "..."`,
    /// `shard = ["...", "..."]`); flags on the command line win over it.
    #[arg(long = "config", value_name = "FILE")]
    #[allow(dead_code)]
    file: Option<PathBuf>,
}

/// The subcommands that take `--config`.
const SERVICE_COMMANDS: [&str; 4] = ["up", "worker", "shard", "gateway"];

/// `args` (the whole command line) with a service command's `--config FILE` replaced by the
/// file's settings as flags. `flags_of(command)` lists the command's long flags.
pub fn expand(
    args: Vec<OsString>,
    flags_of: impl Fn(&str) -> Vec<String>,
) -> Result<Vec<OsString>, String> {
    let Some(command) = args.get(1).and_then(|c| c.to_str()).map(str::to_string) else {
        return Ok(args);
    };
    if !SERVICE_COMMANDS.contains(&command.as_str()) {
        return Ok(args);
    }
    let mut rest: Vec<OsString> = Vec::new();
    let mut file: Option<OsString> = None;
    let mut it = args[2..].iter();
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--config") => {
                let path = it.next().ok_or("`--config` needs a file: --config FILE")?;
                file = Some(path.clone());
            }
            Some(a) if a.starts_with("--config=") => {
                file = Some(OsString::from(&a["--config=".len()..]));
            }
            _ => rest.push(arg.clone()),
        }
    }
    let Some(file) = file else {
        return Ok(args);
    };
    let path = Path::new(&file);
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let settings = settings(&text, path, &flags_of(&command))?;
    let mut out = vec![args[0].clone(), args[1].clone()];
    out.extend(settings.into_iter().map(OsString::from));
    out.extend(rest);
    Ok(out)
}

/// The flags a config file's text stands for.
fn settings(text: &str, path: &Path, flags: &[String]) -> Result<Vec<String>, String> {
    let at = |offset: usize| crate::manifest::line_at(text, offset);
    let table: BTreeMap<String, toml::Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| at(s.start));
            format!("{}: line {line}: {}", path.display(), e.message())
        })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let line = at(value.span().start);
        let flag = key.replace('_', "-");
        if !flags.contains(&flag) {
            return Err(format!(
                "{}: line {line}: unknown setting `{key}`; settings: {}",
                path.display(),
                flags.join(", ")
            ));
        }
        let bad = |what: &str| {
            format!(
                "{}: line {line}: setting `{key}` must be {what}",
                path.display()
            )
        };
        let scalar = |v: &toml::Value| -> Option<String> {
            match v {
                toml::Value::String(s) => Some(s.clone()),
                toml::Value::Integer(i) => Some(i.to_string()),
                toml::Value::Float(f) => Some(f.to_string()),
                _ => None,
            }
        };
        match value.get_ref() {
            toml::Value::Boolean(true) => out.push(format!("--{flag}")),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    let item = scalar(item).ok_or_else(|| bad("a list of strings or numbers"))?;
                    out.push(format!("--{flag}={item}"));
                }
            }
            v => {
                let v = scalar(v).ok_or_else(|| bad("a string, number, boolean or list"))?;
                out.push(format!("--{flag}={v}"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<String> {
        ["listen", "shard", "max-body-bytes", "verbose"]
            .map(String::from)
            .to_vec()
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn settings_become_flags_in_front_of_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("g.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\nshard = [\"a:1\", \"b:2\"]\nmax_body_bytes = 10\nverbose = true\n",
        )
        .unwrap();
        let out = expand(
            args(&[
                "t",
                "gateway",
                "--config",
                file.to_str().unwrap(),
                "--listen",
                "x:2",
            ]),
            |_| flags(),
        )
        .unwrap();
        assert_eq!(
            out,
            args(&[
                "t",
                "gateway",
                "--listen=127.0.0.1:1",
                "--max-body-bytes=10",
                "--shard=a:1",
                "--shard=b:2",
                "--verbose",
                "--listen",
                "x:2"
            ])
        );
    }

    #[test]
    fn the_simulators_config_and_commands_without_one_are_left_alone() {
        let sim = args(&["t", "sim", "run", "--config", "my.toml"]);
        assert_eq!(expand(sim.clone(), |_| flags()).unwrap(), sim);
        let plain = args(&["t", "shard", "--listen", "x:1"]);
        assert_eq!(expand(plain.clone(), |_| flags()).unwrap(), plain);
    }

    #[test]
    fn bad_files_are_refused_naming_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let run = |text: &str| {
            let file = dir.path().join("bad.toml");
            std::fs::write(&file, text).unwrap();
            expand(
                args(&["t", "shard", "--config", file.to_str().unwrap()]),
                |_| flags(),
            )
            .unwrap_err()
        };
        let e = run("listen = \"x:1\"\n\nport = 7\n");
        assert!(
            e.contains("bad.toml: line 3") && e.contains("`port`") && e.contains("listen"),
            "{e}"
        );
        let e = run("listen = \"x:1\"\nshard = [\n");
        assert!(e.contains("bad.toml: line"), "{e}");
        let e = run("shard = [{ a = 1 }]\n");
        assert!(e.contains("line 1") && e.contains("`shard`"), "{e}");
        let e = expand(
            args(&["t", "up", "--config", "/nonexistent/x.toml"]),
            |_| flags(),
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
        let e = expand(args(&["t", "up", "--config"]), |_| flags()).unwrap_err();
        assert!(e.contains("needs a file"), "{e}");
    }
}
