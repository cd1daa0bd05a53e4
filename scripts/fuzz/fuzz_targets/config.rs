//! `Config::from_vars`: every environment variable livecast reads.
//!
//! Input: lines; the first byte of a line picks one of livecast's variables
//! (taken from `Config::help()`, so the fuzzer needs no dictionary), the
//! rest is its value. A first byte of 0xFF makes the line a raw
//! `NAME=VALUE` instead, for unknown and misspelt names.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use livecast::Config;

/// (name, secret?) of every variable `--help` lists.
fn variables() -> &'static [(String, bool)] {
    static VARS: OnceLock<Vec<(String, bool)>> = OnceLock::new();
    VARS.get_or_init(|| {
        let vars: Vec<(String, bool)> = Config::help()
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("  ")?;
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                let after = rest.get(name.len()..)?;
                let shaped = name.len() > 3 && (after.starts_with('=') || after.starts_with(" ("));
                shaped.then(|| (name, line.contains("[secret")))
            })
            .collect();
        assert!(vars.len() >= 30, "cannot read the variables from --help: {vars:?}");
        vars
    })
}

fuzz_target!(|data: &[u8]| {
    let vars = variables();
    let mut given: Vec<(String, String)> = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        let Some((&first, rest)) = line.split_first() else { continue };
        let rest = String::from_utf8_lossy(rest).into_owned();
        if first == 0xFF {
            if let Some((name, value)) = rest.split_once('=') {
                given.push((name.to_owned(), value.to_owned()));
            }
        } else if let Some((name, _)) = vars.get(usize::from(first) % vars.len()) {
            given.push((name.clone(), rest));
        }
    }
    match Config::from_vars(given.iter().map(|(n, v)| (n.as_str(), v.as_str()))) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(err) => {
            let text = err.to_string();
            let problems = err.variables().count();
            assert!(problems >= 1, "an error without a problem");
            // One line per problem: a value cannot forge extra lines.
            assert_eq!(text.lines().count(), 1 + problems, "{text}");
            // Secrets are named, never shown.
            for (name, secret) in vars {
                let shown = format!("  {name}=\"");
                if *secret {
                    assert!(!text.lines().any(|l| l.starts_with(&shown)), "{name} shown: {text}");
                }
            }
        }
    }
});
