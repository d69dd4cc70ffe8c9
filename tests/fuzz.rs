//! Fuzz target: the weights loader (`Weights::from_bytes`, what the CLI and the page call, then
//! the network built from it, as both do) under structure-aware mutations of valid files.
//!
//! Under `cargo test` it first runs 15,000 inputs from a fixed seed (the same on every run: CI's
//! regression check; `FLOWMAP_FUZZ_SEEDED=N` for more), then bolero's random engine on fresh
//! seeds for 12 s. `BOLERO_RANDOM_ITERATIONS=N BOLERO_RANDOM_TEST_TIME_MS=…` runs N random inputs
//! (docs/BENCHMARKS.md, "Fuzzing"); a failure prints the `BOLERO_RANDOM_SEED` that replays it, and
//! the same target runs under libFuzzer with `cargo bolero test` on a nightly toolchain.
//!
//! An input is one of four seed files (a tiny MLP and a tiny U-Net, F32 and F16) and up to eight
//! edits: bit flips and byte writes (biased to the header), truncations, appended bytes, a new
//! header length, and edits made through the parsed header (shapes, ranks, data offsets, dtypes,
//! tensor names, dropped tensors, any field of the `flowmap` metadata set to a huge, negative,
//! fractional or ill-typed value, deep or huge JSON), so most inputs get past the first parse.
//!
//! Checked for every input: no panic, no abort, and no single allocation larger than
//! `4 × input length + 1 MiB` (the f32 copy of an F16 file is twice its bytes; nothing may be
//! sized from what a header claims).

#[path = "common/mod.rs"]
mod common;
#[path = "common/fuzzing.rs"]
mod fuzzing;

use bolero::generator::{gen_with, TypeGenerator};
use flowmap::cpu::CpuBackend;
use flowmap::net::param_specs;
use flowmap::weights::{random_tensors, StoreDtype, Weights};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: fuzzing::LargestAlloc = fuzzing::LargestAlloc;

/// A size or count written into a file: small, any u64, a power of two (and its neighbours),
/// negative, fractional.
#[derive(Debug, Clone, TypeGenerator)]
enum Num {
    Small(u8),
    Any(u64),
    Pow2 { exp: u8, delta: i8 },
    Neg(i64),
    Frac(f32),
}

impl Num {
    fn json(&self) -> Value {
        match *self {
            Num::Small(v) => json!(v),
            Num::Any(v) => json!(v),
            Num::Pow2 { exp, delta } => json!((1u64 << (exp % 64)).wrapping_add(delta as u64)),
            Num::Neg(v) => json!(-(v.unsigned_abs().max(1) as i128) as i64),
            Num::Frac(v) => json!(v),
        }
    }
    fn u64(&self) -> u64 {
        match *self {
            Num::Small(v) => v as u64,
            Num::Any(v) => v,
            Num::Pow2 { exp, delta } => (1u64 << (exp % 64)).wrapping_add(delta as u64),
            Num::Neg(v) => v as u64,
            Num::Frac(v) => v as u64,
        }
    }
}

/// A JSON value of the wrong kind for where it goes.
#[derive(Debug, Clone, TypeGenerator)]
enum Odd {
    Null,
    Bool(bool),
    Text(u8),
    EmptyArray,
    EmptyObject,
    Array(Vec<u8>),
}

impl Odd {
    fn json(&self) -> Value {
        match self {
            Odd::Null => Value::Null,
            Odd::Bool(b) => json!(b),
            Odd::Text(n) => {
                json!(["", "unet", "mlp", "gelu", "F16", "é\u{0}", "1e999"][*n as usize % 7])
            }
            Odd::EmptyArray => json!([]),
            Odd::EmptyObject => json!({}),
            Odd::Array(v) => json!(v),
        }
    }
}

#[derive(Debug, Clone, TypeGenerator)]
enum Edit {
    FlipBit {
        at: u32,
        bit: u8,
        header: bool,
    },
    SetByte {
        at: u32,
        value: u8,
        header: bool,
    },
    Truncate {
        keep: u32,
    },
    Append(Vec<u8>),
    HeaderLen(Num),
    Shape {
        tensor: u8,
        dim: u8,
        value: Num,
    },
    Rank {
        tensor: u8,
        push: Option<Num>,
    },
    Offsets {
        tensor: u8,
        begin: Num,
        end: Num,
    },
    Dtype {
        tensor: u8,
        dtype: u8,
    },
    Rename {
        tensor: u8,
        to: u8,
    },
    Drop {
        tensor: u8,
    },
    MetaNumber {
        field: u16,
        value: Num,
    },
    MetaOdd {
        field: u16,
        value: Odd,
    },
    MetaDrop {
        field: u16,
    },
    /// The `flowmap` metadata replaced by `depth` nested arrays (serde_json's recursion limit).
    MetaDeep {
        depth: u16,
    },
    /// The whole header replaced by `depth` nested arrays.
    HeaderDeep {
        depth: u16,
    },
    /// A metadata string of `len` bytes (up to 1 MiB).
    MetaHuge {
        len: u32,
    },
    MetaRaw(Vec<u8>),
}

const DTYPES: [&str; 10] = [
    "F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "F8_E4M3", "I64", "???",
];

fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut out = Vec::new();
        for model in [common::tiny_mlp(), common::tiny_unet()] {
            let meta = common::meta_for(model);
            let tensors = random_tensors(&param_specs(&meta.model).unwrap(), 7);
            for dtype in [StoreDtype::F32, StoreDtype::F16] {
                out.push(Weights::to_bytes(&meta, &tensors, dtype).unwrap());
            }
        }
        out
    })
}

/// The header length, the parsed header and the data after it, when the file still has them.
fn split(bytes: &[u8]) -> Option<(Map<String, Value>, Vec<u8>)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    let header = serde_json::from_slice(bytes.get(8..end)?).ok()?;
    Some((header, bytes[end..].to_vec()))
}

fn join(header: &Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap();
    join_raw(&text, data)
}

fn join_raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

fn tensor_names(h: &Map<String, Value>) -> Vec<String> {
    h.keys().filter(|k| *k != "__metadata__").cloned().collect()
}

/// JSON pointers to every leaf of a value.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| leaves(x, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| leaves(x, format!("{at}/{i}"), out)),
        _ => out.push(at),
    }
}

/// Applies `f` to the parsed `flowmap` metadata and writes it back.
fn edit_meta(h: &mut Map<String, Value>, f: impl FnOnce(&mut Value)) {
    let Some(text) = h
        .get("__metadata__")
        .and_then(|m| m.get("flowmap"))
        .and_then(Value::as_str)
    else {
        return;
    };
    let Ok(mut meta) = serde_json::from_str::<Value>(text) else {
        return;
    };
    f(&mut meta);
    set_meta_text(h, meta.to_string());
}

fn set_meta_text(h: &mut Map<String, Value>, text: String) {
    let m = h
        .entry("__metadata__")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(m) = m {
        m.insert("flowmap".into(), Value::String(text));
    }
}

fn meta_leaf(h: &mut Map<String, Value>, field: u16, f: impl FnOnce(&mut Value)) {
    edit_meta(h, |meta| {
        let mut ptrs = Vec::new();
        leaves(meta, String::new(), &mut ptrs);
        if let Some(p) = ptrs.get(field as usize % ptrs.len().max(1)) {
            if let Some(v) = meta.pointer_mut(p) {
                f(v);
            }
        }
    });
}

fn pick(names: &[String], i: u8) -> Option<&String> {
    names.get(i as usize % names.len().max(1))
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let header_end = || {
        let n = bytes
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
        (8 + n.min(bytes.len() as u64) as usize).min(bytes.len())
    };
    let pos = |at: u32, header: bool, len: usize| {
        let span = if header {
            header_end().max(1)
        } else {
            len.max(1)
        };
        at as usize % span
    };
    match edit {
        Edit::FlipBit { at, bit, header } => {
            let i = pos(*at, *header, bytes.len());
            if let Some(b) = bytes.get_mut(i) {
                *b ^= 1 << (bit % 8);
            }
        }
        Edit::SetByte { at, value, header } => {
            let i = pos(*at, *header, bytes.len());
            if let Some(b) = bytes.get_mut(i) {
                *b = *value;
            }
        }
        Edit::Truncate { keep } => bytes.truncate(*keep as usize % (bytes.len() + 1)),
        Edit::Append(extra) => bytes.extend_from_slice(extra),
        Edit::HeaderLen(n) => {
            if bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&n.u64().to_le_bytes());
            }
        }
        Edit::HeaderDeep { depth } => {
            let d = *depth as usize;
            let text = format!("{}{}", "[".repeat(d), "]".repeat(d));
            *bytes = join_raw(text.as_bytes(), &[]);
        }
        _ => {
            let Some((mut h, data)) = split(bytes) else {
                return;
            };
            let names = tensor_names(&h);
            let tensor = |h: &mut Map<String, Value>, i: u8| -> Option<Map<String, Value>> {
                pick(&names, i).and_then(|n| h.get_mut(n)?.as_object_mut().cloned())
            };
            let put = |h: &mut Map<String, Value>, i: u8, t: Map<String, Value>| {
                if let Some(n) = pick(&names, i) {
                    h.insert(n.clone(), Value::Object(t));
                }
            };
            match edit {
                Edit::Shape {
                    tensor: i,
                    dim,
                    value,
                } => {
                    if let Some(mut t) = tensor(&mut h, *i) {
                        if let Some(s) = t.get_mut("shape").and_then(Value::as_array_mut) {
                            if !s.is_empty() {
                                let d = *dim as usize % s.len();
                                s[d] = value.json();
                            }
                        }
                        put(&mut h, *i, t);
                    }
                }
                Edit::Rank { tensor: i, push } => {
                    if let Some(mut t) = tensor(&mut h, *i) {
                        if let Some(s) = t.get_mut("shape").and_then(Value::as_array_mut) {
                            match push {
                                Some(v) => s.push(v.json()),
                                None => {
                                    s.pop();
                                }
                            }
                        }
                        put(&mut h, *i, t);
                    }
                }
                Edit::Offsets {
                    tensor: i,
                    begin,
                    end,
                } => {
                    if let Some(mut t) = tensor(&mut h, *i) {
                        t.insert("data_offsets".into(), json!([begin.json(), end.json()]));
                        put(&mut h, *i, t);
                    }
                }
                Edit::Dtype { tensor: i, dtype } => {
                    if let Some(mut t) = tensor(&mut h, *i) {
                        t.insert(
                            "dtype".into(),
                            json!(DTYPES[*dtype as usize % DTYPES.len()]),
                        );
                        put(&mut h, *i, t);
                    }
                }
                Edit::Rename { tensor: i, to } => {
                    if let (Some(from), Some(to)) = (pick(&names, *i), pick(&names, *to)) {
                        if let Some(t) = h.remove(from) {
                            let name = if from == to {
                                format!("{to}.x")
                            } else {
                                to.clone()
                            };
                            h.insert(name, t);
                        }
                    }
                }
                Edit::Drop { tensor: i } => {
                    if let Some(n) = pick(&names, *i) {
                        h.remove(n);
                    }
                }
                Edit::MetaNumber { field, value } => {
                    meta_leaf(&mut h, *field, |v| *v = value.json())
                }
                Edit::MetaOdd { field, value } => meta_leaf(&mut h, *field, |v| *v = value.json()),
                Edit::MetaDrop { field } => edit_meta(&mut h, |meta| {
                    if let Some(m) = meta.as_object_mut() {
                        let keys: Vec<String> = m.keys().cloned().collect();
                        if let Some(k) = keys.get(*field as usize % keys.len().max(1)) {
                            m.remove(k);
                        }
                    }
                }),
                Edit::MetaDeep { depth } => {
                    let d = *depth as usize;
                    set_meta_text(&mut h, format!("{}{}", "[".repeat(d), "]".repeat(d)));
                }
                Edit::MetaHuge { len } => {
                    let n = *len as usize % (1 << 20);
                    edit_meta(&mut h, |meta| {
                        if let Some(m) = meta.as_object_mut() {
                            m.insert("padding".into(), json!("x".repeat(n)));
                        }
                    });
                }
                Edit::MetaRaw(raw) => set_meta_text(&mut h, String::from_utf8_lossy(raw).into()),
                _ => unreachable!("byte-level edits are handled above"),
            }
            *bytes = join(&h, &data);
        }
    }
}

static INPUTS: AtomicU64 = AtomicU64::new(0);
static LOADED: AtomicU64 = AtomicU64::new(0);

fn run_one(seed: u8, edits: &[Edit]) {
    let seeds = seeds();
    let mut bytes = seeds[seed as usize % seeds.len()].clone();
    for e in edits {
        apply(&mut bytes, e);
    }
    fuzzing::reset();
    if let Ok(w) = Weights::from_bytes(&bytes) {
        w.network(&CpuBackend::FAST)
            .expect("a file that loads must build its network");
        LOADED.fetch_add(1, Ordering::Relaxed);
    }
    let bound = 4 * bytes.len() + (1 << 20);
    let largest = fuzzing::largest();
    assert!(
        largest <= bound,
        "an allocation of {largest} bytes for a {}-byte input (bound {bound}); edits {edits:?}",
        bytes.len()
    );
    let n = INPUTS.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() && n >= 1 << 16 {
        eprintln!(
            "fuzz weights: {n} inputs, {} loaded",
            LOADED.load(Ordering::Relaxed)
        );
    }
}

#[test]
fn weights_loader_survives_mutated_files() {
    // Every seed loads unmutated: the mutations start from valid files.
    for s in seeds() {
        Weights::from_bytes(s).unwrap();
    }
    fuzzing::check_meter();
    let start = Instant::now();
    let inputs = || (gen_with::<u8>(), gen_with::<Vec<Edit>>().len(1usize..=8));
    let seeded = fuzzing::seeded(
        0,
        fuzzing::seeded_count(15_000),
        &inputs(),
        |(seed, edits)| run_one(*seed, edits),
    );
    eprintln!(
        "fuzz weights: {seeded} seeded inputs in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    bolero::check!()
        .with_generator(inputs())
        .with_test_time(Duration::from_secs(12))
        .for_each(|(seed, edits)| run_one(*seed, edits));
    let n = INPUTS.load(Ordering::Relaxed);
    eprintln!(
        "fuzz weights: {n} inputs in {:.1} s, {} loaded (0 panics, 0 aborts, no allocation over 4 × input + 1 MiB)",
        start.elapsed().as_secs_f64(),
        LOADED.load(Ordering::Relaxed)
    );
    assert!(n > 0, "the fuzz target ran no input");
}
