//! The binary's allocator: mimalloc, told to keep the pages it frees.
//!
//! A simulated chip frees and reallocates the same large buffers at every analog MVM. glibc
//! returns each large block to the kernel, and mimalloc by default purges freed pages after a
//! delay; either way the kernel zeroes the pages again on their next use (14% of an analog
//! evaluation's time went to `clear_page` before [`keep_freed_pages`]).

use std::ffi::{c_int, c_long};

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (the `libmimalloc-sys` 0.1.49 build
/// that `mimalloc` 0.1 compiles); the test below checks it against the option's default.
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// The environment variable by which a user sets the purge delay before mimalloc starts.
const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

unsafe extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_option_get(option: c_int) -> c_long;
}

/// Never purge freed pages (purge delay -1): the process keeps its peak memory mapped. A
/// purge delay the user set (`MIMALLOC_PURGE_DELAY`) is left as it is.
pub fn keep_freed_pages() {
    if std::env::var_os(PURGE_DELAY_VAR).is_some() {
        return;
    }
    // SAFETY: mimalloc's option setter takes any option index and value; the options are
    // atomics, so a call from any thread is sound.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// mimalloc's current purge delay in milliseconds (-1: never).
pub fn purge_delay_ms() -> c_long {
    // SAFETY: a read of one of mimalloc's option atomics.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    /// The index names the purge delay: its v3 default is 1000 ms (`options.c`), and setting
    /// it reads back. The one test in this process that touches the option.
    #[test]
    fn the_option_index_is_mimallocs_purge_delay() {
        if std::env::var_os(super::PURGE_DELAY_VAR).is_none() {
            assert_eq!(super::purge_delay_ms(), 1000);
            super::keep_freed_pages();
            assert_eq!(super::purge_delay_ms(), -1);
        }
    }
}
