//! `vault-bench`: drives a running vault over HTTPS with client
//! certificates, and optionally a bare hyper + rustls server with the same
//! TLS and mTLS setup answering a fixed body (the ceiling), in the same run.
//! Reports throughput and latency percentiles as text or JSON.
//!
//! ```sh
//! vault-bench --dev ./vault-data --scenario tokenize1 --connections 16 --seconds 10 --ceiling
//! ```

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the `vault` binary ships with, for the same-process
/// ceiling server too.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::Method;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use vault_sdk::{Client, ClientBuilder};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Scenario {
    /// One phone number per request.
    Tokenize1,
    /// 100 phone numbers per request.
    Tokenize100,
    /// Detokenize one token (an audit event per request).
    Detokenize,
    /// Half tokenize1, half detokenize.
    Mixed,
    /// Deidentify (tokenize mode) a 2 KB complaint with five PII in it.
    Deidentify,
}

#[derive(Debug, Parser)]
#[command(
    name = "vault-bench",
    about = "Load generator for the vault, with a TLS ceiling"
)]
struct Args {
    /// API endpoint of the vault.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    endpoint: String,
    /// A `vault dev` directory: CA, the `app` client certificate, vault.toml.
    #[arg(long, default_value = "./vault-data")]
    dev: PathBuf,
    #[arg(long, value_enum, default_value = "tokenize1")]
    scenario: Scenario,
    /// Keep-alive connections, one worker each.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Use HTTP/2 (one stream at a time per connection).
    #[arg(long)]
    http2: bool,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Also measure a bare hyper + rustls server with the same TLS setup
    /// answering a fixed body, and print the vault as a ratio of it. The
    /// ceiling server runs in a process of its own, as the vault does.
    #[arg(long)]
    ceiling: bool,
    /// Run the ceiling server inside this process instead, on the load
    /// generator's own threads (how it ran before: cheaper for the ceiling,
    /// which then skips every cross-process wakeup the vault pays).
    #[arg(long, requires = "ceiling")]
    ceiling_in_process: bool,
    /// Internal: be the ceiling server, print its URL, and serve until
    /// standard input closes (the parent's run is over).
    #[arg(long, hide = true)]
    serve_ceiling: bool,
    /// Repeat the run (with --ceiling: ceiling then vault) this many times
    /// and print the median ratio: on a shared machine the speed drifts
    /// between runs, and alternating keeps each pair close in time.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[arg(long)]
    json: bool,
    /// Open loop: send this many requests per second in all (spread evenly
    /// over the connections) instead of as fast as answers come back.
    /// Latency then counts from when a request was due, so a server that
    /// falls behind shows it (no coordinated omission).
    #[arg(long, value_name = "REQ_PER_S")]
    rate: Option<f64>,
    /// The vault's ops listener (e.g. 127.0.0.1:9464): scrape /metrics
    /// before and after the vault run and print how many requests the vault
    /// counted against how many the tool sent, and the vault's own p99
    /// (from its request histogram) and slow store writes beside the
    /// tool's p99: whether a tail is the vault's or the connections'.
    #[arg(long, value_name = "ADDR")]
    ops: Option<String>,
    /// Also report the requests slower than this, grouped into windows of
    /// time (slow requests due within 30 ms of each other share one), with
    /// the connections each window touched: a tail where every connection
    /// was late at once is a stall of the server or the backlog behind it,
    /// not one connection's bad luck.
    #[arg(long, value_name = "MS")]
    slow_ms: Option<f64>,
}

/// Slow requests due within this of each other share a window.
const SLOW_GAP_US: u64 = 30_000;

/// How many of the largest windows a report lists.
const SLOW_WINDOWS_LISTED: usize = 5;

#[derive(Debug, Serialize)]
struct SlowReport {
    threshold_ms: f64,
    requests: u64,
    windows: usize,
    /// The largest windows (most requests first).
    largest: Vec<vault_suite::slow::Window>,
}

#[derive(Debug, Serialize)]
struct Report {
    target: String,
    scenario: Scenario,
    connections: usize,
    http2: bool,
    /// The open-loop rate asked for, if any.
    rate: Option<f64>,
    seconds: f64,
    requests: u64,
    errors: u64,
    requests_per_s: f64,
    fields_per_s: f64,
    /// The mean latency: with the connections, what Little's law needs
    /// (connections / mean = the rate a closed loop can reach).
    mean_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow: Option<SlowReport>,
}

fn client(args: &Args, endpoint: &str) -> Result<Client, String> {
    let tls = args.dev.join("tls");
    ClientBuilder::new(endpoint)
        .ca_file(tls.join("ca.pem"))
        .and_then(|b| b.identity_files(tls.join("app.pem"), tls.join("app.key")))
        .map(|b| {
            b.http2(args.http2)
                .http1(!args.http2)
                .retries(0)
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(10))
        })
        .and_then(|b| b.build())
        .map_err(|e| format!("client: {e}"))
}

fn fields_of(s: Scenario) -> u64 {
    match s {
        Scenario::Tokenize100 => 100,
        // The name, ID, mobile, email and address of the complaint.
        Scenario::Deidentify => 5,
        _ => 1,
    }
}

/// The subject of request `seed`: one of 100,000, drawn uniformly (a
/// SplitMix64 hash of the sequence number), so no cache in the vault is
/// favoured or defeated by the order. (Taking `seed % 100_000` cycled
/// through the subjects in order, the worst case for a cache smaller than
/// the cycle.)
fn subject_of(seed: u64) -> String {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("bench-{}", (z ^ (z >> 31)) % 100_000)
}

fn tokenize_body(seed: u64, n: u64) -> Vec<u8> {
    let fields: Vec<_> = (0..n)
        .map(|k| serde_json::json!({"class":"phone","value":format!("139{:08}", (seed * n + k) % 100_000_000)}))
        .collect();
    serde_json::to_vec(
        &serde_json::json!({"subject":subject_of(seed),"purpose":"notification","fields":fields}),
    )
    .unwrap_or_default()
}

/// A 2 KB portal complaint with a name, a resident ID, a mobile, an email
/// and a labelled address, different numbers per request.
fn deidentify_body(seed: u64) -> Vec<u8> {
    let filler = "我于上周在市民服务中心办理社保卡补办业务，窗口工作人员态度很好，\
        但排队时间较长，希望能增加自助设备并优化预约流程。另外网上办事大厅的页面在手机上显示不全，\
        上传材料时多次失败，建议尽快修复。";
    let text = format!(
        "投诉内容：{filler}{filler}联系人：陈明，身份证号350102199003071234，\
         手机139{:08}，邮箱chen{}@example.cn，地址：福建省福州市鼓楼区五四路158号。{filler}{filler}{filler}",
        seed % 100_000_000,
        seed % 1000
    );
    serde_json::to_vec(&serde_json::json!({"subject":subject_of(seed),
        "purpose":"respond_to_request","mode":"tokenize","text":text}))
    .unwrap_or_default()
}

/// Tokens to detokenize, made once before the run.
async fn prepare_tokens(c: &Client) -> Result<Vec<String>, String> {
    let r = c
        .raw(
            Method::POST,
            "/v1/tokenize",
            Some(tokenize_body(7_777_777, 100)),
        )
        .await
        .map_err(|e| format!("prepare: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("prepare: {e}"))?;
    let tokens: Vec<String> = v["tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["token"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if tokens.is_empty() {
        return Err(format!("prepare: tokenize answered {}", r.status));
    }
    Ok(tokens)
}

/// What each connection asks once before a run: a path nobody serves, so
/// it costs the server no work beyond the request itself (a 404).
const WARM_UP_PATH: &str = "/v1/bench-warm-up";

async fn run(
    args: &Args,
    endpoint: &str,
    target: &str,
    tokens: Arc<Vec<String>>,
) -> Result<Report, String> {
    // Every connection is opened (TLS handshake and one small request)
    // before the clock starts: a run measures requests, not handshakes.
    // Opened inside the run, all of them at once put an open loop tens of
    // milliseconds behind its schedule from the first request on.
    let mut clients = Vec::with_capacity(args.connections);
    let mut opening = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let c = client(args, endpoint)?;
        clients.push(c.clone());
        opening.push(tokio::spawn(async move {
            c.raw(Method::GET, WARM_UP_PATH, None).await.map(|_| ())
        }));
    }
    for o in opening {
        o.await
            .map_err(|e| format!("connect: {e}"))?
            .map_err(|e| format!("connect: {e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    // Under --rate each connection sends every `gap`, the connections
    // staggered across one gap.
    let gap = args
        .rate
        .and_then(|r| Duration::try_from_secs_f64(args.connections as f64 / r).ok());
    for (w, c) in clients.into_iter().enumerate() {
        let (seq, tokens, scenario) = (seq.clone(), tokens.clone(), args.scenario);
        let slow_us = args.slow_ms.map(|ms| (ms * 1000.0) as u64);
        let conn = u32::try_from(w).unwrap_or(u32::MAX);
        let first = gap.map(|g| started + g.mul_f64(w as f64 / args.connections as f64));
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut slow = Vec::new();
            let mut errors = 0u64;
            let mut due = first;
            while Instant::now() < deadline {
                // Latency counts from when the request was due if the
                // previous answer made it late (the server's delay), else
                // from when it left (the timer's millisecond slack is ours).
                let mut t0 = None;
                if let (Some(d), Some(g)) = (due, gap) {
                    if d >= deadline {
                        break;
                    }
                    if Instant::now() >= d {
                        t0 = Some(d);
                    } else {
                        tokio::time::sleep_until(d.into()).await;
                    }
                    due = Some(d + g);
                }
                let i = seq.fetch_add(1, Ordering::Relaxed);
                let detok = match scenario {
                    Scenario::Detokenize => true,
                    Scenario::Mixed => i % 2 == 1,
                    _ => false,
                };
                let (path, body) = if detok {
                    let t = tokens
                        .get((i as usize) % tokens.len().max(1))
                        .cloned()
                        .unwrap_or_default();
                    let b = serde_json::json!({"purpose":"notification","tokens":[t]});
                    ("/v1/detokenize", serde_json::to_vec(&b).unwrap_or_default())
                } else if scenario == Scenario::Deidentify {
                    ("/v1/deidentify", deidentify_body(i))
                } else {
                    ("/v1/tokenize", tokenize_body(i, fields_of(scenario)))
                };
                let t0 = t0.unwrap_or_else(Instant::now);
                let ok = c
                    .raw(Method::POST, path, Some(body))
                    .await
                    .is_ok_and(|r| r.status == 200);
                let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
                lat.push(us);
                if slow_us.is_some_and(|t| u64::from(us) > t) {
                    slow.push(vault_suite::slow::Slow {
                        at_us: u64::try_from(t0.saturating_duration_since(started).as_micros())
                            .unwrap_or(u64::MAX),
                        conn,
                        latency_us: us,
                    });
                }
                if !ok {
                    errors += 1;
                }
            }
            (lat, slow, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut slow = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, s, e) = w.await.map_err(|e| format!("worker: {e}"))?;
        lat.extend(l);
        slow.extend(s);
        errors += e;
    }
    let slow = args.slow_ms.map(|threshold_ms| {
        let mut windows = vault_suite::slow::windows(&mut slow, SLOW_GAP_US);
        let count = windows.len();
        windows.sort_by_key(|w| std::cmp::Reverse(w.requests));
        windows.truncate(SLOW_WINDOWS_LISTED);
        SlowReport {
            threshold_ms,
            requests: slow.len() as u64,
            windows: count,
            largest: windows,
        }
    });
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat.get(i).map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let requests = lat.len() as u64;
    let fields = if args.scenario == Scenario::Mixed {
        1
    } else {
        fields_of(args.scenario)
    };
    Ok(Report {
        target: target.into(),
        scenario: args.scenario,
        connections: args.connections,
        http2: args.http2,
        rate: args.rate,
        seconds: secs,
        requests,
        errors,
        requests_per_s: requests as f64 / secs,
        fields_per_s: (requests - errors) as f64 * fields as f64 / secs,
        mean_ms: if lat.is_empty() {
            0.0
        } else {
            lat.iter().map(|us| f64::from(*us)).sum::<f64>() / lat.len() as f64 / 1000.0
        },
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: lat.last().map_or(0.0, |us| f64::from(*us) / 1000.0),
        slow,
    })
}

/// The ceiling: the vault's own TLS configuration (same certificates,
/// client-certificate verification, versions and ALPN) in front of a
/// handler that answers a fixed body.
async fn ceiling_server(args: &Args) -> Result<String, String> {
    let cfg = vault::config::Config::load(&args.dev.join("vault.toml"))
        .map_err(|e| format!("config: {e}"))?;
    let tls = vault::tls::server_config(&cfg).map_err(|e| format!("tls: {e}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("bind: {e}"))?;
    let body = Bytes::from_static(
        br#"{"tokens":[{"class":"phone","token":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#,
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let mut r = http::Response::new(Full::new(body));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(format!("https://127.0.0.1:{}", addr.port()))
}

/// The ceiling server's own process: this binary with `--serve-ceiling`.
/// It lives until its standard input closes, so it cannot outlive us.
async fn spawn_ceiling(args: &Args) -> Result<(tokio::process::Child, String), String> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe().map_err(|e| format!("ceiling: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--serve-ceiling")
        .arg("--dev")
        .arg(&args.dev)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("ceiling: {e}"))?;
    let out = child.stdout.take().ok_or("ceiling: no output")?;
    let mut line = String::new();
    tokio::io::BufReader::new(out)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("ceiling: {e}"))?;
    let url = line.trim().to_string();
    if !url.starts_with("https://") {
        return Err("ceiling: the server did not start".into());
    }
    Ok((child, url))
}

async fn serve_ceiling(args: &Args) -> std::process::ExitCode {
    use std::io::{Read, Write};
    match ceiling_server(args).await {
        Ok(url) => {
            println!("{url}");
            let _ = std::io::stdout().flush();
            // Serve until the parent closes our standard input.
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = [0u8; 64];
                while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            })
            .await;
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vault-bench: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// One run against the vault, with the metrics check when `--ops` is given.
async fn vault_run(args: &Args, tokens: Arc<Vec<String>>) -> Result<Report, String> {
    let before = match &args.ops {
        Some(ops) => Some(scrape(ops).await?),
        None => None,
    };
    let r = run(args, &args.endpoint, "vault", tokens).await?;
    print(&r, args.json);
    if let (Some(ops), Some(before)) = (&args.ops, before) {
        let m = scrape(ops).await?.since(&before);
        // The run's requests and each connection's opening request.
        let sent = r.requests + args.connections as u64;
        let counted = m.requests;
        // The vault's own view of the tail, from its histograms (bucket
        // bounds double from 50 us: 6.4 and 25.6 ms are two of them).
        let vault_p99 = m.request_seconds.quantile_at_most(0.99).map(|s| s * 1e3);
        let (slow, stalls) = (m.request_seconds.over(0.0064), m.write_seconds.over(0.0256));
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "metrics_requests_counted": counted,
                    "requests_sent": sent,
                    "vault_requests_timed": m.request_seconds.total(),
                    "vault_p99_ms_at_most": vault_p99,
                    "vault_requests_over_6_4_ms": slow,
                    "store_writes": m.write_seconds.total(),
                    "store_writes_over_25_6_ms": stalls,
                    "vault_request_mean_ms": m.request_mean().map(|s| s * 1e3),
                    "store_write_mean_ms": m.write_mean().map(|s| s * 1e3),
                    "requests_per_store_write": m.jobs_per_write(),
                })
            );
        } else {
            let verdict = if counted == sent { "agree" } else { "DISAGREE" };
            println!(
                "metrics: the vault counted {counted} requests, the tool sent {sent} ({} of them to open the connections): {verdict}",
                args.connections
            );
            let p99 = vault_p99.map_or("-".into(), |ms| format!("{ms:.2} ms"));
            println!(
                "metrics: in the vault's own histogram p99 <= {p99} (the tool saw {:.2} ms), {slow} requests over 6.4 ms; {} store writes, {stalls} over 25.6 ms",
                r.p99_ms,
                m.write_seconds.total()
            );
            let ms = |s: Option<f64>| s.map_or("-".into(), |s| format!("{:.3} ms", s * 1e3));
            println!(
                "metrics: mean time inside the vault {}, the tool's mean {:.3} ms; mean store write {}, {} requests per write",
                ms(m.request_mean()),
                r.mean_ms,
                ms(m.write_mean()),
                m.jobs_per_write().map_or("-".into(), |j| format!("{j:.1}"))
            );
        }
    }
    Ok(r)
}

/// The vault's counters and histograms, from the ops listener's
/// plain-HTTP `/metrics`.
async fn scrape(ops: &str) -> Result<vault_suite::scrape::Scrape, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(ops)
        .await
        .map_err(|e| format!("ops {ops}: {e}"))?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: vault\r\n\r\n")
        .await
        .map_err(|e| format!("ops {ops}: {e}"))?;
    let mut text = String::new();
    tcp.read_to_string(&mut text)
        .await
        .map_err(|e| format!("ops {ops}: {e}"))?;
    Ok(vault_suite::scrape::Scrape::parse(&text))
}

fn print(r: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        println!(
            "{:<8} {:?} conns={} h2={}{} {:.1}s: {} req ({} errors), {:.0} req/s, {:.0} fields/s, p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms",
            r.target, r.scenario, r.connections, r.http2,
            r.rate.map_or(String::new(), |x| format!(" rate={x:.0}/s")),
            r.seconds, r.requests, r.errors, r.requests_per_s, r.fields_per_s, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
        );
        if let Some(s) = &r.slow {
            println!(
                "slow: {} requests over {} ms, in {} windows (due within {} ms of each other)",
                s.requests,
                s.threshold_ms,
                s.windows,
                SLOW_GAP_US / 1000
            );
            for w in &s.largest {
                println!(
                    "  at {:.1} ms for {:.1} ms: {} requests from {} of {} connections, max {:.2} ms",
                    w.start_ms, w.span_ms, w.requests, w.connections, r.connections, w.max_latency_ms
                );
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.serve_ceiling {
        return serve_ceiling(&args).await;
    }
    if let Some(r) = args.rate {
        // The gap between a connection's requests must be a real duration.
        let gap = args.connections.max(1) as f64 / r;
        if !(r.is_finite() && r > 0.0 && Duration::try_from_secs_f64(gap).is_ok()) {
            eprintln!("vault-bench: --rate must be a positive number of requests per second");
            return std::process::ExitCode::from(2);
        }
    }
    if args
        .slow_ms
        .is_some_and(|ms| !(ms.is_finite() && ms >= 0.0))
    {
        eprintln!("vault-bench: --slow-ms must be a number of milliseconds, 0 or more");
        return std::process::ExitCode::from(2);
    }
    if args.rate.is_some() && args.ceiling {
        eprintln!("vault-bench: --rate measures latency at a given load; a ratio of two rate-limited runs means nothing, so it does not go with --ceiling");
        return std::process::ExitCode::from(2);
    }
    let result = async {
        let tokens = if matches!(args.scenario, Scenario::Detokenize | Scenario::Mixed) {
            prepare_tokens(&client(&args, &args.endpoint)?).await?
        } else {
            Vec::new()
        };
        let tokens = Arc::new(tokens);
        // Kept for the whole run; dropping it ends the child.
        let mut _child = None;
        let ceiling_url = match (args.ceiling, args.ceiling_in_process) {
            (false, _) => None,
            (true, true) => Some(ceiling_server(&args).await?),
            (true, false) => {
                let (child, url) = spawn_ceiling(&args).await?;
                _child = Some(child);
                Some(url)
            }
        };
        let mut ratios = Vec::new();
        for _ in 0..args.rounds.max(1) {
            let ceiling = match &ceiling_url {
                Some(url) => {
                    let r = run(&args, url, "ceiling", tokens.clone()).await?;
                    print(&r, args.json);
                    Some(r)
                }
                None => None,
            };
            let r = vault_run(&args, tokens.clone()).await?;
            if let Some(c) = ceiling {
                let ratio = r.requests_per_s / c.requests_per_s.max(1e-9);
                ratios.push(ratio);
                if args.json {
                    println!("{}", serde_json::json!({"ratio_of_ceiling": ratio}));
                } else {
                    println!("vault/ceiling = {:.1}%", ratio * 100.0);
                }
            }
        }
        if ratios.len() > 1 {
            ratios.sort_by(f64::total_cmp);
            let median = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"median_ratio_of_ceiling": median, "rounds": ratios.len()})
                );
            } else {
                println!(
                    "median vault/ceiling over {} rounds = {:.1}% (lowest {:.1}%, highest {:.1}%)",
                    ratios.len(),
                    median * 100.0,
                    ratios.first().copied().unwrap_or(0.0) * 100.0,
                    ratios.last().copied().unwrap_or(0.0) * 100.0
                );
            }
        }
        Ok::<_, String>(())
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-bench: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
