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

use rayon::prelude::*;
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    recycled(len).unwrap_or_else(|| vec![0.0; len])
}

/// A recycled buffer of exactly `len` values, if the pool holds one.
fn recycled(len: usize) -> Option<Vec<f32>> {
    if len < MIN_LEN {
        return None;
    }
    let mut p = pool();
    let v = p.free.get_mut(&len).and_then(Vec::pop)?;
    p.values -= len;
    Some(v)
}

/// An op's output for parallel tasks that each write one chunk in full: a recycled buffer
/// when the pool has one, else fresh memory whose chunks are zeroed by the tasks that take
/// them, just before they write them ([`Output::par_chunks_mut`]).
///
/// Why: where buffers do not come back (the trainer's ops, whose outputs go to burn), a [`take`]
/// is always fresh, and `vec![0.0; n]` is a memset of the whole output on the calling thread
/// before the parallel op starts. In a U-Net training step those memsets were 5% of the CPU
/// time, on the thread that also runs the step's serial work. Zeroed by each task instead, the
/// writes are spread over the cores and land in cache right before the op overwrites them.
pub struct Output {
    buf: Vec<f32>,
    len: usize,
    fresh: bool,
    handed_out: bool,
    /// Values zeroed by the tasks so far (fresh buffers).
    zeroed: AtomicUsize,
}

impl Output {
    /// An output of `len` values.
    pub fn new(len: usize) -> Self {
        match recycled(len) {
            Some(buf) => Output {
                buf,
                len,
                fresh: false,
                handed_out: false,
                zeroed: AtomicUsize::new(len),
            },
            None => Output {
                buf: Vec::with_capacity(len),
                len,
                fresh: true,
                handed_out: false,
                zeroed: AtomicUsize::new(0),
            },
        }
    }

    /// The buffer in chunks of `chunk` values (the last may be shorter), each initialised (a
    /// fresh chunk zeroed) as a task takes it. Once per output: [`Self::into_vec`] checks that
    /// every value was handed out.
    pub fn par_chunks_mut(
        &mut self,
        chunk: usize,
    ) -> impl IndexedParallelIterator<Item = &mut [f32]> + '_ {
        assert!(!self.handed_out, "an Output's chunks are handed out once");
        self.handed_out = true;
        let (fresh, zeroed) = (self.fresh, &self.zeroed);
        let values: &mut [MaybeUninit<f32>] = if fresh {
            &mut self.buf.spare_capacity_mut()[..self.len]
        } else {
            // SAFETY: f32 and MaybeUninit<f32> have the same layout, and only initialised
            // values (f32s) are ever written through the cast slice.
            unsafe { &mut *(self.buf.as_mut_slice() as *mut [f32] as *mut [MaybeUninit<f32>]) }
        };
        values.par_chunks_mut(chunk.max(1)).map(move |c| {
            if fresh {
                c.fill(MaybeUninit::new(0.0));
                zeroed.fetch_add(c.len(), Ordering::Relaxed);
            }
            // SAFETY: every value of `c` is initialised: zeroed just above, or a recycled
            // buffer's old value; MaybeUninit<f32> and f32 have the same layout.
            unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) }
        })
    }

    /// The written buffer. Panics unless every chunk was handed out (a fresh buffer's values
    /// are initialised only by [`Self::par_chunks_mut`]).
    pub fn into_vec(mut self) -> Vec<f32> {
        if self.fresh {
            assert_eq!(
                self.zeroed.load(Ordering::Acquire),
                self.len,
                "an Output was not handed out in full"
            );
            // SAFETY: the one traversal of par_chunks_mut zeroed disjoint chunks covering all
            // `len` values (counted above), within the capacity reserved in `new`.
            unsafe { self.buf.set_len(self.len) };
        }
        std::mem::take(&mut self.buf)
    }
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

    /// A fresh Output comes back zeroed where its tasks did not write and written where they
    /// did; a recycled one is the pool's buffer; one not handed out in full is refused.
    #[test]
    fn outputs_are_written_chunk_by_chunk() {
        let len = MIN_LEN + 777;
        let mut out = Output::new(len);
        out.par_chunks_mut(100)
            .enumerate()
            .for_each(|(i, c)| c[0] = i as f32 + 1.0);
        let v = out.into_vec();
        assert_eq!(v.len(), len);
        for (i, x) in v.iter().enumerate() {
            let want = if i % 100 == 0 {
                (i / 100) as f32 + 1.0
            } else {
                0.0
            };
            assert_eq!(*x, want, "value {i}");
        }
        let ptr = v.as_ptr();
        drop(Buffer::new(v));
        let mut again = Output::new(len);
        again.par_chunks_mut(len).for_each(|c| c[1] = 5.0);
        let v = again.into_vec();
        assert_eq!((v.as_ptr(), v[0], v[1]), (ptr, 1.0, 5.0));

        let partial = std::panic::catch_unwind(|| {
            let mut out = Output::new(len + 1);
            out.par_chunks_mut(64).take(3).for_each(|c| c[0] = 1.0);
            out.into_vec()
        });
        assert!(partial.is_err());
    }
}
