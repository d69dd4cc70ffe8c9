//! Fuzz target: the trainer's IDX reader (`decode_idx`, which `read_idx` calls on a file's bytes:
//! gzip detection, bounded inflate, header and size checks) under structure-aware mutations of
//! valid image and label files, raw and gzipped. Driven as `tests/fuzz.rs` is: 50,000 inputs from a
//! fixed seed, then bolero's random engine for 12 s.
//!
//! Checked for every input: no panic, no abort, and no single allocation larger than
//! `2 × (inflated length) + 64 KiB`, where the inflated length is what the bytes really hold:
//! memory may follow the data, never a size a header claims.

#[path = "../../tests/common/fuzzing.rs"]
mod fuzzing;
#[path = "../src/data/idx.rs"]
#[allow(dead_code)]
mod idx;

use bolero::generator::{gen_with, TypeGenerator};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: fuzzing::LargestAlloc = fuzzing::LargestAlloc;

#[derive(Debug, Clone, TypeGenerator)]
enum Edit {
    FlipBit {
        at: u16,
        bit: u8,
        header: bool,
    },
    SetByte {
        at: u16,
        value: u8,
    },
    Truncate {
        keep: u16,
    },
    Append(Vec<u8>),
    /// Dimension `dim` set to any u32, or to a power of two plus a small offset.
    Dim {
        dim: u8,
        value: u32,
        pow2: Option<(u8, i8)>,
    },
    Ndim(u8),
    ElementType(u8),
    /// The current bytes gzipped (a stream the reader must inflate).
    Gzip,
    /// A gzipped file of 2^(size % 24) zero bytes (up to 8 MiB) behind the current header: it
    /// inflates ~1000× beyond its size (the reader's own limit is 4 GiB).
    GzipBomb {
        size: u8,
    },
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn seeds() -> Vec<Vec<u8>> {
    let images = idx(&[3, 4, 5], &(0..60).collect::<Vec<u8>>());
    let labels = idx(&[3], &[1, 7, 9]);
    vec![gzip(&images), gzip(&labels), images, labels]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let header = 4 + 4 * bytes.get(3).copied().unwrap_or(0) as usize;
    match edit {
        Edit::FlipBit { at, bit, header: h } => {
            let span = if *h {
                header.min(bytes.len())
            } else {
                bytes.len()
            };
            if span > 0 {
                bytes[*at as usize % span] ^= 1 << (bit % 8);
            }
        }
        Edit::SetByte { at, value } => {
            if !bytes.is_empty() {
                let n = bytes.len();
                bytes[*at as usize % n] = *value;
            }
        }
        Edit::Truncate { keep } => bytes.truncate(*keep as usize % (bytes.len() + 1)),
        Edit::Append(extra) => bytes.extend_from_slice(extra),
        Edit::Dim { dim, value, pow2 } => {
            let ndim = bytes.get(3).copied().unwrap_or(0) as usize;
            if ndim > 0 && bytes.len() >= header {
                let at = 4 + 4 * (*dim as usize % ndim);
                let v = match pow2 {
                    Some((e, d)) => (1u32 << (e % 32)).wrapping_add(*d as u32),
                    None => *value,
                };
                bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        Edit::Ndim(n) => {
            if bytes.len() >= 4 {
                bytes[3] = *n;
            }
        }
        Edit::ElementType(t) => {
            if bytes.len() >= 4 {
                bytes[2] = *t;
            }
        }
        Edit::Gzip => *bytes = gzip(bytes),
        Edit::GzipBomb { size } => {
            let mut plain = bytes[..header.min(bytes.len())].to_vec();
            plain.resize(plain.len() + (1 << (size % 24)), 0);
            *bytes = gzip(&plain);
        }
    }
}

/// The bytes a reader has to hold: the file, or what its gzip stream inflates to.
fn inflated_len(bytes: &[u8]) -> usize {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return bytes.len();
    }
    let (mut n, mut buf) = (0usize, vec![0u8; 1 << 16]);
    let mut d = GzDecoder::new(bytes);
    while let Ok(k) = d.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k;
    }
    n.max(bytes.len())
}

static INPUTS: AtomicU64 = AtomicU64::new(0);
static PARSED: AtomicU64 = AtomicU64::new(0);

#[test]
fn idx_reader_survives_mutated_files() {
    let seeds = seeds();
    for s in &seeds {
        idx::decode_idx(s).unwrap();
    }
    fuzzing::check_meter();
    let start = Instant::now();
    let inputs = || (gen_with::<u8>(), gen_with::<Vec<Edit>>().len(1usize..=6));
    let run = |(seed, edits): &(u8, Vec<Edit>)| {
        let mut bytes = seeds[*seed as usize % seeds.len()].clone();
        for e in edits {
            apply(&mut bytes, e);
        }
        let bound = 2 * inflated_len(&bytes) + (64 << 10);
        fuzzing::reset();
        if let Ok(a) = idx::decode_idx(&bytes) {
            assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
            PARSED.fetch_add(1, Ordering::Relaxed);
        }
        let largest = fuzzing::largest();
        assert!(
            largest <= bound,
            "an allocation of {largest} bytes (bound {bound}); edits {edits:?}"
        );
        INPUTS.fetch_add(1, Ordering::Relaxed);
    };
    let seeded = fuzzing::seeded(0, fuzzing::seeded_count(50_000), &inputs(), run);
    eprintln!(
        "fuzz idx: {seeded} seeded inputs in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    bolero::check!()
        .with_generator(inputs())
        .with_test_time(Duration::from_secs(12))
        .for_each(|input| run(input));
    let n = INPUTS.load(Ordering::Relaxed);
    eprintln!(
        "fuzz idx: {n} inputs in {:.1} s, {} parsed (0 panics, 0 aborts, no allocation over 2 × inflated + 64 KiB)",
        start.elapsed().as_secs_f64(),
        PARSED.load(Ordering::Relaxed)
    );
    assert!(n > 0, "the fuzz target ran no input");
}
