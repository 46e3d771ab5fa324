//! Assembles a running vault from a configuration: keys, store, committer,
//! policy, metrics, and the two listeners. Invariant: [`start`] returns only
//! once both listeners accept, and [`Running::shutdown`] stops accepting,
//! drains requests in flight, waits for the last durable write, and only
//! then logs the final audit anchor.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::commit::Committer;
use crate::config::Config;
use crate::keys::{self, KeyState, Keyring};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::store::{RocksStore, Store};

/// Request limits, from `[server]`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_items: usize,
    pub request_timeout: Duration,
    /// Never longer than `request_timeout`.
    pub body_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
}

/// Everything a request handler can reach.
#[derive(Debug)]
pub struct Vault {
    pub policy: Policy,
    pub keys: KeyState,
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Shares given so far towards an unseal (and officers asking to
    /// resume).
    pub unseal: std::sync::Mutex<crate::shares::Collector>,
    /// Where the root key comes from: what an unseal reads again.
    pub root: crate::keys::RootSource,
    /// Seals whose mark is not written yet (see `api::admin::seal`).
    pub seal_writes: std::sync::atomic::AtomicUsize,
    /// Serializes officer key operations (rotate, min version, unseal).
    pub key_ops: tokio::sync::Mutex<()>,
    /// The background re-encryption job.
    pub rewrap: crate::rewrap::Rewrap,
    /// What the sweeper does with expired values.
    pub config_on_expiry: crate::config::OnExpiry,
    /// The token style of each class.
    pub tokens: crate::tokens::TokenStyles,
    /// The named document schemas of `POST /v1/records`.
    pub schemas: std::collections::BTreeMap<String, crate::records::Mapping>,
    /// Places for walks of the audit log (queries, access logs, exposure
    /// reports), which run on the blocking pool: see `http::off_runtime`.
    /// Officers have places of their own, so apps walking the log cannot
    /// keep an officer's incident queries out.
    pub walks: Arc<tokio::sync::Semaphore>,
    pub officer_walks: Arc<tokio::sync::Semaphore>,
    /// Walks under way per caller: one caller holds at most half the
    /// places.
    pub walkers: std::sync::Mutex<std::collections::HashMap<Arc<str>, usize>>,
    /// Erasures' purges of destroyed keys, coalesced.
    pub purges: crate::api::lifecycle::Purges,
    /// The record of destroyed subject keys kept outside the database
    /// (`server.shred-log`), when one is set.
    pub shreds: Option<crate::shreds::ShredLog>,
}

/// Walks of the audit log at once, for apps and for officers each: one per
/// core, and as many again waiting on the disk.
pub const AUDIT_WALKS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("commit pipeline: {0}")]
    Commit(#[from] crate::commit::CommitError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Shreds(#[from] crate::shreds::ShredError),
    #[error("cannot listen on {addr}: {kind}")]
    Bind {
        addr: String,
        kind: std::io::ErrorKind,
    },
}

/// A started vault.
#[derive(Debug)]
pub struct Running {
    pub api_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    /// The officers' own listener, when `server.officer-addr` is set.
    pub officer_addr: Option<SocketAddr>,
    pub vault: Arc<Vault>,
    stop: watch::Sender<bool>,
    /// The listeners and every background task that commits.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The audit anchor logger, stopped on its own once `tasks` have all
    /// ended: its anchor "at stop" must come after the last event.
    anchor_stop: watch::Sender<bool>,
    anchor_task: tokio::task::JoinHandle<()>,
    /// How many hold the store once the vault is built, before anything
    /// runs: the vault and what it keeps (the committer). More at stop is
    /// work still under way.
    store_holders: usize,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (up to the request
    /// timeout) and background tasks end, waits for work spawned on its own
    /// to let go of the database and the shred log (bounded), logs the final
    /// audit anchor and returns.
    pub async fn shutdown(self) {
        let Running {
            vault,
            stop,
            tasks,
            anchor_stop,
            anchor_task,
            store_holders,
            ..
        } = self;
        let _ = stop.send(true);
        for t in tasks {
            let _ = t.await;
        }
        // Work spawned on its own (a shred log append the sweeper left
        // running, an erasure's purge or a seal being recorded whose request
        // stopped waiting) still holds the vault, the database or the log's
        // lock: a start on the same directory right after this returns must
        // find them free, and the events such work commits must come before
        // the anchor at stop. Bounded: a hung disk does not hold the
        // shutdown forever.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        // The anchor logger holds the vault too, until it is stopped.
        let waited = let_go(&vault, store_holders, 2, deadline).await;
        // Only now: the API has drained and nothing else commits, so the
        // head this anchor logs covers every event of the run, those
        // written during the drain included. Logged with the two stopped
        // together, it could come before them, leaving them unanchored.
        let _ = anchor_stop.send(true);
        let _ = anchor_task.await;
        if !(waited && let_go(&vault, store_holders, 1, deadline).await) {
            tracing::warn!(
                "stopping: background work still holds the database or the shred log after {} s; they close when that work ends",
                SHUTDOWN_WAIT.as_secs()
            );
        }
    }

    /// Resolves when a shutdown has been asked for from elsewhere.
    pub fn stop_handle(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Waits until at most `holders` hold `vault`, no more than `store_holders`
/// its store (the vault and what it keeps), and none but the vault its
/// shred log; false at `deadline`.
async fn let_go(
    vault: &Arc<Vault>,
    store_holders: usize,
    holders: usize,
    deadline: tokio::time::Instant,
) -> bool {
    loop {
        let shreds = vault.shreds.as_ref().map_or(1, |l| l.holders());
        if Arc::strong_count(vault) <= holders
            && Arc::strong_count(&vault.store) <= store_holders
            && shreds <= 1
        {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How often the audit chain's head is logged as an anchor (when it moved):
/// the events after the last anchor are those someone able to write the
/// database could cut after a crash without `audit verify --anchor`
/// seeing, so the window is short. At most one log line per interval.
const ANCHOR_INTERVAL: Duration = Duration::from_secs(5);

/// How long a shutdown waits for work spawned on its own to let go of the
/// vault (see [`Running::shutdown`]).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Opens the store and keys of `cfg` and starts both listeners. With
/// `unseal-with-shares` the vault starts sealed and waits for officers.
pub async fn start(cfg: &Config) -> Result<Running, StartError> {
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(&cfg.data_dir())?);
    let keys = open_keys(cfg, store.as_ref())?;
    start_with(cfg, keys, store).await
}

/// The key state a configuration starts with: unsealed from a key file,
/// variable or command; sealed when officers must bring shares.
pub fn open_keys(cfg: &Config, store: &dyn Store) -> Result<KeyState, keys::KeyError> {
    if cfg.keys.unseal_with_shares {
        if !Keyring::exists(store)? {
            // Data without keys is not a vault to initialize.
            Keyring::refuse_over_data(store)?;
            return Err(keys::KeyError::NotInitialized);
        }
        return Ok(KeyState::default());
    }
    if keys::sealed_by_officer(store)? {
        // A root key handed over in the environment is read once: taken
        // out now and wiped, so it is in memory neither way.
        if matches!(root_source(cfg), keys::RootSource::Env) {
            drop(load_master(cfg));
        }
        tracing::warn!(
            "An officer sealed this vault: it starts sealed, until two officers unseal it with `vault unseal --resume` (root key from a file or a command) or `vault operator clear-seal` clears the seal while it is stopped"
        );
        return Ok(KeyState::default());
    }
    let root = load_master(cfg)?;
    Ok(KeyState::unsealed(Keyring::open(&root, store)?))
}

/// Where `cfg` takes its root key from.
pub fn root_source(cfg: &Config) -> keys::RootSource {
    let k = &cfg.keys;
    if k.unseal_with_shares {
        return keys::RootSource::Shares;
    }
    match (&k.master_key_file, &k.master_key_env, &k.master_key_command) {
        (Some(f), _, _) => keys::RootSource::File(cfg.resolve(f)),
        (None, Some(_), _) => keys::RootSource::Env,
        (None, None, Some(cmd)) => keys::RootSource::Command(cmd.clone()),
        (None, None, None) => keys::RootSource::Env,
    }
}

/// Starts over a given key state and store: how tests put a failing or
/// inspectable engine under the real server.
pub async fn start_with(
    cfg: &Config,
    keys: KeyState,
    store: Arc<dyn Store>,
) -> Result<Running, StartError> {
    let vault = build(cfg, keys, store)?;
    let store_holders = Arc::strong_count(&vault.store);
    // A database restored from before an erasure must not serve the
    // erased subject for a moment; nor listen while it is checked.
    crate::shreds::reapply(&vault).await?;
    let s = &cfg.server;
    let tls = crate::tls::Live::new(cfg, Some(vault.store.clone()))?;
    let api = bind(&s.api_addr).await?;
    let ops = bind(&s.ops_addr).await?;
    let api_addr = local(&api, &s.api_addr)?;
    let ops_addr = local(&ops, &s.ops_addr)?;
    let officer = match &s.officer_addr {
        Some(a) => Some((bind(a).await?, a)),
        None => None,
    };
    let officer_addr = match &officer {
        Some((l, a)) => Some(local(l, a)?),
        None => None,
    };
    let start_head = crate::audit::log_start_anchor(&vault);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = vec![
        tokio::spawn(crate::http::serve_api(
            vault.clone(),
            api,
            tls.clone(),
            crate::http::Listener::Api,
            stopped.clone(),
        )),
        tokio::spawn(crate::http::serve_ops(vault.clone(), ops, stopped.clone())),
    ];
    if let Some((listener, _)) = officer {
        tasks.push(tokio::spawn(crate::http::serve_api(
            vault.clone(),
            listener,
            tls.clone(),
            crate::http::Listener::Officers,
            stopped.clone(),
        )));
    }
    if !cfg.tls.crls.is_empty() {
        tasks.push(tokio::spawn(crate::tls::watch_crls(
            tls,
            cfg.clone(),
            vault.metrics.clone(),
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::rewrap::supervise(
        vault.clone(),
        stopped.clone(),
    )));
    let (anchor_stop, anchor_stopped) = watch::channel(false);
    let anchor_task = tokio::spawn(crate::audit::anchors(
        vault.clone(),
        ANCHOR_INTERVAL,
        anchor_stopped,
        start_head,
    ));
    tasks.push(tokio::spawn(crate::api::lifecycle::resume_purge(
        vault.clone(),
    )));
    let sweep = Duration::from_millis(cfg.retention.sweep_interval_ms.max(10));
    tasks.push(tokio::spawn(crate::api::lifecycle::sweeper(
        vault.clone(),
        sweep,
        stopped.clone(),
    )));
    if let Some(period) = cfg.keys.auto_rotate_period.as_deref() {
        let ms = crate::retention::parse_duration(period).map_or(u64::MAX, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        });
        tasks.push(tokio::spawn(crate::api::admin::auto_rotate(
            vault.clone(),
            ms,
            stopped,
        )));
    }
    Ok(Running {
        api_addr,
        ops_addr,
        officer_addr,
        vault,
        stop,
        tasks,
        anchor_stop,
        anchor_task,
        store_holders,
    })
}

/// The vault's request-serving state, without listeners: what the server
/// runs on, and what benches drive in process.
pub fn build(
    cfg: &Config,
    keys: KeyState,
    store: Arc<dyn Store>,
) -> Result<Arc<Vault>, StartError> {
    let metrics = Arc::new(Metrics::new());
    metrics.set_sealed(keys.is_sealed());
    if let Ok(ring) = keys.get() {
        metrics
            .key_active_version
            .set(i64::from(ring.meta().active));
    }
    keys.cache().set_capacity(cfg.keys.subject_key_cache);
    let committer =
        Committer::start_with_cache(store.clone(), metrics.clone(), Some(keys.cache().clone()))?;
    let s = &cfg.server;
    Ok(Arc::new(Vault {
        policy: Policy::from_config(cfg),
        keys,
        store,
        committer,
        metrics,
        limits: Limits {
            max_body_bytes: s.max_body_bytes,
            max_items: s.max_items,
            request_timeout: Duration::from_millis(s.request_timeout_ms),
            body_timeout: Duration::from_millis(s.body_timeout_ms()),
            handshake_timeout: Duration::from_millis(s.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(s.idle_timeout_ms),
            max_concurrent_requests: s.max_concurrent_requests,
            max_connections: s.max_connections,
            max_streams_per_connection: s.max_streams_per_connection,
        },
        unseal: std::sync::Mutex::new(crate::shares::Collector::default()),
        root: root_source(cfg),
        seal_writes: std::sync::atomic::AtomicUsize::new(0),
        key_ops: tokio::sync::Mutex::new(()),
        config_on_expiry: cfg.retention.on_expiry,
        tokens: crate::tokens::TokenStyles::from_config(cfg),
        // Validation compiled every schema already; one that failed could
        // not be here.
        schemas: cfg
            .schemas
            .iter()
            .filter_map(|(name, m)| crate::records::compile(m).ok().map(|m| (name.clone(), m)))
            .collect(),
        rewrap: crate::rewrap::Rewrap::new(cfg.keys.rewrap_batch.max(1), cfg.keys.rewrap_pause_ms),
        walks: Arc::new(tokio::sync::Semaphore::new(AUDIT_WALKS)),
        officer_walks: Arc::new(tokio::sync::Semaphore::new(AUDIT_WALKS)),
        walkers: std::sync::Mutex::new(std::collections::HashMap::new()),
        purges: crate::api::lifecycle::Purges::default(),
        shreds: match &s.shred_log {
            Some(p) => Some(crate::shreds::ShredLog::open(&cfg.resolve(p))?),
            None => None,
        },
    }))
}

/// The root key from the configured source (file, variable or command).
pub fn load_master(cfg: &Config) -> Result<crate::secret::SecretKey<32>, keys::KeyError> {
    let k = &cfg.keys;
    match (&k.master_key_file, &k.master_key_env, &k.master_key_command) {
        (Some(f), _, _) => keys::master_from_file(&cfg.resolve(f)),
        (None, Some(var), _) => keys::master_from_env(var),
        (None, None, Some(cmd)) => keys::master_from_command(cmd),
        (None, None, None) => Err(keys::KeyError::MissingEnv("master-key-file".into())),
    }
}

async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| StartError::Bind {
        addr: addr.to_string(),
        kind: e.kind(),
    })
}

fn local(l: &TcpListener, addr: &str) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|e| StartError::Bind {
        addr: addr.to_string(),
        kind: e.kind(),
    })
}
