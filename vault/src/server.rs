//! Assembles a running vault from a configuration: keys, store, committer,
//! policy, metrics, and the two listeners. Invariant: [`start`] returns only
//! once both listeners accept, and [`Running::shutdown`] stops accepting,
//! drains requests in flight and waits for the last durable write.

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
    pub handshake_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub max_connections: usize,
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
}

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
    pub vault: Arc<Vault>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (up to the request
    /// timeout), then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Resolves when a shutdown has been asked for from elsewhere.
    pub fn stop_handle(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Opens the store and keys of `cfg` and starts both listeners.
pub async fn start(cfg: &Config) -> Result<Running, StartError> {
    let master = load_master(cfg)?;
    let keyring = Keyring::derive(&master, 1);
    drop(master);
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(&cfg.data_dir())?);
    start_with(cfg, keyring, store).await
}

/// Starts over a given keyring and store: how tests put a failing or
/// inspectable engine under the real server.
pub async fn start_with(
    cfg: &Config,
    keyring: Keyring,
    store: Arc<dyn Store>,
) -> Result<Running, StartError> {
    let vault = build(cfg, keyring, store)?;
    let s = &cfg.server;
    let tls = crate::tls::server_config(cfg)?;
    let api = bind(&s.api_addr).await?;
    let ops = bind(&s.ops_addr).await?;
    let api_addr = local(&api, &s.api_addr)?;
    let ops_addr = local(&ops, &s.ops_addr)?;
    let (stop, stopped) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(crate::http::serve_api(
            vault.clone(),
            api,
            tls,
            stopped.clone(),
        )),
        tokio::spawn(crate::http::serve_ops(vault.clone(), ops, stopped)),
    ];
    Ok(Running {
        api_addr,
        ops_addr,
        vault,
        stop,
        tasks,
    })
}

/// The vault's request-serving state, without listeners: what the server
/// runs on, and what benches drive in process.
pub fn build(
    cfg: &Config,
    keyring: Keyring,
    store: Arc<dyn Store>,
) -> Result<Arc<Vault>, StartError> {
    let metrics = Arc::new(Metrics::new());
    let committer = Committer::start(store.clone(), metrics.clone())?;
    let s = &cfg.server;
    Ok(Arc::new(Vault {
        policy: Policy::from_config(cfg),
        keys: KeyState::unsealed(keyring),
        store,
        committer,
        metrics,
        limits: Limits {
            max_body_bytes: s.max_body_bytes,
            max_items: s.max_items,
            request_timeout: Duration::from_millis(s.request_timeout_ms),
            handshake_timeout: Duration::from_millis(s.handshake_timeout_ms),
            max_concurrent_requests: s.max_concurrent_requests,
            max_connections: s.max_connections,
        },
    }))
}

/// The master key from the configured source.
pub fn load_master(cfg: &Config) -> Result<crate::secret::SecretKey<32>, keys::KeyError> {
    match (&cfg.keys.master_key_file, &cfg.keys.master_key_env) {
        (Some(f), _) => keys::master_from_file(&cfg.resolve(f)),
        (None, Some(var)) => keys::master_from_env(var),
        (None, None) => Err(keys::KeyError::MissingEnv("master-key-file".into())),
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
