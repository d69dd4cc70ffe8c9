//! The allocator's settings for training. A training step allocates and frees its activations
//! and gradients (megabytes each) every step. glibc's malloc serves such blocks with fresh
//! `mmap`s, or trims the freed top of its heap back to the kernel, so every step touched new
//! pages: 520,000–780,000 page faults in a `trainer bench --train-steps 12` of the U-Net at
//! batch 64 against 72,000 with the settings below, and U-Net `fm` 1.19–1.35× faster with them
//! (docs/BENCHMARKS.md, "The allocator"). The sampler keeps its own buffer pool
//! (flowmap::cpu::pool); the trainer's tensors belong to burn, so the trainer tells malloc to keep
//! freed memory instead.

/// Serves blocks up to glibc's largest mmap threshold (32 MiB) from the heap and keeps up to
/// 1 GiB of freed heap instead of returning it to the kernel. glibc on Linux only; elsewhere
/// (and when a setting is refused) the allocator's defaults stay.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
