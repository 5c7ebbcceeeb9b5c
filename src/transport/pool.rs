//! A per-thread pool of I/O buffers, shared by the TLS stream (`tls_io`) and the relay.
//! A connection borrows a buffer only while bytes are in flight and hands it back when its
//! read would block, so an idle connection holds none.

use std::cell::RefCell;

/// One TLS record: 16 KiB of plaintext plus the largest expansion and the header, so a read
/// can always complete a record and a relay read fills a record.
pub const SIZE: usize = 16 * 1024 + 2048 + 5 + 64;
/// Buffers kept per worker thread for reuse; beyond this they go back to the allocator.
const MAX_POOLED: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `SIZE` bytes, reused when one is pooled.
pub fn take() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; SIZE].into_boxed_slice())
}

/// Hands a buffer back. Buffers of another size (an oversized handshake flight) go back to
/// the allocator.
pub fn give(buf: Box<[u8]>) {
    if buf.len() != SIZE {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(buf);
        }
    });
}
