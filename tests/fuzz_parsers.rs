//! Fuzzing of the two input parsers (`.npy` headers and bodies, CSV text), run by every
//! `cargo test` with a fixed case budget: proptest mutates the seed corpus in
//! tests/fuzz/corpus (the hostile inputs of the fuzz findings, made by
//! tests/fuzz/make_corpus.py) and generates files from the format's grammar. Every input
//! must give a matrix or a typed error, never a panic; well-formed inputs must decode to
//! exactly the values an independent encoder wrote.
//!
//! `NSA_FLOW_FUZZ_CASES=N` sets the cases per property (default 20 000); the executions are
//! printed (`cargo test --test fuzz_parsers -- --nocapture`).

use nalgebra::DMatrix;
use nsa_flow::io::{csv_matrix_from_str, npy_batch_from_bytes, npy_matrix_from_bytes, CsvHeader};
use nsa_flow::NsaError;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

fn cases() -> u32 {
    std::env::var("NSA_FLOW_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 30, "the seed corpus is incomplete");
    v
}

/// What any parse result must satisfy: a typed reader error, or a matrix no larger than the
/// input could hold (the values come from the bytes, 4 at least per value).
fn check_npy(bytes: &[u8]) {
    match npy_matrix_from_bytes(bytes) {
        Ok(m) => assert!(
            m.len() * 4 <= bytes.len(),
            "{} values from {} bytes",
            m.len(),
            bytes.len()
        ),
        Err(e) => assert_reader_error(&e),
    }
    match npy_batch_from_bytes(bytes) {
        Ok(ms) => {
            let total: usize = ms.iter().map(|m| m.len()).sum();
            assert!(total * 4 <= bytes.len());
            assert!(ms.iter().all(|m| m.shape() == ms[0].shape()));
        }
        Err(e) => assert_reader_error(&e),
    }
}

fn check_csv(text: &str) {
    for h in [CsvHeader::Auto, CsvHeader::Yes, CsvHeader::No] {
        match csv_matrix_from_str(text, h) {
            Ok(m) => assert!(m.nrows() >= 1 && m.ncols() >= 1 && m.len() <= text.len()),
            Err(e) => assert_reader_error(&e),
        }
    }
}

fn assert_reader_error(e: &NsaError) {
    assert!(
        matches!(
            e,
            NsaError::MalformedFile { .. }
                | NsaError::SizeOverflow { .. }
                | NsaError::MemoryBudget { .. }
                | NsaError::OutOfMemory { .. }
        ),
        "unexpected error kind: {e:?}"
    );
    assert!(!e.to_string().is_empty());
}

static EXECUTIONS: AtomicUsize = AtomicUsize::new(0);

fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let count = AtomicUsize::new(0);
    runner
        .run(&strategy, |v| {
            count.fetch_add(1, Ordering::Relaxed);
            test(v);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let n = count.load(Ordering::Relaxed);
    EXECUTIONS.fetch_add(n, Ordering::Relaxed);
    println!("fuzz {name}: {n} executions without a finding");
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    /// Replace a byte range by a token of the header grammar.
    Splice(usize, usize, &'static str),
}

const TOKENS: &[&str] = &[
    "'shape'",
    "\"shape\"",
    "'descr'",
    "'fortran_order'",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    "{",
    "}",
    "True",
    "False",
    "None",
    "'<f8'",
    "'>f4'",
    "'<f2'",
    "'|u1'",
    "0",
    "1",
    "-1",
    "3L",
    "18446744073709551615",
    "18446744073709551616",
    "4294967296",
    "1099511627776",
    "6148914691236517206",
    "9223372036854775809",
    "1e3",
    "'",
    "\"",
    "\\",
    "\n",
    " ",
    "'shape': (3, 4), 'shape': (1,)",
    "(((((((((",
    "\u{feff}",
    "\u{0}",
];

fn mutation(max: usize) -> impl Strategy<Value = Mutation> {
    let max = max.max(1);
    prop_oneof![
        (0..max, any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (0..=max, proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (0..max, 1..64usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (0..=max).prop_map(Mutation::Truncate),
        (0..max, 0..12usize, proptest::sample::select(TOKENS))
            .prop_map(|(i, n, t)| Mutation::Splice(i, n, t)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match m {
        Mutation::Flip(i, b) if *i < len => bytes[*i] ^= b | 1,
        Mutation::Insert(i, b) => {
            let i = (*i).min(len);
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Delete(i, n) if *i < len => {
            bytes.drain(*i..(*i + n).min(len));
        }
        Mutation::Truncate(n) => bytes.truncate(*n),
        Mutation::Splice(i, n, t) if *i <= len => {
            bytes.splice(*i..(*i + n).min(len), t.bytes());
        }
        _ => {}
    }
}

/// Byte positions are drawn up to this bound and applied only where they fall inside; the
/// headers the mutations matter most for lie in the first few hundred bytes.
const MUTATION_SPAN: usize = 512;

#[test]
fn every_seed_parses_to_a_matrix_or_a_typed_error() {
    for (name, bytes) in corpus() {
        if name.ends_with(".npy") {
            check_npy(&bytes);
        } else if let Ok(text) = std::str::from_utf8(&bytes) {
            check_csv(text);
        }
    }
}

#[test]
fn mutated_npy_seeds_never_panic() {
    let seeds: Vec<Vec<u8>> = corpus()
        .into_iter()
        .filter(|(n, _)| n.ends_with(".npy"))
        .map(|(_, b)| b)
        .collect();
    let n = seeds.len();
    run(
        "npy mutations",
        (
            0..n,
            proptest::collection::vec(mutation(MUTATION_SPAN), 1..6),
        ),
        |(seed, muts)| {
            let mut b = seeds[seed].clone();
            for m in &muts {
                apply(&mut b, m);
            }
            check_npy(&b);
        },
    );
}

#[test]
fn mutated_csv_seeds_never_panic() {
    let seeds: Vec<Vec<u8>> = corpus()
        .into_iter()
        .filter(|(n, _)| n.ends_with(".csv"))
        .map(|(_, b)| b)
        .collect();
    let n = seeds.len();
    run(
        "csv mutations",
        (0..n, proptest::collection::vec(mutation(64), 1..6)),
        |(seed, muts)| {
            let mut b = seeds[seed].clone();
            for m in &muts {
                apply(&mut b, m);
            }
            check_csv(&String::from_utf8_lossy(&b));
        },
    );
}

/// A header assembled from the grammar's pieces: keys in any order, quoted either way,
/// possibly repeated or missing, shapes with hostile integers; and a body of some length.
fn header_dict() -> impl Strategy<Value = (String, usize)> {
    let dim = prop_oneof![
        0usize..5,
        Just(1usize << 32),
        Just(1usize << 40),
        Just(usize::MAX),
        Just(usize::MAX / 3 + 1),
        any::<usize>(),
    ];
    let shape = proptest::collection::vec(dim, 0..4).prop_map(|d| match d.len() {
        1 => format!("({},)", d[0]),
        _ => format!(
            "({})",
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    let shape = prop_oneof![
        shape.clone(),
        shape.prop_map(|s| s.replace('(', "[").replace(')', "]"))
    ];
    let descr = proptest::sample::select(vec![
        "'<f8'", "'>f8'", "'<f4'", "'>f4'", "'<f2'", "'|u1'", "'<i8'", "'f8'",
    ]);
    let entry = prop_oneof![
        descr.prop_map(|d| format!("'descr': {d}")),
        any::<bool>()
            .prop_map(|b| format!("'fortran_order': {}", if b { "True" } else { "False" })),
        shape.prop_map(|s| format!("'shape': {s}")),
    ];
    (
        proptest::collection::vec(entry, 0..5),
        any::<bool>(),
        0usize..256,
    )
        .prop_map(|(entries, dq, data)| {
            let mut d = format!("{{{}, }}", entries.join(", "));
            if dq {
                d = d.replace('\'', "\"");
            }
            (d, data)
        })
}

fn npy_file(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut h = dict.to_string();
    h.push_str(&" ".repeat((64 - (10 + h.len() + 1) % 64) % 64));
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn grammar_generated_headers_never_panic() {
    run("npy grammar", header_dict(), |(dict, data)| {
        check_npy(&npy_file(&dict, &vec![0x3f; data]));
    });
}

/// Well-formed files of every accepted kind decode to exactly the encoded values.
#[test]
fn well_formed_npy_round_trips_exactly() {
    let strategy = (
        1usize..6,
        1usize..6,
        1usize..4,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    );
    run(
        "npy round trip",
        strategy,
        |(p, k, b, fortran, f32, big, seed)| {
            let mut rng = nsa_flow::rng::Rng::new(seed);
            let ms: Vec<DMatrix<f64>> = (0..b)
                .map(|_| {
                    DMatrix::from_fn(p, k, |_, _| {
                        let v = rng.normal() * 1e3;
                        if f32 {
                            f64::from(v as f32)
                        } else {
                            v
                        }
                    })
                })
                .collect();
            // file order: C is the last axis fastest, Fortran the first
            let mut vals = Vec::new();
            if fortran {
                for j in 0..k {
                    for i in 0..p {
                        for m in &ms {
                            vals.push(m[(i, j)]);
                        }
                    }
                }
            } else {
                for m in &ms {
                    for i in 0..p {
                        for j in 0..k {
                            vals.push(m[(i, j)]);
                        }
                    }
                }
            }
            let data: Vec<u8> = vals
                .iter()
                .flat_map(|&v| match (f32, big) {
                    (true, false) => (v as f32).to_le_bytes().to_vec(),
                    (true, true) => (v as f32).to_be_bytes().to_vec(),
                    (false, false) => v.to_le_bytes().to_vec(),
                    (false, true) => v.to_be_bytes().to_vec(),
                })
                .collect();
            let descr = format!(
                "{}{}",
                if big { ">" } else { "<" },
                if f32 { "f4" } else { "f8" }
            );
            let order = if fortran { "True" } else { "False" };
            let dict = format!(
                "{{'descr': '{descr}', 'fortran_order': {order}, 'shape': ({b}, {p}, {k}), }}"
            );
            assert_eq!(npy_batch_from_bytes(&npy_file(&dict, &data)).unwrap(), ms);
            let dict2 =
                format!("{{'shape': ({p}, {k}), 'descr': '{descr}', 'fortran_order': {order}}}");
            let n = p * k * if f32 { 4 } else { 8 };
            let first = if fortran {
                // the first member alone, column-major
                let v: Vec<u8> = (0..p * k)
                    .flat_map(|f| {
                        let x = ms[0][(f % p, f / p)];
                        match (f32, big) {
                            (true, false) => (x as f32).to_le_bytes().to_vec(),
                            (true, true) => (x as f32).to_be_bytes().to_vec(),
                            (false, false) => x.to_le_bytes().to_vec(),
                            (false, true) => x.to_be_bytes().to_vec(),
                        }
                    })
                    .collect();
                v
            } else {
                data[..n].to_vec()
            };
            assert_eq!(
                npy_matrix_from_bytes(&npy_file(&dict2, &first)).unwrap(),
                ms[0]
            );
        },
    );
}

#[test]
fn well_formed_csv_round_trips_exactly() {
    let strategy = (
        1usize..6,
        1usize..6,
        proptest::sample::select(vec!["\n", "\r\n", "\r"]),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    );
    run(
        "csv round trip",
        strategy,
        |(p, k, eol, bom, header, seed)| {
            let mut rng = nsa_flow::rng::Rng::new(seed);
            let m = DMatrix::from_fn(p, k, |_, _| {
                rng.normal() * 10f64.powi((rng.normal() * 3.0) as i32)
            });
            let mut text = String::new();
            if bom {
                text.push('\u{feff}');
            }
            if header {
                text.push_str(
                    &(0..k)
                        .map(|j| format!("c{j}"))
                        .collect::<Vec<_>>()
                        .join(","),
                );
                text.push_str(eol);
            }
            for i in 0..p {
                let row: Vec<String> = (0..k).map(|j| format!(" {:?} ", m[(i, j)])).collect();
                text.push_str(&row.join(","));
                text.push_str(eol);
            }
            assert_eq!(csv_matrix_from_str(&text, CsvHeader::Auto).unwrap(), m);
            let given = if header {
                CsvHeader::Yes
            } else {
                CsvHeader::No
            };
            assert_eq!(csv_matrix_from_str(&text, given).unwrap(), m);
        },
    );
}

#[test]
fn arbitrary_text_never_panics_in_the_csv_reader() {
    let alphabet = proptest::sample::select(vec![
        "0", "1", "9", ".", "-", "+", "e", "E", ",", ",", "\n", "\r", " ", "\t", "#", "a", "x",
        "nan", "inf", "1e400", "\u{feff}", "\"", "0x1", "_",
    ]);
    run(
        "csv text",
        proptest::collection::vec(alphabet, 0..80).prop_map(|v| v.concat()),
        |text| check_csv(&text),
    );
}
