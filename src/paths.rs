//! Resolving command-line names of shipped files (`tiles/NAME.toml`, `models/NAME.toml`).

use std::path::PathBuf;

/// An existing path is taken as it is; a bare name is looked up as `FOLDER/NAME.toml` in the
/// working directory, then in the crate's own folder.
pub fn resolve_named(arg: &str, folder: &str) -> PathBuf {
    let p = PathBuf::from(arg);
    if p.exists() || arg.contains('/') || arg.ends_with(".toml") {
        return p;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(folder);
    [PathBuf::from(folder), root]
        .iter()
        .map(|d| d.join(format!("{arg}.toml")))
        .find(|c| c.exists())
        .unwrap_or(p)
}

/// Reads a text file, naming it in the error.
pub fn read_text(path: &std::path::Path) -> crate::Result<String> {
    std::fs::read_to_string(path).map_err(|source| crate::Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses TOML text into `T`; a syntax error or a bad field is one line naming `file`, the
/// line and column, and the message.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &std::path::Path,
) -> crate::Result<T> {
    toml::from_str(text).map_err(|e| crate::Error::Parse {
        file: file.to_path_buf(),
        msg: one_line(&e, text),
    })
}

/// Flattens a multi-line TOML error into one line (keeps the line/column and the message) and
/// names the field when the error sits in a `key = value` line: serde's messages for a bad value
/// (an unknown variant, a wrong type) do not say which field they are about.
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            match field_at(text, line) {
                Some(f) if !msg.contains(&format!("`{f}`")) => {
                    format!("line {line}, column {col}, `{f}`: {msg}")
                }
                _ => format!("line {line}, column {col}: {msg}"),
            }
        }
        None => msg,
    }
}

/// The dotted name (`section.key`) of the `key = value` on 1-based `line`, if it is one.
fn field_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let (key, _) = lines.get(line - 1)?.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
        return None;
    }
    let section = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        (l.starts_with('[') && l.ends_with(']')).then(|| l.trim_matches(|c| c == '[' || c == ']'))
    });
    Some(match section {
        Some(s) => format!("{}.{key}", s.trim()),
        None => key.to_string(),
    })
}

/// Writes a file atomically: a temporary file beside it, then a rename, so a kill never
/// leaves a half-written result behind. Its folder is created when missing.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> crate::Result<()> {
    let io = |p: &std::path::Path| {
        let p = p.to_path_buf();
        move |source| crate::Error::Io { path: p, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        // A full disk leaves no half-written temporary file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}
