//! What the fuzz targets share (`tests/fuzz.rs` and `trainer/tests/fuzz_idx.rs`, which include
//! this file by path):
//! - a global allocator, the system's, recording per thread the largest single allocation since
//!   the last [`reset`], so a target can assert that no input made the code under test allocate
//!   more than a stated bound (a header claiming 2^60 bytes must not allocate them); per thread,
//!   so tests running beside a target do not count;
//! - [`seeded`], the same inputs on every run and machine: CI's regression run, before bolero's
//!   own run on fresh random seeds.

use bolero::generator::bolero_generator::driver::{ByteSliceDriver, Options};
use bolero::generator::ValueGenerator;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct LargestAlloc;

thread_local! {
    // A const initialiser with no destructor: touching it never allocates.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

unsafe impl GlobalAlloc for LargestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Starts a new measurement on this thread.
pub fn reset() {
    LARGEST.with(|c| c.set(0));
}

/// The largest single allocation on this thread since [`reset`], in bytes.
pub fn largest() -> usize {
    LARGEST.with(|c| c.get())
}

/// Checks that the meter sees an allocation made after a reset (a target's first step).
pub fn check_meter() {
    reset();
    let probe = std::hint::black_box(vec![1u8; 3 << 20]);
    assert!(
        largest() >= probe.len(),
        "the allocation meter missed 3 MiB"
    );
}

/// Runs `f` on `n` inputs of `generator`, each drawn from 4 KiB of bytes from flowmap's portable
/// PRNG seeded with `seed`, and returns how many it ran (a generator may refuse some bytes).
pub fn seeded<G: ValueGenerator>(
    seed: u64,
    n: usize,
    generator: &G,
    mut f: impl FnMut(&G::Output),
) -> usize {
    let mut rng = flowmap::rng::Rng::new(seed);
    let options = Options::default();
    let mut bytes = vec![0u8; 4096];
    let mut ran = 0;
    for _ in 0..n {
        for c in bytes.chunks_mut(8) {
            c.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        if let Some(v) = generator.generate(&mut ByteSliceDriver::new(&bytes, &options)) {
            f(&v);
            ran += 1;
        }
    }
    ran
}

/// The number of seeded inputs: `FLOWMAP_FUZZ_SEEDED` if set, else `default`.
pub fn seeded_count(default: usize) -> usize {
    std::env::var("FLOWMAP_FUZZ_SEEDED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
