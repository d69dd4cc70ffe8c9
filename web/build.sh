#!/usr/bin/env bash
# Builds the browser package into web/pkg (installing the wasm32 target, the wasm-bindgen-cli that
# matches Cargo.lock, and wasm-opt from npm when they are missing), prints its size, and with
# `--serve` serves the demo on http://127.0.0.1:${PORT:-8000}/.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "installing wasm-bindgen-cli $want (the version in Cargo.lock)"
  cargo install wasm-bindgen-cli --version "$want"
fi
[ -x web/node_modules/.bin/wasm-opt ] || (cd web && npm install --no-audit --no-fund --silent)

# cdylib only for this build, so native builds do not link a shared library they never use.
cargo rustc --lib --release --target wasm32-unknown-unknown --crate-type cdylib
rm -rf web/pkg
wasm-bindgen --target web --no-typescript --out-dir web/pkg target/wasm32-unknown-unknown/release/flowmap.wasm
web/node_modules/.bin/wasm-opt -Oz --enable-bulk-memory --enable-reference-types --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-multivalue web/pkg/flowmap_bg.wasm -o web/pkg/flowmap_bg.wasm

wasm=$(gzip -9c web/pkg/flowmap_bg.wasm | wc -c)
js=$(gzip -9c web/pkg/flowmap.js web/app.js | wc -c)
echo "web/pkg: wasm $(wc -c < web/pkg/flowmap_bg.wasm) bytes ($wasm gzipped), JS $js bytes gzipped, total $((wasm + js)) bytes gzipped"

if [ "${1:-}" = "--serve" ]; then
  echo "serving http://127.0.0.1:${PORT:-8000}/"
  exec python3 -m http.server "${PORT:-8000}" --bind 127.0.0.1
fi
