//! A bounds-checking pass over a GGUF header before anything is allocated from it.
//!
//! The header's counts and lengths come from the file; a damaged or hostile file can claim 10^12
//! tensors, a 2^60-byte string or a tensor larger than the file, and a reader that trusts them
//! allocates first and fails (or aborts) later. This pass walks the metadata and tensor table
//! with every count and length checked against the bytes the file has, and every tensor's data
//! against the data section, so that only a file that can be read is handed to the reader.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// GGML tensor types the loader knows: (block elements, bytes per block).
fn ggml_block(t: u32) -> Option<(u64, u64)> {
    Some(match t {
        0 => (1, 4),      // F32
        1 | 30 => (1, 2), // F16, BF16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        _ => return None,
    })
}

struct Cursor<R> {
    r: R,
    pos: u64,
    len: u64,
    v1: bool,
}

impl<R: Read> Cursor<R> {
    fn take(&mut self, n: u64, what: &str) -> std::result::Result<(), String> {
        if n > self.len - self.pos {
            return Err(format!(
                "{what} needs {n} bytes at offset {}, the file has {} left",
                self.pos,
                self.len - self.pos
            ));
        }
        std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        if (N as u64) > self.len - self.pos {
            return Err(format!("{what}: the file ends at offset {}", self.pos));
        }
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| e.to_string())?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }

    /// A count or length: u32 in version 1, u64 after.
    fn count(&mut self, what: &str) -> std::result::Result<u64, String> {
        if self.v1 {
            Ok(u64::from(self.u32(what)?))
        } else {
            Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
        }
    }

    /// A string: its length must fit in what is left of the file.
    fn string(&mut self, what: &str) -> std::result::Result<Vec<u8>, String> {
        let n = self.count(what)?;
        if n > self.len - self.pos {
            return Err(format!(
                "{what}: a string of {n} bytes at offset {}, the file has {} left",
                self.pos,
                self.len - self.pos
            ));
        }
        let mut v = vec![0u8; n as usize];
        self.r.read_exact(&mut v).map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(v)
    }

    fn value(
        &mut self,
        t: u32,
        key: &str,
        depth: usize,
    ) -> std::result::Result<Option<u64>, String> {
        let fixed = |t: u32| match t {
            0 | 1 | 7 => Some(1u64),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        match t {
            4 => return Ok(Some(u64::from(self.u32(key)?))),
            10 => return Ok(Some(u64::from_le_bytes(self.bytes::<8>(key)?))),
            8 => {
                self.string(key)?;
            }
            9 => {
                if depth > 4 {
                    return Err(format!("`{key}`: arrays nested deeper than 4"));
                }
                let et = self.u32(key)?;
                let n = self.count(key)?;
                match (fixed(et), et) {
                    (Some(size), _) => {
                        let bytes = n.checked_mul(size).ok_or_else(|| {
                            format!("`{key}`: an array of {n} elements overflows")
                        })?;
                        self.take(bytes, &format!("`{key}` ({n} elements)"))?;
                    }
                    (None, 8 | 9) => {
                        // Every element takes at least a length (or type + count) of 4+ bytes.
                        if n > (self.len - self.pos) / 4 {
                            return Err(format!(
                                "`{key}`: {n} elements cannot fit in the {} bytes left",
                                self.len - self.pos
                            ));
                        }
                        for _ in 0..n {
                            self.value(et, key, depth + 1)?;
                        }
                    }
                    _ => return Err(format!("`{key}`: unknown array element type {et}")),
                }
            }
            t => match fixed(t) {
                Some(size) => self.take(size, key)?,
                None => return Err(format!("`{key}`: unknown value type {t}")),
            },
        }
        Ok(None)
    }
}

/// Checks the header of the GGUF at `path`: magic, version, every metadata entry and tensor
/// entry within the file, known tensor types, and every tensor's bytes inside the data section.
pub fn check_gguf(path: &Path) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    check_gguf_reader(std::io::BufReader::new(file), len, path)
}

/// [`check_gguf`] over the first `len` bytes of any reader (a file, or bytes in memory);
/// `file` names them in errors.
pub fn check_gguf_reader<R: Read>(r: R, len: u64, file: &Path) -> Result<()> {
    let mut c = Cursor {
        r,
        pos: 0,
        len,
        v1: false,
    };
    check(&mut c).map_err(|msg| Error::Parse {
        file: file.to_path_buf(),
        msg: format!("not a valid GGUF file: {msg}"),
    })
}

fn check<R: Read>(c: &mut Cursor<R>) -> std::result::Result<(), String> {
    if &c.bytes::<4>("magic")? != b"GGUF" {
        return Err("the magic bytes are not `GGUF`".into());
    }
    let version = c.u32("version")?;
    if !(1..=3).contains(&version) {
        return Err(format!("version {version} (expected 1 to 3)"));
    }
    c.v1 = version == 1;
    let tensors = c.count("tensor count")?;
    let kvs = c.count("metadata count")?;
    // A metadata entry takes at least 13 bytes (key length, type, one byte), a tensor entry 24.
    if kvs > len_left(c) / 13 || tensors > len_left(c) / 24 {
        return Err(format!(
            "{tensors} tensors and {kvs} metadata entries cannot fit in a file of {} bytes",
            c.len
        ));
    }
    let mut alignment = 32u64;
    for _ in 0..kvs {
        // candle drops trailing NUL bytes from strings: the key it sees is the trimmed one.
        let key = String::from_utf8_lossy(&c.string("metadata key")?)
            .trim_end_matches('\0')
            .to_string();
        let t = c.u32(&key)?;
        if key == "general.alignment" {
            // As candle reads it: 8-, 16- and 32-bit integers (signed ones when >= 0) set the
            // alignment, any other type leaves the default.
            let v = match t {
                0 => Some(u64::from(c.bytes::<1>(&key)?[0])),
                1 => u64::try_from(i8::from_le_bytes(c.bytes::<1>(&key)?)).ok(),
                2 => Some(u64::from(u16::from_le_bytes(c.bytes::<2>(&key)?))),
                3 => u64::try_from(i16::from_le_bytes(c.bytes::<2>(&key)?)).ok(),
                4 => Some(u64::from(c.u32(&key)?)),
                5 => u64::try_from(i32::from_le_bytes(c.bytes::<4>(&key)?)).ok(),
                _ => {
                    c.value(t, &key, 0)?;
                    None
                }
            };
            if let Some(v) = v {
                alignment = v;
            }
        } else {
            c.value(t, &key, 0)?;
        }
    }
    if alignment == 0 || !alignment.is_power_of_two() || alignment > 1 << 20 {
        return Err(format!(
            "general.alignment {alignment} is not a power of two up to 1 MiB"
        ));
    }
    let mut spans = Vec::new();
    for _ in 0..tensors {
        let name = String::from_utf8_lossy(&c.string("tensor name")?).into_owned();
        let dims = c.u32(&name)?;
        if dims == 0 || dims > 4 {
            return Err(format!(
                "tensor `{name}` has {dims} dimensions (expected 1 to 4)"
            ));
        }
        let mut elems = 1u64;
        for _ in 0..dims {
            let d = c.count(&name)?;
            // An empty tensor has no use, and candle reads it from a dangling pointer.
            if d == 0 {
                return Err(format!("tensor `{name}` has a dimension of 0"));
            }
            elems = elems
                .checked_mul(d)
                .ok_or_else(|| format!("tensor `{name}`: its element count overflows"))?;
        }
        let t = c.u32(&name)?;
        let (block, bytes) =
            ggml_block(t).ok_or_else(|| format!("tensor `{name}` has unknown type {t}"))?;
        if elems % block != 0 {
            return Err(format!(
                "tensor `{name}`: {elems} elements are not whole blocks of {block}"
            ));
        }
        let size = (elems / block)
            .checked_mul(bytes)
            .ok_or_else(|| format!("tensor `{name}`: its byte size overflows"))?;
        let offset = u64::from_le_bytes(c.bytes::<8>(&name)?);
        spans.push((name, offset, size));
    }
    let data = c.pos.div_ceil(alignment) * alignment;
    for (name, offset, size) in spans {
        let end = data.checked_add(offset).and_then(|s| s.checked_add(size));
        if end.is_none_or(|e| e > c.len) {
            return Err(format!(
                "tensor `{name}`: {size} bytes at data offset {offset} run past the end of the \
                 file ({} bytes)",
                c.len
            ));
        }
    }
    Ok(())
}

fn len_left<R>(c: &Cursor<R>) -> u64 {
    c.len - c.pos
}
