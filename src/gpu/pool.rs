//! Recycled storage buffers. A network pass allocates the same sizes step after step; a dropped
//! tensor returns its buffer here for the next op of that size. Reuse inside one command encoder
//! is safe because passes execute in recording order; uploads never reuse a pooled buffer
//! (they use fresh mapped-at-creation buffers), since `queue.write_buffer` would run ahead of
//! commands still waiting in the encoder.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub type Pool = Rc<RefCell<HashMap<u64, Vec<wgpu::Buffer>>>>;

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
            self.pool.borrow_mut().entry(b.size()).or_default().push(b);
        }
    }
}

/// Takes a buffer of exactly `size` bytes from the pool, if one is free.
pub fn take(pool: &Pool, size: u64) -> Option<wgpu::Buffer> {
    pool.borrow_mut().get_mut(&size).and_then(|v| v.pop())
}
