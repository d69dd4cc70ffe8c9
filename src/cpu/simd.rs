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
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, the only feature v4 was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA, the features v3 was compiled for.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
