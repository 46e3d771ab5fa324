//! The fuzz targets' smoke pass on stable, for CI: every committed seed of
//! `fuzz/corpus/<target>/` (regressions included) through the matching
//! `vault_suite::fuzzing` body, then a bounded, deterministic mutation pass
//! (fixed-seed `StdRng`: bit flips, byte edits, truncation, splicing) over
//! those seeds. Same invariants as the nightly fuzzers, in a few seconds.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vault_suite::fuzzing;

/// Mutated inputs per target.
const MUTATIONS: usize = 20_000;
/// The longest input the mutator builds.
const MAX_LEN: usize = 4096;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (path.display().to_string(), data)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// Runs `body` on `data`; a violated invariant fails the test with the
/// input in hex, ready to become a regression seed.
fn run(target: &str, what: &str, body: fn(&[u8]), data: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| body(data))).is_err() {
        panic!(
            "{target}: {what} violates an invariant (message above); input hex: {}",
            hex::encode(data)
        );
    }
}

fn smoke(target: &str, body: fn(&[u8])) {
    let seeds = seeds(target);
    for (name, data) in &seeds {
        run(target, name, body, data);
    }
    // Each target its own stream, so adding one leaves the others' inputs
    // as they were.
    let stream = target
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let mut rng = StdRng::seed_from_u64(0x5eed_f022 ^ stream);
    for i in 0..MUTATIONS {
        let input = mutate(&seeds, &mut rng);
        run(target, &format!("mutation {i}"), body, &input);
    }
}

/// One seed with one to four edits stacked on it, or now and then a fresh
/// random input.
fn mutate(seeds: &[(String, Vec<u8>)], rng: &mut StdRng) -> Vec<u8> {
    if rng.gen_ratio(1, 16) {
        let n = rng.gen_range(0..256);
        return (0..n).map(|_| rng.gen()).collect();
    }
    let mut data = seeds[rng.gen_range(0..seeds.len())].1.clone();
    for _ in 0..rng.gen_range(1..=4) {
        edit(&mut data, seeds, rng);
    }
    data.truncate(MAX_LEN);
    data
}

/// Bytes that matter to the parsers: JSON punctuation, separators, digits,
/// the ID check letter, and the lead bytes of multi-byte UTF-8.
const INTERESTING: &[u8] = b"{}[]\":,\\-+@.% 0189XxT\x00\x7f\xc2\xe3\xef\xf0\xff";

fn edit(data: &mut Vec<u8>, seeds: &[(String, Vec<u8>)], rng: &mut StdRng) {
    let len = data.len();
    match rng.gen_range(0..8) {
        0 if len > 0 => {
            let i = rng.gen_range(0..len);
            data[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.gen_range(0..len);
            data[i] = INTERESTING[rng.gen_range(0..INTERESTING.len())];
        }
        2 => {
            let i = rng.gen_range(0..=len);
            data.insert(i, INTERESTING[rng.gen_range(0..INTERESTING.len())]);
        }
        3 if len > 0 => {
            let i = rng.gen_range(0..len);
            let j = rng.gen_range(i..=len.min(i + 16));
            data.drain(i..j);
        }
        4 => data.truncate(rng.gen_range(0..=len)),
        5 => {
            // Splice: a prefix of this input, a suffix of another seed.
            let other = &seeds[rng.gen_range(0..seeds.len())].1;
            data.truncate(rng.gen_range(0..=len));
            let from = rng.gen_range(0..=other.len());
            data.extend_from_slice(&other[from..]);
        }
        6 if len > 0 => {
            // Repeat a chunk: long values, nested or repeated fields.
            let i = rng.gen_range(0..len);
            let j = rng.gen_range(i..=len.min(i + 32));
            let chunk = data[i..j].to_vec();
            for _ in 0..rng.gen_range(1..8) {
                data.splice(j..j, chunk.iter().copied());
            }
        }
        _ => {
            let i = rng.gen_range(0..=len);
            let n = rng.gen_range(1..8);
            let random: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            data.splice(i..i, random);
        }
    }
}

#[test]
fn requests() {
    smoke("requests", fuzzing::requests);
}

#[test]
fn normalizers() {
    smoke("normalizers", fuzzing::normalizers);
}

#[test]
fn record_and_audit() {
    smoke("record_and_audit", fuzzing::record_and_audit);
}

#[test]
fn detectors() {
    smoke("detectors", fuzzing::detectors);
}
