//! A stopwatch that works natively and in the browser (`std::time::Instant` panics on
//! wasm32-unknown-unknown; there the page's `performance.now()` is read instead).

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    #[cfg(not(target_arch = "wasm32"))]
    start: std::time::Instant,
    #[cfg(target_arch = "wasm32")]
    start_ms: f64,
}

impl Stopwatch {
    pub fn start() -> Self {
        Stopwatch {
            #[cfg(not(target_arch = "wasm32"))]
            start: std::time::Instant::now(),
            #[cfg(target_arch = "wasm32")]
            start_ms: now_ms(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        #[cfg(not(target_arch = "wasm32"))]
        return self.start.elapsed();
        #[cfg(target_arch = "wasm32")]
        return Duration::from_secs_f64(((now_ms() - self.start_ms) / 1e3).max(0.0));
    }
}

/// `performance.now()` of the global scope (window or worker), or `Date.now()` without it.
#[cfg(target_arch = "wasm32")]
fn now_ms() -> f64 {
    use wasm_bindgen::JsCast;
    let perf = js_sys::Reflect::get(&js_sys::global(), &"performance".into()).ok();
    if let Some(perf) = perf.filter(|p| !p.is_undefined()) {
        if let Ok(now) = js_sys::Reflect::get(&perf, &"now".into()) {
            if let Some(f) = now.dyn_ref::<js_sys::Function>() {
                if let Some(v) = f.call0(&perf).ok().and_then(|v| v.as_f64()) {
                    return v;
                }
            }
        }
    }
    js_sys::Date::now()
}
