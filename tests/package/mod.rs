//! The Debian package's pieces that live in the binary: `livecast
//! --version`, and the environment file `livecast --env-file` writes for
//! `scripts/package.sh` (`/etc/livecast/livecast.env`), which must list
//! exactly the variables of `livecast --help`, with the same defaults, all
//! commented out. The package itself (contents, modes, conffile, install,
//! upgrade, purge) is tested by `scripts/package-test.sh`.

use crate::support::run_binary;

/// One variable as a document shows it: its name and its default (empty
/// when unset or computed at start).
type Entry = (String, String);

/// The variables of `livecast --help`, in order: the lines `  NAME=default`,
/// `  NAME (unset)` and `  NAME (default: how)` (tags such as
/// `[secret: never logged]` may follow).
fn help_entries(help: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for line in help.lines() {
        let Some(rest) = line.strip_prefix("  ") else { continue };
        let name_len = rest.bytes().take_while(|b| b.is_ascii_uppercase() || *b == b'_').count();
        let (name, tail) = rest.split_at(name_len);
        if name.len() < 2 {
            continue;
        }
        if let Some(default) = tail.strip_prefix('=') {
            // A default shows no spaces; a tag may follow one.
            let default = default.split(' ').next().unwrap_or_default();
            entries.push((name.to_owned(), default.to_owned()));
        } else if tail.starts_with(" (") {
            entries.push((name.to_owned(), String::new()));
        }
    }
    entries
}

/// The variables of the environment file, in order: its `#NAME=value` lines.
fn env_file_entries(file: &str) -> Vec<Entry> {
    file.lines()
        .filter_map(|line| line.strip_prefix('#')?.split_once('='))
        .filter(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

fn env_file() -> String {
    let (code, stdout, stderr) = run_binary(&["--env-file"], &[]);
    assert_eq!(code, Some(0), "--env-file exit code; stderr:\n{stderr}");
    stdout
}

#[test]
fn version_flags_print_the_version_and_exit_0() {
    for flag in ["--version", "-V"] {
        let (code, stdout, stderr) = run_binary(&[flag], &[]);
        assert_eq!(code, Some(0), "{flag} exit code; stderr:\n{stderr}");
        assert_eq!(stdout, format!("livecast {}\n", env!("CARGO_PKG_VERSION")), "{flag}");
    }
}

#[test]
fn env_file_lists_exactly_the_variables_of_help_with_their_defaults() {
    let (code, help, stderr) = run_binary(&["--help"], &[]);
    assert_eq!(code, Some(0), "--help exit code; stderr:\n{stderr}");
    let help = help_entries(&help);
    assert!(help.len() > 40, "only {} variables read from --help", help.len());
    assert!(help.iter().any(|(name, default)| name == "LIVE_WS_PORT" && default == "8080"));
    assert!(help.iter().any(|(name, default)| name == "INGEST_TOKEN" && default.is_empty()));
    let file = env_file_entries(&env_file());
    assert_eq!(file, help, "the env file's variables and defaults differ from --help's");
}

#[test]
fn env_file_sets_nothing_so_the_service_starts_on_the_defaults() {
    let file = env_file();
    for line in file.lines() {
        assert!(line.is_empty() || line.starts_with('#'), "a line sets something: {line:?}");
    }
    // Each variable comes after its meaning, a comment an operator reads.
    let lines: Vec<&str> = file.lines().collect();
    let mut variables = 0;
    for (i, line) in lines.iter().enumerate().skip(1) {
        if env_file_entries(line).is_empty() {
            continue;
        }
        let above = lines[i - 1];
        assert!(above.starts_with("# ") && above.len() > 12, "{line}: no comment above");
        variables += 1;
    }
    assert!(variables > 40, "only {variables} variables found");
}

#[test]
fn env_file_defaults_are_valid_when_uncommented() {
    // An operator who uncomments a line as it stands gets a valid value.
    let vars: Vec<Entry> =
        env_file_entries(&env_file()).into_iter().filter(|(_, value)| !value.is_empty()).collect();
    assert!(vars.len() > 30, "only {} defaults in the env file", vars.len());
    if let Err(e) = livecast::Config::from_vars(vars) {
        panic!("the env file's defaults, uncommented, are refused: {e}");
    }
}
