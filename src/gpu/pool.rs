//! Recycled storage buffers. A network pass allocates the same sizes step after step; a dropped
//! tensor returns its buffer here for the next op of that size. Reuse inside one command encoder
//! is safe because passes execute in recording order; uploads never reuse a pooled buffer
//! (they use fresh mapped-at-creation buffers), since `queue.write_buffer` would run ahead of
//! commands still waiting in the encoder.
//!
//! The pool keeps at most `cap` bytes of free buffers (by default the activations one pass may
//! make, `sampler::GPU_PASS_BYTES`); a buffer dropped beyond that is freed, so sizes from
//! earlier batches (the page's sample count changes run to run) do not pile up (issue 10).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Debug)]
pub struct PoolState {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    /// Bytes of free buffers held.
    bytes: u64,
    cap: u64,
    /// How many times a buffer was let go instead of kept ([`Self::freed`]).
    freed: u64,
}

impl Default for PoolState {
    fn default() -> Self {
        PoolState {
            free: HashMap::new(),
            bytes: 0,
            cap: crate::sampler::GPU_PASS_BYTES as u64,
            freed: 0,
        }
    }
}

impl PoolState {
    /// Bytes of free buffers held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Sets the most bytes of free buffers to keep, freeing what is over it now.
    pub fn set_cap(&mut self, cap: u64) {
        self.cap = cap;
        if self.bytes > cap {
            self.free.clear();
            self.bytes = 0;
            self.freed += 1;
        }
    }

    /// Counts the times buffers were let go (dropped past the cap, or cleared): whoever keeps
    /// other handles to pooled buffers (the backend's bind groups) drops them when it changes,
    /// so that the memory is really freed.
    pub fn freed(&self) -> u64 {
        self.freed
    }
}

pub type Pool = Rc<RefCell<PoolState>>;

/// A storage buffer that goes back to its pool when the last tensor using it is dropped.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    pool: Pool,
}

impl PooledBuffer {
    pub fn new(buffer: wgpu::Buffer, pool: Pool) -> Self {
        PooledBuffer {
            buffer: Some(buffer),
            pool,
        }
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            let mut pool = self.pool.borrow_mut();
            if pool.bytes + b.size() <= pool.cap {
                pool.bytes += b.size();
                pool.free.entry(b.size()).or_default().push(b);
            } else {
                pool.freed += 1;
            }
            // Otherwise `b` is dropped here and wgpu frees it once no command uses it.
        }
    }
}

/// Takes a buffer of exactly `size` bytes from the pool, if one is free.
pub fn take(pool: &Pool, size: u64) -> Option<wgpu::Buffer> {
    let mut pool = pool.borrow_mut();
    let b = pool.free.get_mut(&size).and_then(|v| v.pop());
    if b.is_some() {
        pool.bytes -= size;
    }
    b
}
