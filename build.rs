//! Records the git commit the binary is built from (with `-dirty` for uncommitted changes), so
//! result files name the code that produced them even where the binary runs without the repo;
//! with the `cuda` feature, compiles the fused analog-layer kernels to PTX.

/// nvcc `kernels/NAME.cu` -> `$OUT_DIR/NAME.ptx` for each kernel file (compute 8.0 PTX, which
/// the driver compiles for Ampere, Hopper and later). `--fmad=false` keeps every multiply and
/// add separately rounded, as on the CPU, so the noise and rounding match it bit for bit.
fn compile_kernels() {
    println!("cargo:rerun-if-changed=kernels");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for name in ["analog_train", "analog_eval", "sampling", "train_ops"] {
        let status = std::process::Command::new(&nvcc)
            .args([
                "--ptx",
                "-O3",
                "--fmad=false",
                "-arch=compute_80",
                "-std=c++17",
            ])
            .arg(format!("kernels/{name}.cu"))
            .arg("-o")
            .arg(out.join(format!("{name}.ptx")))
            .status()
            .unwrap_or_else(|e| panic!("cannot run `{nvcc}` for the cuda feature: {e}"));
        assert!(status.success(), "nvcc failed on kernels/{name}.cu");
    }
}

fn main() {
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_kernels();
    }
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
