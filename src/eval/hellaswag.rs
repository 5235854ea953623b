//! HellaSwag from its plain-text dump (`hellaswag_val_full.txt.bz2`: six lines per item,
//! `activity_label: ctx`, the gold index, four endings) with lm-eval's preprocessing.

use super::multiple_choice::{BadLines, McItem};
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// lm-eval's HellaSwag `preprocess`: strip, " [title]" becomes ". ", bracketed tags go, and
/// double spaces collapse.
pub fn preprocess(text: &str) -> String {
    let t = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(t.len());
    let mut rest = t.as_str();
    while let Some(open) = rest.find('[') {
        match rest[open..].find(']') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// The dump joins lm-eval's `ctx_a + " " + ctx_b` without its `ctx_b.capitalize()`; ctx_b is
/// the unfinished last sentence, so the fragment after the context's last ". " gets its first
/// letter upper-cased (the rest of `capitalize()`, lower-casing, would only touch rare names).
pub fn capitalize_last_fragment(line: &str) -> String {
    let body_start = line.find(": ").map_or(0, |i| i + 2);
    let at = line[body_start..]
        .rfind(". ")
        .map_or(body_start, |i| body_start + i + 2);
    let mut out = line[..at].to_string();
    let mut rest = line[at..].chars();
    if let Some(c) = rest.next() {
        out.extend(c.to_uppercase());
        out.push_str(rest.as_str());
    }
    out
}

/// Reads a `.txt` or `.txt.bz2` dump into items (query: preprocessed context, choices:
/// preprocessed endings); a malformed six-line group is reported by its first line number.
pub fn load(path: &Path) -> Result<(Vec<McItem>, BadLines)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = if path.extension().is_some_and(|e| e == "bz2") {
        let mut s = String::new();
        bzip2::read::BzDecoder::new(bytes.as_slice())
            .read_to_string(&mut s)
            .map_err(|e| Error::Parse {
                file: path.to_path_buf(),
                msg: format!("not a bzip2 text file: {e}"),
            })?;
        s
    } else {
        String::from_utf8(bytes).map_err(|e| Error::Parse {
            file: path.to_path_buf(),
            msg: format!("not UTF-8: {e}"),
        })?
    };
    let lines: Vec<&str> = text.lines().collect();
    let (mut items, mut bad) = (Vec::new(), Vec::new());
    for (k, group) in lines.chunks(6).enumerate() {
        let line = k * 6 + 1;
        if group.len() < 6 {
            bad.push((line, format!("{} lines, expected 6", group.len())));
            continue;
        }
        let gold = match group[1].trim().parse::<usize>() {
            Ok(g) if g < 4 => g,
            _ => {
                bad.push((line + 1, format!("gold `{}` is not 0..3", group[1])));
                continue;
            }
        };
        let query = preprocess(&capitalize_last_fragment(group[0]));
        let choices: Vec<String> = group[2..6].iter().map(|e| preprocess(e)).collect();
        items.push(McItem {
            contexts: vec![query; 4],
            continuations: choices.iter().map(|c| format!(" {c}")).collect(),
            norm_texts: choices,
            gold,
        });
    }
    if items.is_empty() {
        return Err(Error::Parse {
            file: path.to_path_buf(),
            msg: "no HellaSwag item (six lines each)".into(),
        });
    }
    Ok((items, bad))
}
