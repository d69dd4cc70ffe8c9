//! A global allocator for the fuzz targets: the system allocator, recording per thread the
//! largest single allocation since the last [`reset`], so a target can assert that no input made
//! the code under test allocate more than a stated bound (a header claiming 2^60 bytes must not
//! allocate them). Per thread, so tests running beside a target do not count.
//! Shared by `tests/fuzz.rs` and `trainer/tests/fuzz_idx.rs` (included by path).

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
