//! Kernel parameters without a buffer per dispatch. Each dispatch's parameter block goes into a
//! slot of a few large uniform buffers, bound at its offset; the blocks are staged on the host
//! and written with one `queue.write_buffer` per buffer just before the submission that reads
//! them. Queue writes are ordered with submissions, so the same buffers serve every submission:
//! an earlier one has read its blocks before the next write lands. On the H200 a buffer created
//! per dispatch was part of ~25 µs of host work per dispatch (docs/GPU.md).

use std::num::NonZeroU64;

/// Parameter blocks per uniform buffer.
const SLOTS_PER_BUFFER: u64 = 256;

pub struct Uniforms {
    /// Bytes per slot: the adapter's uniform offset alignment, at least a block's 64 bytes.
    slot: u64,
    buffers: Vec<wgpu::Buffer>,
    /// The staged bytes of each buffer for the next submission.
    staged: Vec<Vec<u8>>,
    /// Slots taken since the last submission.
    used: u64,
}

impl Uniforms {
    pub fn new(offset_alignment: u32) -> Self {
        Uniforms {
            slot: u64::from(offset_alignment).max(64).next_multiple_of(16),
            buffers: Vec::new(),
            staged: Vec::new(),
            used: 0,
        }
    }

    /// Stages one parameter block (at most a slot's size) and returns where it will be bound.
    pub fn push(&mut self, device: &wgpu::Device, block: &[u8]) -> (wgpu::Buffer, u64, NonZeroU64) {
        assert!(
            !block.is_empty() && block.len() as u64 <= self.slot,
            "a parameter block of {} bytes",
            block.len()
        );
        let (b, s) = (self.used / SLOTS_PER_BUFFER, self.used % SLOTS_PER_BUFFER);
        let b = b as usize;
        if b == self.buffers.len() {
            self.buffers
                .push(device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("flowmap params"),
                    size: self.slot * SLOTS_PER_BUFFER,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }));
            self.staged.push(Vec::new());
        }
        let offset = s * self.slot;
        let staged = &mut self.staged[b];
        staged.resize(offset as usize, 0);
        staged.extend_from_slice(block);
        self.used += 1;
        let size = NonZeroU64::new(block.len() as u64).expect("non-empty block");
        (self.buffers[b].clone(), offset, size)
    }

    /// Writes the staged blocks; call right before submitting the commands that bind them.
    pub fn write(&mut self, queue: &wgpu::Queue) {
        for (buffer, staged) in self.buffers.iter().zip(&mut self.staged) {
            if !staged.is_empty() {
                staged.resize(staged.len().next_multiple_of(4), 0);
                queue.write_buffer(buffer, 0, staged);
                staged.clear();
            }
        }
        self.used = 0;
    }
}
