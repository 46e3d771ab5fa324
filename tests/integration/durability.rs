//! A 200 means durable: a child `vault dev` is killed with SIGKILL in the
//! middle of a tokenize load, restarted, and every acknowledged token still
//! detokenizes. Its logs are checked for plaintext on the way.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;
use vault_sdk::wire::Status;
use vault_sdk::Client;

pub(crate) struct ChildVault {
    pub(crate) child: Child,
    pub(crate) api: String,
    /// `host:port` of the ops listener (plain HTTP).
    pub(crate) ops: String,
    stderr: Arc<Mutex<String>>,
    /// The thread copying stderr; done once the child has exited.
    copier: Option<std::thread::JoinHandle<()>>,
}

impl ChildVault {
    /// Its stderr so far, once it holds `needle` or after 5 s (the thread
    /// copying it may still be reading the last lines).
    pub(crate) fn logs_once(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.stderr.lock().unwrap().clone();
            if logs.contains(needle) || Instant::now() > deadline {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it wrote to stderr: stops it if it still runs and waits
    /// for the last line to be copied.
    pub(crate) fn whole_logs(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(copier) = self.copier.take() {
            copier.join().unwrap();
        }
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for ChildVault {
    /// A test that fails with its vault running does not leave it behind
    /// (nor, on a mounted file system, the mount busy).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child `vault dev` on `dir`, ready (also used by `abuse.rs`).
pub(crate) fn spawn(dir: &std::path::Path) -> ChildVault {
    spawn_with(dir, &[])
}

pub(crate) fn spawn_with(dir: &std::path::Path, env: &[(&str, &str)]) -> ChildVault {
    let mut child = Command::new(vault_bin())
        .args(["dev", "--data"])
        .arg(dir)
        .args(["--api-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.contains("ready"), "{ready}");
    let api = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("api="))
        .unwrap()
        .to_string();
    let ops = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ops=http://"))
        .unwrap()
        .to_string();
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = stderr.clone();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let copier = std::thread::spawn(move || {
        let mut line = String::new();
        while err.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    ChildVault {
        child,
        api,
        ops,
        stderr,
        copier: Some(copier),
    }
}

pub(crate) fn client(dir: &std::path::Path, api: &str) -> Client {
    client_as(dir, api, "app")
}

pub(crate) fn client_as(dir: &std::path::Path, api: &str, who: &str) -> Client {
    builder_at(&dir.join("tls"), api, who).build().unwrap()
}

/// A distinct valid mobile number per `i`.
fn phone(i: u64) -> String {
    format!("139{:08}", i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn(dir.path());
    let c = client(dir.path(), &first.api);
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut workers = Vec::new();
    for w in 0..16u64 {
        let c = c.clone();
        let acked = acked.clone();
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < stop_at {
                let fields = vec![field("phone", &phone(i))];
                if let Ok(r) = c
                    .tokenize(&tok_req(&format!("acct-{i}"), "notification", fields))
                    .await
                {
                    acked.lock().unwrap().push((i, r.tokens[0].token.clone()));
                }
                i += 16;
            }
        }));
    }
    // Kill in the middle of the load, while requests are in flight.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "only {} writes acknowledged before the kill",
        acked.len()
    );

    let mut second = spawn(dir.path());
    let c = client(dir.path(), &second.api);
    for chunk in acked.chunks(500) {
        let tokens: Vec<&str> = chunk.iter().map(|(_, t)| t.as_str()).collect();
        let r = c
            .detokenize(&detok_req("notification", &tokens))
            .await
            .unwrap();
        for ((i, _), v) in chunk.iter().zip(r.values) {
            assert_eq!(v.status, Status::Ok, "acknowledged write {i} lost");
            assert_eq!(v.value.as_deref().unwrap(), format!("+86{}", phone(*i)));
        }
    }
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let (code, out, _) = audit_verify(dir.path());
    assert_eq!(code, 0, "{out}");
    // The second run logged the head it found at start as an anchor; the
    // chain passes through it, and not through a made-up one.
    let logs2 = second.stderr.lock().unwrap().clone();
    let line = logs2
        .lines()
        .find(|l| l.contains("Audit anchor"))
        .unwrap_or_else(|| panic!("no anchor logged: {logs2}"));
    // Plain text in a log file, as an operator greps it: no terminal
    // colours around the field names.
    assert!(
        !logs2.contains('\u{1b}'),
        "colour codes in a log file: {line}"
    );
    assert!(line.contains(" seq=") && line.contains(" hash="), "{line}");
    // It says it is the head found at start, not one the vault wrote.
    assert!(line.contains("Audit anchor at start"), "{line}");
    let after = |key: &str| {
        let i = line.find(key).unwrap() + key.len();
        line[i..]
            .trim_start_matches(['=', '"', ':'])
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect::<String>()
    };
    let (seq, hash) = (after("seq"), after("hash"));
    assert_eq!(hash.len(), 64, "{line}");
    let anchored = |anchor: String| {
        run_vault(&[
            "audit".into(),
            "verify".into(),
            "--data".into(),
            dir.path().as_os_str().to_owned(),
            "--anchor".into(),
            anchor.into(),
        ])
    };
    let (code, out, _) = anchored(format!("{seq}:{hash}"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 anchors on it"), "{out}");
    let other = if hash.starts_with('0') { "1" } else { "0" };
    let (code, out, _) = anchored(format!("{seq}:{other}{}", &hash[1..]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("differs from an anchor"), "{out}");
    let past: u64 = seq.parse::<u64>().unwrap() + 10;
    let (code, out, _) = anchored(format!("{past}:{hash}"));
    assert_eq!(code, 1, "{out}");
    let (code, _, err) = anchored("nonsense".into());
    assert_eq!(code, 64, "{err}");
    // A clean stop logs the head it leaves, moved since the last anchor or
    // not, and a next start logs the same head as it finds it.
    let mut third = spawn(dir.path());
    let term = std::process::Command::new("kill")
        .args(["-TERM", &third.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(third.child.wait().unwrap().success());
    let logs3 = third.logs_once("Audit anchor at stop");
    let at_start = logs3.lines().find(|l| l.contains("Audit anchor at start"));
    let at_stop = logs3.lines().find(|l| l.contains("Audit anchor at stop"));
    let hash_of = |l: &str| {
        l.split("hash=")
            .nth(1)
            .map(|h| h.trim_matches('"').to_string())
    };
    assert_eq!(
        at_start.and_then(hash_of),
        at_stop.and_then(hash_of),
        "{logs3}"
    );
    assert!(at_stop.is_some(), "{logs3}");
    // Debug logs of both runs hold no submitted value: every line of
    // them, the last ones too.
    let logs = format!("{}{}", first.whole_logs(), second.whole_logs());
    for (i, _) in acked.iter().take(200) {
        assert!(!logs.contains(&phone(*i)), "log leaks a phone number");
    }
}

/// A rewrap killed with SIGKILL half-way resumes on restart from its last
/// durable step and finishes with every value under the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_resumes_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    rewrap_killed_midway(dir.path(), || {}).await;
}

/// A rotation, then a rewrap killed half-way and `after_kill` (the
/// power-loss test cuts the power there): after a restart the rotation
/// holds, the rewrap resumes from its cursor and finishes with every value
/// under the new version, and every value opens. Gives the restarted
/// vault and the tokens.
pub(crate) async fn rewrap_killed_midway(
    dir: &std::path::Path,
    after_kill: impl FnOnce(),
) -> (ChildVault, Vec<String>) {
    // Small, slow steps so the kill lands in the middle of the job.
    let env = [
        ("VAULT__KEYS__REWRAP_BATCH", "20"),
        ("VAULT__KEYS__REWRAP_PAUSE_MS", "40"),
    ];
    let mut first = spawn_with(dir, &env);
    let c = client(dir, &first.api);
    let mut tokens = Vec::new();
    for r in 0..4u64 {
        let fields = (0..100)
            .map(|k| field("phone", &phone(r * 100 + k)))
            .collect();
        let out = c
            .tokenize(&tok_req(&format!("acct-{r}"), "notification", fields))
            .await
            .unwrap();
        tokens.extend(out.tokens.into_iter().map(|t| t.token));
    }
    let officer = client_as(dir, &first.api, "officer");
    assert_eq!(officer.rotate_keys().await.unwrap().active_version, Some(2));
    officer.start_rewrap().await.unwrap();
    // Under way: its first values done (paused between batches, so it
    // is far from done when they are).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mid = loop {
        let mid = officer.rewrap_status().await.unwrap();
        if mid.rewrapped > 0 || Instant::now() > deadline {
            break mid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(mid.state, "running", "{mid:?}");
    assert!(mid.rewrapped > 0 && mid.rewrapped < 400, "{mid:?}");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    after_kill();

    let second = spawn_with(dir, &env);
    let officer = client_as(dir, &second.api, "officer");
    let keys = officer.keys_status().await.unwrap();
    assert_eq!(
        keys.active_version,
        Some(2),
        "the rotation was lost: {keys:?}"
    );
    let mut st = officer.rewrap_status().await.unwrap();
    // The steps done before the kill are kept (each with its cursor), not
    // done again from the start.
    assert!(
        st.rewrapped >= mid.rewrapped,
        "steps acknowledged before the kill were lost: {mid:?} then {st:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while st.state != "done" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = officer.rewrap_status().await.unwrap();
    }
    assert_eq!(st.state, "done", "{st:?}");
    assert_eq!(
        st.scanned, 400,
        "resumed from the cursor, not from the start: {st:?}"
    );
    let keys = officer.keys_status().await.unwrap();
    assert_eq!(keys.versions[0].values, 0, "{keys:?}");
    assert_eq!(keys.versions[1].values, 400, "{keys:?}");
    let c = client(dir, &second.api);
    let refs: Vec<&str> = tokens.iter().map(|t| t.as_str()).collect();
    let out = c
        .detokenize(&detok_req("notification", &refs))
        .await
        .unwrap();
    assert!(out.values.iter().all(|v| v.status == Status::Ok));
    (second, tokens)
}

/// A shutdown returns once the database is let go: work spawned on its
/// own that still holds the vault (a shred log append the sweeper left
/// running) or only the store (an erasure's purge whose request stopped
/// waiting) is waited for, so a start on the same directory right after
/// finds it free. A scrape's keep-alive connection does not hold it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_right_after_a_shutdown_finds_the_database_free() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let running = vault::server::start(&cfg).await.unwrap();
    let held = running.vault.clone();
    let store = running.vault.store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(store);
    });
    running.shutdown().await;
    let again = vault::server::start(&cfg).await.unwrap();
    // A keep-alive scrape left open: closed at stop, not at its timeout.
    let mut scrape = tokio::net::TcpStream::connect(again.ops_addr)
        .await
        .unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 4096];
    let n = scrape.read(&mut got).await.unwrap();
    assert!(
        got[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &got[..n.min(40)]
    );
    let stopping = Instant::now();
    again.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "the shutdown waited {:?} for an idle scrape",
        stopping.elapsed()
    );
    vault::server::start(&cfg).await.unwrap().shutdown().await;
}
