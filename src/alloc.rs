//! The allocator's settings for the binaries (`flowmap` and `trainer` call this first thing).
//! A training step allocates and frees its activations and gradients (megabytes each) every
//! step. glibc's malloc serves such blocks with fresh `mmap`s, or trims the freed top of its heap
//! back to the kernel, so every step touched new pages: 520,000–780,000 page faults in a
//! `trainer bench --train-steps 12` of the U-Net at batch 64 against 72,000 with the settings
//! below, and U-Net `fm` 1.19–1.35× faster with them (docs/BENCHMARKS.md, "The allocator").
//! The sampler's CPU backend recycles its tensors' buffers itself ([`crate::cpu::pool`]), but
//! the GEMM's packing buffers and the ops' scratch come and go per call: with these settings a
//! U-Net forward at batch 16 on the CPU took about 0.8× the time, and the same-run GEMM peak
//! read about 1.1× higher (docs/BENCHMARKS.md, "Per-layer profile").

/// Serves blocks up to glibc's largest mmap threshold (32 MiB) from the heap and keeps up to
/// 1 GiB of freed heap instead of returning it to the kernel. glibc on Linux only; elsewhere
/// (and when a setting is refused) the allocator's defaults stay. Call it first thing in `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters, under malloc's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
