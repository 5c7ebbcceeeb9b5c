//! Giving freed heap memory back to the operating system after a large registry is
//! dropped. The only `unsafe` in mqttgate's own code: a call into glibc.
//!
//! glibc keeps freed memory in each thread's arena; a reload builds the new registry on
//! whichever thread runs it, so without a trim the old generation's pages stay resident.
//! Measured with `scripts/bench.sh registry` (100,000 clients, 29.8 MiB file): see the
//! README's "Sizing" section for the figures with and without the trim.

// The lints table denies unsafe code; this module is one of the two exceptions: glibc's malloc_trim has no safe wrapper.
#![allow(unsafe_code)]

/// Returns free pages of every arena to the OS. A no-op where the C library is not glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers
    // from us and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}
