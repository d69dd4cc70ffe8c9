#!/usr/bin/env bash
# Builds the browser package into web/pkg (installing the wasm32 target, the wasm-bindgen-cli that
# matches Cargo.lock, and wasm-opt from npm when they are missing), prints its size, and with
# `--serve` serves the demo on http://127.0.0.1:${PORT:-8000}/.
#
# The package is compiled with WebAssembly SIMD (simd128): the CPU fallback's loops vectorize and
# the GEMM uses its simd128 kernels. Every current browser runs it (Chrome/Edge 91+, Firefox 89+,
# Safari 16.4+); in older ones the module does not compile and the page says why.
# `--scalar DIR` builds the same package without simd128 into DIR instead: the baseline of the
# wasm benchmark (web/bench.mjs), not something to ship. The two builds keep separate target
# directories (target/wasm-simd, target), since a change of RUSTFLAGS rebuilds every crate.
# `--test` then runs the wasm tests (tests/web.rs) in headless Chromium on the same build: the same
# flags, profile and target directory, so the dependencies compiled for the package are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

out=web/pkg
simd=1
if [ "${1:-}" = "--scalar" ]; then
  out=${2:?--scalar needs an output directory}
  simd=0
  shift 2
fi

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "installing wasm-bindgen-cli $want (the version in Cargo.lock)"
  cargo install wasm-bindgen-cli --version "$want"
fi
[ -x web/node_modules/.bin/wasm-opt ] || (cd web && npm install --no-audit --no-fund --silent)

# cdylib only for this build, so native builds do not link a shared library they never use.
if [ "$simd" = 1 ]; then
  target_dir=target/wasm-simd
  export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+simd128"
else
  target_dir=target
fi
CARGO_TARGET_DIR=$target_dir cargo rustc --lib --release --target wasm32-unknown-unknown --crate-type cdylib
rm -rf "$out"
wasm-bindgen --target web --no-typescript --out-dir "$out" "$target_dir/wasm32-unknown-unknown/release/flowmap.wasm"
web/node_modules/.bin/wasm-opt -Oz --enable-bulk-memory --enable-reference-types --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-multivalue --enable-simd "$out/flowmap_bg.wasm" -o "$out/flowmap_bg.wasm"

wasm=$(gzip -9c "$out/flowmap_bg.wasm" | wc -c)
js=$(gzip -9c "$out/flowmap.js" web/flowmap.mjs web/app.js | wc -c)
echo "$out: wasm $(wc -c < "$out/flowmap_bg.wasm") bytes ($wasm gzipped), JS $js bytes gzipped, total $((wasm + js)) bytes gzipped"

if [ "${1:-}" = "--test" ]; then
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$PWD/.ci/wasm-test-runner" CARGO_TARGET_DIR=$target_dir \
    cargo test --release --target wasm32-unknown-unknown --test web
fi

if [ "${1:-}" = "--serve" ]; then
  echo "serving http://127.0.0.1:${PORT:-8000}/"
  exec python3 -m http.server "${PORT:-8000}" --bind 127.0.0.1
fi
