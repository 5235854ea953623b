//! The library's error type: every failure names the file, field or tensor it concerns.

use std::path::PathBuf;

/// Errors of the `afm` library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration file is not valid TOML or does not match the schema.
    #[error("{}: {msg}", file.display())]
    Parse {
        /// The file concerned.
        file: PathBuf,
        /// What the parser said, flattened to one line.
        msg: String,
    },
    /// A configuration value is out of its allowed range.
    #[error("{}: field `{field}`: {msg}", file.display())]
    Config {
        /// The file concerned (or a placeholder for built-in configs).
        file: PathBuf,
        /// The dotted path of the field.
        field: String,
        /// What was expected and what was found.
        msg: String,
    },
    /// Tensor shapes or sizes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A value is outside what the computation accepts (NaN weight, zero input range, ...).
    #[error("invalid value: {0}")]
    Value(String),
    /// An error from the tensor engine.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the library.
pub type Result<T> = std::result::Result<T, Error>;
