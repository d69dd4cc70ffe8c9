//! Recycled output buffers: the CPU backend's counterpart of the GPU buffer pool.
//!
//! Every fast op writes its output into a new buffer. Fresh from the allocator, a large buffer
//! is fresh pages from the kernel, zeroed one page fault at a time: a batch-64 U-Net forward
//! took about 540,000 page faults and spent a fifth of its time in them, most visibly in the
//! memory-bound ops (concatenation, upsampling, GroupNorm). A [`CpuTensor`](super::CpuTensor)
//! gives its buffer back here when its last clone is dropped, and [`take`] hands it out again
//! to the next op that asks for the same length, so a forward pass in steady state allocates
//! nothing large. Only buffers of at least [`MIN_LEN`] values are kept (smaller ones are what
//! malloc's free lists already serve well), at most [`MAX_VALUES`] values in all.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Mutex;

/// Smallest buffer the pool keeps, in values (16 KiB).
pub const MIN_LEN: usize = 1 << 12;
/// Most values kept in all (256 MiB of f32); beyond it a returned buffer is freed.
pub const MAX_VALUES: usize = 1 << 26;

struct Pool {
    /// Free buffers by length.
    free: BTreeMap<usize, Vec<Vec<f32>>>,
    /// Values held in `free`.
    values: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: BTreeMap::new(),
    values: 0,
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    // A panic elsewhere while the lock was held leaves the map consistent: every operation on
    // it is a single insert or removal.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer of `len` values with unspecified contents (a recycled buffer's old values, or
/// zeros): for outputs the op then writes in full.
pub fn take(len: usize) -> Vec<f32> {
    if len >= MIN_LEN {
        let mut p = pool();
        if let Some(v) = p.free.get_mut(&len).and_then(Vec::pop) {
            p.values -= len;
            return v;
        }
    }
    vec![0.0; len]
}

/// Keeps `v` for a later [`take`] of the same length (or frees it, past the limits).
pub fn give(v: Vec<f32>) {
    let len = v.len();
    if len < MIN_LEN {
        return;
    }
    let mut p = pool();
    if p.values + len <= MAX_VALUES {
        p.values += len;
        p.free.entry(len).or_default().push(v);
    }
}

/// Values the pool holds now.
pub fn held() -> usize {
    pool().values
}

/// A tensor's data: a buffer that goes back to the pool when dropped.
#[derive(Debug, Default)]
pub struct Buffer(Vec<f32>);

impl Buffer {
    pub fn new(v: Vec<f32>) -> Self {
        Buffer(v)
    }
}

impl Deref for Buffer {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.0
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dropped buffer comes back from `take` of its length, and only of its length; small
    /// buffers are not kept. (Other tests share the pool, so lengths here are unusual ones.)
    #[test]
    fn buffers_are_recycled_by_length() {
        let len = MIN_LEN + 12_345;
        let mut v = take(len);
        assert_eq!(v.len(), len);
        v[7] = 42.0;
        let ptr = v.as_ptr();
        drop(Buffer::new(v));
        let other = take(len + 1);
        assert_ne!(other.as_ptr(), ptr);
        let again = take(len);
        assert_eq!((again.as_ptr(), again[7]), (ptr, 42.0));

        let small = vec![1.0f32; MIN_LEN - 1];
        give(small);
        assert!(!pool().free.contains_key(&(MIN_LEN - 1)));
    }
}
