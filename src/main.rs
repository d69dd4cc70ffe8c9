//! The `flowmap` binary: the native command line (src/cli.rs). In the browser the library's
//! wasm API (src/web.rs) takes its place, so a wasm build of this binary does nothing.

#[cfg(not(target_arch = "wasm32"))]
mod cli;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
