//! A hostile CONNECT must not make the parser allocate more than the bytes it was given:
//! lengths claimed by the packet but not yet received cost nothing.

// A counting global allocator is an unsafe trait implementation by nature.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mqttgate::mqtt::parse_connect;

use common::put_varint;

/// Counts the bytes allocated on each thread, so tests running in parallel don't mix.
struct CountingAllocator;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // try_with: the allocator also runs while thread locals are torn down.
    let _ = ALLOCATED.try_with(|allocated| allocated.set(allocated.get() + bytes));
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Parses `input` with `max_len`, checks what that one call allocated and returns it.
fn assert_bounded_allocation(input: &[u8], max_len: usize) -> usize {
    ALLOCATED.with(|allocated| allocated.set(0));
    let result = std::hint::black_box(parse_connect(std::hint::black_box(input), max_len));
    let allocated = ALLOCATED.with(Cell::get);
    drop(result);
    assert!(
        allocated <= 2 * input.len() + 1024,
        "{allocated} bytes allocated parsing {} input bytes: {:02x?}",
        input.len(),
        &input[..input.len().min(32)]
    );
    allocated
}

/// xorshift64: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn header(remaining: usize) -> Vec<u8> {
    let mut header = vec![0x10];
    put_varint(&mut header, remaining);
    header
}

#[test]
fn header_claiming_268_mb_allocates_nothing_proportional() {
    for level in [4, 5] {
        let mut input = header(268_435_455);
        input.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0xc2, 0x00, 0x3c]);
        input.extend_from_slice(&[0xff; 64]);
        for max_len in [usize::MAX, 64 * 1024] {
            for end in 0..=input.len() {
                assert_bounded_allocation(&input[..end], max_len);
            }
        }
    }
}

#[test]
fn fields_claiming_65535_bytes_allocate_nothing_proportional() {
    // Client id, will topic, will payload, username, password, each claiming 65535 bytes.
    for flags in [0x02, 0x06, 0x86, 0xc6, 0xc2] {
        for level in [4, 5] {
            let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags, 0x00, 0x3c];
            if level == 5 {
                body.push(0x00);
            }
            for _ in 0..5 {
                body.extend_from_slice(&[0xff, 0xff, b'x']);
            }
            let input = [header(body.len()), body].concat();
            assert_bounded_allocation(&input, usize::MAX);
        }
    }
    // v5 property lengths claiming 268 MB.
    let body = [
        0x00, 0x04, b'M', b'Q', b'T', b'T', 5, 0x02, 0x00, 0x3c, 0xff, 0xff, 0xff, 0x7f, 0x11,
    ];
    assert_bounded_allocation(&[header(body.len()), body.to_vec()].concat(), usize::MAX);
}

#[test]
fn large_valid_fields_allocate_about_their_size() {
    let password = vec![0xa5; 60_000];
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 5, 0xc2, 0x00, 0x3c];
    put_varint(&mut body, 3000);
    body.extend_from_slice(&[0x26; 3000]);
    body.extend_from_slice(&[0x00, 0x01, b'c', 0x00, 0x01, b'u', 0xea, 0x60]);
    body.extend_from_slice(&password);
    let input = [header(body.len()), body].concat();
    assert!(parse_connect(&input, usize::MAX).unwrap().is_some());
    // Also shows the counter sees the parser's allocations.
    assert!(assert_bounded_allocation(&input, usize::MAX) >= password.len());
}

#[test]
fn random_hostile_connects_allocate_at_most_twice_their_input() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let level = [3, 4, 5, 6][rng.below(4)];
        let name: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
        let mut body = vec![0x00, name.len() as u8];
        body.extend_from_slice(name);
        body.push(level);
        let tail_len = rng.below(200);
        body.extend_from_slice(&rng.bytes(tail_len));
        // Claim the true length, a huge one, or anything in between.
        let remaining = match rng.below(3) {
            0 => body.len(),
            1 => 268_435_455,
            _ => rng.below(1 << 20),
        };
        let input = [header(remaining), body].concat();
        let max_len = [usize::MAX, 256, 64 * 1024][rng.below(3)];
        assert_bounded_allocation(&input, max_len);
    }
}
