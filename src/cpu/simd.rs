//! Run-time selection of the widest vector unit for the fast path's own loops (the GEMM crate
//! does its own selection). The default x86-64 target assumes only SSE2, so a loop the compiler
//! vectorizes runs 4 lanes wide; compiled again with AVX2+FMA (8 lanes) or AVX-512 (16 lanes)
//! and chosen once per call by CPUID, the same source runs at the machine's width. Elsewhere
//! (aarch64, wasm32 with simd128) the one build is already what the target offers.

/// Defines `fn $name(args) -> ret` whose body is compiled for AVX-512, for AVX2+FMA and for the
/// baseline target, and dispatches on the running CPU (`is_x86_feature_detected!` caches).
/// Exported for the trainer's fused ops (`flowmap::multiversion!`); the body's callees are
/// compiled for the chosen features only where they are inlined (`#[inline(always)]`).
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn v4($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::cpu::Isa::detect() {
                    // SAFETY: detect() found AVX-512F, the only feature v4 was compiled for.
                    $crate::cpu::Isa::Avx512 => return unsafe { v4($($arg),*) },
                    // SAFETY: detect() found AVX2 and FMA, the features v3 was compiled for.
                    $crate::cpu::Isa::Avx2 => return unsafe { v3($($arg),*) },
                    $crate::cpu::Isa::Base => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// The instruction sets the fast path is compiled for, and the one this CPU runs: the single
/// owner of the CPUID checks ([`multiversion!`](crate::multiversion) and the direct
/// convolution's tiles both dispatch on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    /// The target's baseline (SSE2 on x86-64; simd128 on wasm when built with it; NEON).
    Base,
}

impl Isa {
    /// The widest set this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Base
    }

    /// Every set this CPU runs (for tests that hold each one to the reference).
    pub fn available() -> Vec<Isa> {
        let best = Isa::detect();
        [Isa::Avx512, Isa::Avx2, Isa::Base]
            .into_iter()
            .filter(|&i| i as u8 >= best as u8)
            .collect()
    }
}
