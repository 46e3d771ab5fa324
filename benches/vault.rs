//! Criterion benches of the hot paths, each reporting throughput:
//! normalize+tokenize of one field, AES-SIV seal/open by size, store
//! put/get, and durable batched tokenize through RocksDB with group commit.
//! Run: `cargo bench --bench vault` (CI only compiles them).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the `vault` binary ships with, so the benches time what runs.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vault::api::{self, Ctx};
use vault::classes::{self, Class};
use vault::crypto::{derive, DataKey, TokenKey};
use vault::secret::SecretKey;
use vault::store::{Batch, RocksStore, Space, Store};

fn master() -> SecretKey<32> {
    SecretKey::from_slice(&[7u8; 32]).unwrap_or_else(SecretKey::generate)
}

fn normalize_tokenize(c: &mut Criterion) {
    let key = TokenKey::new(derive(&master(), b"bench/token"));
    let mut g = c.benchmark_group("normalize_tokenize");
    g.throughput(Throughput::Elements(1));
    let cases = [
        (Class::Email, "chen.ming.1990@example-mail.com"), // 32 bytes
        (Class::Text, "abcdefghijklmnopqrstuvwxyz012345"), // 32 bytes
        (Class::Phone, "+86 138 0013 8000"),
        (Class::CnResidentId, "350102199003071234"),
        (Class::Name, "欧阳娜娜"),
    ];
    for (class, value) in cases {
        g.bench_with_input(
            BenchmarkId::new(class.as_str(), value.len()),
            &value,
            |b, v| {
                b.iter(|| {
                    let n = classes::normalize(class, black_box(v)).ok();
                    n.map(|n| key.token(class, n.token_form()))
                })
            },
        );
    }
    g.finish();
}

fn aes_siv(c: &mut Criterion) {
    let dk = DataKey::new(1, derive(&master(), b"bench/data"));
    let aad = vault::crypto::value_aad("acct-1001", Class::Text, 1, Some(&[7u8; 24]));
    let mut g = c.benchmark_group("aes_siv");
    for size in [16usize, 32, 256, 4096] {
        let pt = vec![b'x'; size];
        let ct = dk.seal(&aad, &pt).unwrap_or_default();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("seal", size), &pt, |b, pt| {
            b.iter(|| dk.seal(&aad, black_box(pt)))
        });
        g.bench_with_input(BenchmarkId::new("open", size), &ct, |b, ct| {
            b.iter(|| dk.open(&aad, black_box(ct)))
        });
    }
    g.finish();
}

fn store(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(store) = RocksStore::open(dir.path()) else {
        return;
    };
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("put_durable", |b| {
        b.iter(|| {
            i += 1;
            let mut batch = Batch::default();
            batch.put(Space::Values, i.to_be_bytes().to_vec(), vec![0u8; 64]);
            store.write(batch)
        })
    });
    for n in [100usize, 1000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("batch_put_durable", n), &n, |b, &n| {
            b.iter(|| {
                let mut batch = Batch::default();
                for _ in 0..n {
                    i += 1;
                    batch.put(Space::Values, i.to_be_bytes().to_vec(), vec![0u8; 64]);
                }
                store.write(batch)
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    let mut j = 0u64;
    g.bench_function("get", |b| {
        b.iter(|| {
            j = (j % i.max(1)) + 1;
            store.get(Space::Values, &j.to_be_bytes())
        })
    });
    g.finish();
}

/// Reads at scale: a million `Values` rows in table files (flushed every
/// 100,000, so several levels and files), then detokenize's lookup (a
/// token's rows by prefix) for present and absent tokens, and a point read
/// of an absent key.
fn store_large(c: &mut Criterion) {
    use rand::{Rng, SeedableRng};
    const ROWS: usize = 1_000_000;
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(store) = RocksStore::open(dir.path()) else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut tokens = Vec::with_capacity(ROWS);
    for chunk in 0..ROWS / 10_000 {
        let mut batch = Batch::default();
        for _ in 0..10_000 {
            let t: [u8; 24] = rng.gen();
            batch.put(
                Space::Values,
                [&t[..], b"subject-1"].concat(),
                vec![0u8; 96],
            );
            tokens.push(t);
        }
        if store.write(batch).is_err() {
            return;
        }
        if chunk % 10 == 9 && store.flush().is_err() {
            return;
        }
    }
    let mut g = c.benchmark_group("store_1m_rows");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("token_rows_present", |b| {
        b.iter(|| {
            i = (i + 7919) % ROWS;
            let t = tokens.get(i).copied().unwrap_or_default();
            vault::store::scan_prefix(&store, Space::Values, &t, 16)
        })
    });
    g.bench_function("token_rows_absent", |b| {
        b.iter(|| {
            let t: [u8; 24] = rng.gen();
            vault::store::scan_prefix(&store, Space::Values, &t, 16)
        })
    });
    g.bench_function("get_absent", |b| {
        b.iter(|| {
            let t: [u8; 24] = rng.gen();
            store.get(Space::Values, &[&t[..], b"subject-1"].concat())
        })
    });
    g.finish();
}

/// Durable tokenize through the real request handler (JSON parse, policy,
/// normalize, token, seal, group commit to RocksDB with a synced WAL), with
/// `CONCURRENCY` requests of `FIELDS` fields in flight.
fn batch_tokenize(c: &mut Criterion) {
    const FIELDS: usize = 100;
    const CONCURRENCY: usize = 16;
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(path) = vault::dev::prepare(dir.path()) else {
        return;
    };
    let Ok(cfg) = vault::config::Config::load(&path) else {
        return;
    };
    let Ok(store) = RocksStore::open(dir.path()) else {
        return;
    };
    let Ok(keys) = vault::server::open_keys(&cfg, &store) else {
        return;
    };
    let Ok(v) = vault::server::build(&cfg, keys, Arc::new(store)) else {
        return;
    };
    let ctx = Ctx {
        caller: "app".into(),
        role: vault::policy::Role::App,
        request_id: "bench".into(),
        deadline: None,
    };
    let body = |seed: u64| {
        let fields: Vec<_> = (0..FIELDS as u64)
            .map(|k| serde_json::json!({"class":"phone","value":format!("139{:08}", (seed * 100 + k) % 100_000_000)}))
            .collect();
        Bytes::from(serde_json::to_vec(&serde_json::json!({"subject":format!("acct-{seed}"),"purpose":"notification","fields":fields})).unwrap_or_default())
    };
    let mut g = c.benchmark_group("tokenize_durable");
    g.throughput(Throughput::Elements((FIELDS * CONCURRENCY) as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    let mut seed = 0u64;
    g.bench_function(BenchmarkId::new("fields_per_request", FIELDS), |b| {
        b.iter_custom(|iters| {
            let bodies: Vec<Vec<Bytes>> = (0..iters)
                .map(|_| {
                    (0..CONCURRENCY)
                        .map(|_| {
                            seed += 1;
                            body(seed)
                        })
                        .collect()
                })
                .collect();
            let start = Instant::now();
            rt.block_on(async {
                for round in bodies {
                    let tasks: Vec<_> = round
                        .into_iter()
                        .map(|b| {
                            let v = v.clone();
                            let ctx = ctx.clone();
                            tokio::spawn(async move { api::tokenize(&v, &ctx, &b).await.is_ok() })
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

/// A fresh database of `n` values, one per subject (the worst case: every
/// value needs its own subject key and two value-key derivations), with a
/// second key version active and a rewrap job started towards it.
fn rewrap_fixture(n: usize) -> Option<(tempfile::TempDir, RocksStore, vault::keys::Keyring)> {
    let dir = tempfile::tempdir().ok()?;
    let store = RocksStore::open(dir.path()).ok()?;
    let keys = vault::keys::Keyring::open(&master(), &store).ok()?;
    let dk = keys.active().ok()?;
    let mut b = Batch::default();
    for i in 0..n {
        let value = format!("139{i:08}");
        let subject = format!("acct-{i}");
        let token = keys.token_key().token(Class::Phone, &value);
        let aad = vault::crypto::tagged_value_aad(&subject, Class::Phone, dk.version(), &token);
        let (sk, create) = vault::subject_keys::create(&keys, &subject).ok()?;
        b.absorb(create);
        let mut rec = vault::schema::Record {
            class: Class::Phone,
            key_version: dk.version(),
            collected_ms: 1,
            expires_ms: None,
            purpose: "notification".into(),
            ciphertext: dk.for_subject(&sk).seal(&aad, value.as_bytes()).ok()?,
            token_bound: true,
            restricted: false,
            tag: None,
        };
        b.put(
            Space::Values,
            vault::schema::value_key(&token, &subject),
            rec.encode_tagged(keys.header_key(), &subject, &token),
        );
        b.put(
            Space::Subjects,
            vault::schema::subject_key(&subject, &token),
            Vec::new(),
        );
    }
    store.write(b).ok()?;
    let (batch, next) = keys.rotation(0).ok()?;
    store.write(batch).ok()?;
    let keys = keys.reload(&store).ok()?;
    store
        .write(vault::rewrap::Rewrap::start_batch(&keys, next).ok()?)
        .ok()?;
    Some((dir, store, keys))
}

/// Rewrap as the background job runs it, on a fresh database per sample
/// (a real job rewrites each value once; re-running it on one database
/// would pile versions into the memtable and time compactions instead):
/// 8 steps of 4,096 values, one at a time, and as one pipelined run.
fn rewrap(c: &mut Criterion) {
    const STEP: usize = 4096;
    const STEPS: usize = 8;
    let mut g = c.benchmark_group("rewrap");
    g.throughput(Throughput::Elements((STEP * STEPS) as u64));
    g.sample_size(10);
    for pipelined in [false, true] {
        let name = if pipelined { "run" } else { "steps" };
        g.bench_function(BenchmarkId::new(name, format!("{STEPS}x{STEP}")), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let Some((_dir, store, keys)) = rewrap_fixture(STEP * STEPS) else {
                        return spent;
                    };
                    let t = Instant::now();
                    if pipelined {
                        let _ = vault::rewrap::run(&store, &keys, STEP, STEPS);
                    } else {
                        for _ in 0..STEPS {
                            let _ = vault::rewrap::step(&store, &keys, STEP);
                        }
                    }
                    spent += t.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
}

/// Incident exposure over a large audit log: the window is found by
/// binary search, so a narrow window costs the same on a million events as
/// on a thousand; the whole log is read once for the worst case.
fn exposure(c: &mut Criterion) {
    use vault::audit::{chain, seq_key, Draft, Head, HEAD_KEY};
    let events: u64 = if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(store) = RocksStore::open(dir.path()) else {
        return;
    };
    let mut head = Head::EMPTY;
    let mut b = Batch::default();
    for i in 0..events {
        let mut ev = Draft {
            request_id: format!("r{i}"),
            caller: if i % 7 == 0 { "officer2" } else { "app" }.into(),
            action: "detokenize",
            purpose: Some("notification".into()),
            subject: Some(format!("acct-{}", i % 50_000)),
            class: Some("phone".into()),
            outcome: if i % 3 == 0 { "denied" } else { "released" },
            ..Draft::default()
        }
        .into_event(head.seq + 1, 1_000_000 + i);
        let (h, bytes) = chain(&head, &mut ev);
        b.put(Space::Audit, seq_key(h.seq), bytes);
        head = h;
        if i % 10_000 == 9_999 {
            b.put(Space::Meta, HEAD_KEY.to_vec(), head.encode());
            if store.write(std::mem::take(&mut b)).is_err() {
                return;
            }
        }
    }
    let subjects = |from: u64, to: u64| {
        let mut seen = std::collections::HashSet::new();
        let _ = vault::audit::for_each_in_window(
            &store,
            from,
            to,
            vault::audit::Deadline::NEVER,
            |e| {
                if e.outcome == "released" {
                    seen.extend(e.subject);
                }
            },
        );
        seen.len()
    };
    let mut g = c.benchmark_group("exposure");
    g.sample_size(10);
    let end = 1_000_000 + events;
    g.throughput(Throughput::Elements(10_000));
    g.bench_function(BenchmarkId::new("window_10k_of", events), |b| {
        b.iter(|| subjects(end - 10_000, end))
    });
    g.throughput(Throughput::Elements(events));
    g.bench_function(BenchmarkId::new("whole_log", events), |b| {
        b.iter(|| subjects(0, end))
    });
    g.finish();
}

criterion_group!(
    benches,
    normalize_tokenize,
    aes_siv,
    store,
    store_large,
    batch_tokenize,
    rewrap,
    exposure
);
criterion_main!(benches);
