//! The fluent harness: `TestVault::start()` gives a running vault with its
//! own directory and CA; `client("app")` a client with that caller's
//! certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vault::config::Config;
use vault::server::{self, Running};
use vault_sdk::wire::{DetokenizeRequest, Field, Reveal, TokenizeRequest};
use vault_sdk::{Client, ClientBuilder};

pub struct TestVault {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub api: SocketAddr,
    pub ops: SocketAddr,
}

/// The configuration `vault dev` wrote into `dir`, on ephemeral ports.
pub fn config(dir: &Path) -> Config {
    let path = vault::dev::prepare(dir).unwrap();
    let mut cfg = Config::load(&path).unwrap();
    cfg.server.api_addr = "127.0.0.1:0".into();
    cfg.server.ops_addr = "127.0.0.1:0".into();
    cfg
}

impl TestVault {
    pub async fn start() -> TestVault {
        Self::start_with(|_| {}).await
    }

    /// Starts after `edit` has changed the configuration.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestVault {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        edit(&mut cfg);
        let running = start_retrying(&cfg).await;
        TestVault {
            api: running.api_addr,
            ops: running.ops_addr,
            running: Some(running),
            dir,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn store(&self) -> Arc<dyn vault::store::Store> {
        self.running().vault.store.clone()
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Stops and starts again on the same directory (new ports).
    pub async fn restart(&mut self) {
        self.stop().await;
        let cfg = config(self.dir.path());
        let running = start_retrying(&cfg).await;
        self.api = running.api_addr;
        self.ops = running.ops_addr;
        self.running = Some(running);
    }

    pub fn tls(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    pub fn builder(&self, who: &str) -> ClientBuilder {
        builder_at(
            &self.tls(),
            &format!("https://127.0.0.1:{}", self.api.port()),
            who,
        )
    }

    /// Every audit event (up to 1,000), as an officer reads them.
    pub async fn audit_events(&self) -> Vec<vault_sdk::wire::AuditEvent> {
        self.client("officer")
            .audit(None, None, Some(1000))
            .await
            .unwrap()
            .events
    }

    pub fn client(&self, who: &str) -> Client {
        self.builder(who).build().unwrap()
    }

    /// A plain HTTP/1.1 GET on the ops listener: (status, body).
    pub async fn ops_get(&self, path: &str) -> (u16, String) {
        ops_get_at(&self.ops.to_string(), path).await
    }

    /// Waits (up to [`EVENTUALLY`]) until `/metrics` holds `line`, which
    /// background work (the sweeper, the shred log's recorder, a watcher)
    /// may set a moment after what the test saw it do.
    pub async fn metrics_reach(&self, line: &str) {
        let deadline = std::time::Instant::now() + EVENTUALLY;
        loop {
            let (_, metrics) = self.ops_get("/metrics").await;
            if metrics.contains(line) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {line:?} in {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A plain HTTP/1.1 GET on an ops listener at `addr`: (status, body).
pub async fn ops_get_at(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// How long a test waits for background work (a sweep, an append, a
/// watcher's look) under a loaded CI machine before calling it lost.
pub const EVENTUALLY: Duration = Duration::from_secs(15);

/// Waits (up to [`EVENTUALLY`]) until `check` holds; `what` names it when
/// it never does.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + EVENTUALLY;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A previous server on the same directory may still be letting go of the
/// database lock for a moment after shutdown.
async fn start_retrying(cfg: &Config) -> Running {
    let mut last = None;
    for _ in 0..100 {
        match server::start(cfg).await {
            Ok(r) => return r,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("vault did not start: {:?}", last);
}

pub fn field(class: &str, value: &str) -> Field {
    Field {
        class: class.into(),
        value: value.into(),
    }
}

pub fn tok_req(subject: &str, purpose: &str, fields: Vec<Field>) -> TokenizeRequest {
    TokenizeRequest {
        subject: subject.into(),
        purpose: purpose.into(),
        retention: None,
        fields,
    }
}

pub fn detok_req(purpose: &str, tokens: &[&str]) -> DetokenizeRequest {
    DetokenizeRequest {
        purpose: Some(purpose.into()),
        tokens: tokens.iter().map(|t| t.to_string()).collect(),
        reveal: Reveal::Full,
        legal_basis: None,
    }
}

/// A legal-exception detokenize by `app` of `tokens`, under an approval
/// `officer` grants for `subject` and the case `reference` (one hour).
pub async fn approved_detok_req(
    officer: &Client,
    purpose: &str,
    subject: &str,
    reference: &str,
    tokens: &[&str],
) -> DetokenizeRequest {
    let approval = officer
        .approve(&vault_sdk::wire::ApprovalRequest {
            requester: "app".into(),
            purpose: purpose.into(),
            subjects: vec![subject.into()],
            reference: reference.into(),
            valid_for: "PT1H".into(),
        })
        .await
        .unwrap();
    let mut req = detok_req(purpose, tokens);
    req.legal_basis = Some(vault_sdk::wire::LegalBasis {
        reference: reference.into(),
        approval: approval.id,
    });
    req
}

/// Tokenizes one value and returns its token.
pub async fn tokenize_one(
    c: &Client,
    subject: &str,
    purpose: &str,
    class: &str,
    value: &str,
) -> String {
    let r = c
        .tokenize(&tok_req(subject, purpose, vec![field(class, value)]))
        .await
        .unwrap();
    r.tokens[0].token.clone()
}

/// Sends raw JSON bytes; returns (status, parsed body).
/// The `Values` key of an opaque token (as tokenize returns it) and a
/// subject.
pub fn value_key(token: &str, subject: &str) -> Vec<u8> {
    vault::schema::value_key(&vault::crypto::decode_token(token).unwrap(), subject)
}

/// Whether `Values` holds a record (not a tombstone, nor nothing) at `key`.
pub fn holds_record(store: &dyn vault::store::Store, key: &[u8]) -> bool {
    store
        .get(vault::store::Space::Values, key)
        .unwrap()
        .is_some_and(|b| vault::schema::Record::decode(&b).is_some())
}

/// A reidentify request of `text` for `purpose`, in full.
pub fn reid(purpose: &str, text: &str) -> vault_sdk::wire::ReidentifyRequest {
    vault_sdk::wire::ReidentifyRequest {
        purpose: Some(purpose.into()),
        text: text.into(),
        reveal: Reveal::Full,
        legal_basis: None,
    }
}

pub async fn post_raw(c: &Client, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let r = c.raw(http::Method::POST, path, Some(body)).await.unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

/// The error code of a JSON error body.
pub fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Runs the `vault` binary: (exit code, stdout, stderr).
pub fn run_vault<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = std::process::Command::new(vault_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A tokenize through the SDK with `dir/app.pem` and `dir/app.key` as the
/// client identity fails in the transport, never with an HTTP answer.
pub async fn assert_identity_refused(v: &TestVault, dir: &Path) {
    let c = ClientBuilder::new(format!("https://127.0.0.1:{}", v.api.port()))
        .ca_file(v.tls().join("ca.pem"))
        .unwrap()
        .identity_files(dir.join("app.pem"), dir.join("app.key"))
        .unwrap()
        .retries(0)
        .build()
        .unwrap();
    assert_transport_refused(&c).await;
}

/// A tokenize through `c` fails in the transport, never with an HTTP answer.
pub async fn assert_transport_refused(c: &Client) {
    let err = c
        .tokenize(&tok_req(
            "s1",
            "notification",
            vec![field("phone", "13800138000")],
        ))
        .await
        .unwrap_err();
    assert!(
        err.status().is_none(),
        "expected a transport failure, got {err:?}"
    );
}

/// `vault audit verify --data DIR`: (exit code, stdout, stderr).
pub fn audit_verify(dir: &Path) -> (i32, String, String) {
    run_vault(&[
        std::ffi::OsStr::new("audit"),
        "verify".as_ref(),
        "--data".as_ref(),
        dir.as_os_str(),
    ])
}

/// The `vault` binary cargo built beside this test binary.
pub fn vault_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("vault");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (`cargo build --workspace`) first",
        bin.display()
    );
    bin
}

/// Starts a rewrap as `officer` and waits (up to 4 s) until it is done.
pub async fn rewrap_until_done(officer: &Client) {
    officer.start_rewrap().await.unwrap();
    for _ in 0..200 {
        if officer.rewrap_status().await.unwrap().state == "done" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the rewrap did not finish");
}

/// A client of `endpoint` as `who`, with the certificates of the `vault
/// dev` TLS directory `tls`, no retries.
pub fn builder_at(tls: &Path, endpoint: &str, who: &str) -> ClientBuilder {
    ClientBuilder::new(endpoint)
        .ca_file(tls.join("ca.pem"))
        .unwrap()
        .identity_files(
            tls.join(format!("{who}.pem")),
            tls.join(format!("{who}.key")),
        )
        .unwrap()
        .retries(0)
}

/// An in-memory store that runs a hook once, on the next `get` of a chosen
/// space after it is armed: how a test makes another writer's commit land
/// between a reader's look and its own write.
pub struct Hooked {
    pub inner: vault::store::MemoryStore,
    hook: HookSlot,
    pub fired: std::sync::atomic::AtomicBool,
    /// While set, group commits wait (the committer thread sleeps): the
    /// requests behind them hold their places. `held` says one has waited.
    pub hold_writes: std::sync::atomic::AtomicBool,
    pub held: std::sync::atomic::AtomicBool,
    /// While set, writes fail as on a full disk.
    pub fail_writes: std::sync::atomic::AtomicBool,
    /// While set, backward scans (walks of the audit log from its end)
    /// wait; `scans_held` counts those waiting.
    pub hold_scans: std::sync::atomic::AtomicBool,
    pub scans_held: std::sync::atomic::AtomicUsize,
    /// While set, purges fail (as a compaction on a full disk), each after
    /// a moment; `purges` counts those tried.
    pub fail_purges: std::sync::atomic::AtomicBool,
    pub purges: std::sync::atomic::AtomicUsize,
}

type HookSlot = std::sync::Mutex<
    Option<(
        vault::store::Space,
        Box<dyn FnOnce(&vault::store::MemoryStore) + Send>,
    )>,
>;

/// Writes (or backward scans) held until this is dropped, however the test
/// ends, so a failing assertion cannot leave the vault hanging.
pub struct Holding(Arc<Hooked>, fn(&Hooked) -> &std::sync::atomic::AtomicBool);

impl Drop for Holding {
    fn drop(&mut self) {
        (self.1)(&self.0).store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Hooked {
    /// Holds group commits until the guard is dropped (or `hold_writes`
    /// is cleared).
    pub fn holding_writes(self: &Arc<Self>) -> Holding {
        self.hold_writes
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Holding(self.clone(), |h| &h.hold_writes)
    }

    /// Holds backward scans until the guard is dropped (or `hold_scans` is
    /// cleared).
    pub fn holding_scans(self: &Arc<Self>) -> Holding {
        self.hold_scans
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Holding(self.clone(), |h| &h.hold_scans)
    }

    /// Runs `hook` on the inner store at the next `get` of `space`.
    pub fn arm(
        &self,
        space: vault::store::Space,
        hook: impl FnOnce(&vault::store::MemoryStore) + Send + 'static,
    ) {
        *self.hook.lock().unwrap() = Some((space, Box::new(hook)));
    }
}

impl vault::store::Store for Hooked {
    fn get(
        &self,
        s: vault::store::Space,
        k: &[u8],
    ) -> Result<Option<Vec<u8>>, vault::store::StoreError> {
        let due = {
            let mut slot = self.hook.lock().unwrap();
            match slot.as_ref() {
                Some((space, _)) if *space == s => slot.take(),
                _ => None,
            }
        };
        if let Some((_, hook)) = due {
            hook(&self.inner);
            self.fired.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.get(s, k)
    }
    fn scan(
        &self,
        s: vault::store::Space,
        f: &[u8],
        t: Option<&[u8]>,
        l: usize,
    ) -> Result<vault::store::Rows, vault::store::StoreError> {
        self.inner.scan(s, f, t, l)
    }
    fn scan_rev(
        &self,
        s: vault::store::Space,
        f: &[u8],
        t: Option<&[u8]>,
        l: usize,
    ) -> Result<vault::store::Rows, vault::store::StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.hold_scans.load(SeqCst) {
            self.scans_held.fetch_add(1, SeqCst);
            while self.hold_scans.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.scans_held.fetch_sub(1, SeqCst);
        }
        self.inner.scan_rev(s, f, t, l)
    }
    fn write(&self, b: vault::store::Batch) -> Result<(), vault::store::StoreError> {
        self.inner.write(b)
    }
    fn purge(&self, s: vault::store::Space) -> Result<(), vault::store::StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.purges.fetch_add(1, SeqCst);
        if self.fail_purges.load(SeqCst) {
            // Long enough for a burst of erasures to queue behind it.
            std::thread::sleep(Duration::from_millis(1500));
            return Err(vault::store::StoreError::Engine("no space left".into()));
        }
        self.inner.purge(s)
    }
    // The committer's own checks do not fire the hook.
    fn write_group(
        &self,
        group: Vec<vault::store::Batch>,
        finish: &mut dyn FnMut(&[bool]) -> vault::store::Batch,
    ) -> Result<Vec<bool>, vault::store::StoreError> {
        while self.hold_writes.load(std::sync::atomic::Ordering::SeqCst) {
            self.held.store(true, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(vault::store::StoreError::Engine(
                "IO error: No space left on device".into(),
            ));
        }
        self.inner.write_group(group, finish)
    }
}

/// A vault over a [`Hooked`] in-memory store, after `edit`.
pub async fn start_hooked(edit: impl FnOnce(&mut Config)) -> (TestVault, Arc<Hooked>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    edit(&mut cfg);
    let store = Arc::new(Hooked {
        inner: vault::store::MemoryStore::new(),
        hook: std::sync::Mutex::new(None),
        fired: std::sync::atomic::AtomicBool::new(false),
        hold_writes: std::sync::atomic::AtomicBool::new(false),
        held: std::sync::atomic::AtomicBool::new(false),
        fail_writes: std::sync::atomic::AtomicBool::new(false),
        hold_scans: std::sync::atomic::AtomicBool::new(false),
        scans_held: std::sync::atomic::AtomicUsize::new(0),
        fail_purges: std::sync::atomic::AtomicBool::new(false),
        purges: std::sync::atomic::AtomicUsize::new(0),
    });
    let keys = server::open_keys(&cfg, store.as_ref()).unwrap();
    let running = server::start_with(&cfg, keys, store.clone()).await.unwrap();
    let v = TestVault {
        dir,
        api: running.api_addr,
        ops: running.ops_addr,
        running: Some(running),
    };
    (v, store)
}
