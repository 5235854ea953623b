//! Records the git commit the binary is built from (with `-dirty` for uncommitted changes), so
//! result files name the code that produced them even where the binary runs without the repo.

fn main() {
    for p in [".git/HEAD", ".git/index", ".git/refs/heads", "src"] {
        println!("cargo:rerun-if-changed={p}");
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "HEAD"]) {
        Some(c)
            if git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| s.is_empty()) =>
        {
            c
        }
        Some(c) => format!("{c}-dirty"),
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=AFM_GIT_COMMIT={commit}");
}
