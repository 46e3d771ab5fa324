//! The `vault` command line: `dev`, `serve`, `check-config`, `audit
//! verify`, `operator init` and the officer commands (`keys`, `seal`,
//! `unseal`). Invariant: exit codes mean one thing each: 0 success, 1 a
//! failed check or a refusal by the vault, 64 bad usage or configuration,
//! 69 the vault could not be reached, 70 a runtime failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod officer;
pub use officer::{Connection, KeysCommand, EXIT_UNREACHABLE};

use crate::config::{Config, LogFormat};
use crate::{audit, dev, server};

#[derive(Debug, Parser)]
#[command(
    name = "vault",
    version,
    about = "Hardened HTTPS sidecar for personal data"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run with embedded development defaults (creates DIR on first run).
    Dev {
        #[arg(long, default_value = "./vault-data")]
        data: PathBuf,
        /// API listener, overriding the configuration (port 0 picks one).
        #[arg(long)]
        api_addr: Option<String>,
        /// Ops listener, overriding the configuration.
        #[arg(long)]
        ops_addr: Option<String>,
    },
    /// Production start from a configuration file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration: exit 0, or 64 listing every problem.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Offline operator tasks on the database.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Data-key custody (officers, through the API).
    Keys {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Approve one legal-exception disclosure by another caller (officers).
    Approve {
        #[command(flatten)]
        conn: Connection,
        /// The caller that will make the disclosure.
        #[arg(long)]
        requester: String,
        /// One of the eight legal-exception purposes.
        #[arg(long)]
        purpose: String,
        /// A subject the approval covers (repeat for several).
        #[arg(long = "subject", required = true)]
        subjects: Vec<String>,
        /// The case or legal reference.
        #[arg(long)]
        reference: String,
        /// How long it lasts (ISO 8601, at most P30D).
        #[arg(long, default_value = "PT4H")]
        valid_for: String,
    },
    /// Stop all decryption at once and drop key material (officers).
    Seal {
        #[command(flatten)]
        conn: Connection,
    },
    /// Give one key share towards unsealing (officers). Without --share the
    /// share is read from standard input. With --resume (a vault an officer
    /// sealed, its root key from a file or a command): ask to read the root
    /// key again; two officers must ask.
    Unseal {
        #[command(flatten)]
        conn: Connection,
        /// The share, on the command line: other local users can read it
        /// there (a warning says so); prefer standard input.
        #[arg(long, conflicts_with = "resume")]
        share: Option<String>,
        #[arg(long)]
        resume: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Create the root key, store the key hierarchy, print the shares once.
    Init {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 5)]
        shares: u8,
        #[arg(long, default_value_t = 3)]
        threshold: u8,
        #[arg(long)]
        json: bool,
    },
    /// Clear an officer's seal while the vault is stopped, so that it
    /// starts unsealed again (the way back for a root key given in the
    /// environment, or without two officers at hand).
    ClearSeal {
        #[arg(long)]
        config: PathBuf,
    },
    /// Go on with the shred log as it is, when the vault refuses to start
    /// because the log is not the one its database saw (lost, cut or
    /// replaced): the next start checks every subject key against it.
    AcceptShredLog {
        #[arg(long)]
        config: PathBuf,
    },
    /// Take the revocation lists in `tls.crls` as they are as the newest of
    /// their CAs, when the start refuses one as older than a list taken in
    /// before and the CA truly issued it after (its numbering or clock
    /// started again).
    AcceptCrls {
        #[arg(long)]
        config: PathBuf,
        /// Write the changes shown; without it they are only shown.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Offline check of the hash chain: exit 0 intact, 1 broken.
    Verify {
        #[arg(long)]
        data: PathBuf,
        /// A chain head recorded outside the database, `SEQ:HASH`, as the
        /// server logs it every minute ("Audit anchor"); repeatable. The
        /// chain must pass through each: a rewrite or truncation of the
        /// database, hashes and head included, then shows.
        #[arg(long = "anchor", value_name = "SEQ:HASH")]
        anchors: Vec<String>,
    },
    /// Audit events through the API (officers).
    Query {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        subject: Option<String>,
        /// Events after this sequence number.
        #[arg(long)]
        since: Option<u64>,
        #[arg(long)]
        limit: Option<u32>,
    },
}

pub const EXIT_BROKEN: u8 = 1;
pub const EXIT_CONFIG: u8 = 64;
pub const EXIT_RUNTIME: u8 = 70;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Dev {
            data,
            api_addr,
            ops_addr,
        } => {
            let config = match dev::prepare(&data) {
                Ok(c) => c,
                Err(e) => return fail(EXIT_RUNTIME, &format!("vault dev: {e}")),
            };
            let mut cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(a) = api_addr {
                cfg.server.api_addr = a;
            }
            if let Some(a) = ops_addr {
                cfg.server.ops_addr = a;
            }
            cfg.server.log_format = LogFormat::Text;
            serve(&cfg)
        }
        Command::Serve { config } => match load(&config) {
            Ok(cfg) => serve(&cfg),
            Err(code) => code,
        },
        Command::CheckConfig { config } => match Config::load_unchecked(&config) {
            Ok((cfg, mut problems)) => {
                let found = startup_problems(&cfg, &problems);
                problems.extend(found);
                if !problems.is_empty() {
                    return report_problems(&config, &problems);
                }
                for w in cfg.warnings() {
                    eprintln!("warning: {w}");
                }
                println!("{}: valid", config.display());
                ExitCode::SUCCESS
            }
            Err(errs) => report_problems(&config, &errs.0),
        },
        Command::Audit {
            command: AuditCommand::Verify { data, anchors },
        } => verify(&data, &anchors),
        Command::Audit {
            command:
                AuditCommand::Query {
                    conn,
                    subject,
                    since,
                    limit,
                },
        } => officer::audit_query(&conn, subject.as_deref(), since, limit),
        Command::Operator {
            command:
                OperatorCommand::Init {
                    config,
                    shares,
                    threshold,
                    json,
                },
        } => officer::init(&config, shares, threshold, json),
        Command::Operator {
            command: OperatorCommand::ClearSeal { config },
        } => officer::clear_seal(&config),
        Command::Operator {
            command: OperatorCommand::AcceptShredLog { config },
        } => officer::accept_shred_log(&config),
        Command::Operator {
            command: OperatorCommand::AcceptCrls { config, yes },
        } => officer::accept_crls(&config, yes),
        Command::Keys { conn, command } => officer::keys(&conn, &command),
        Command::Approve {
            conn,
            requester,
            purpose,
            subjects,
            reference,
            valid_for,
        } => officer::approve(
            &conn,
            vault_sdk::wire::ApprovalRequest {
                requester,
                purpose,
                subjects,
                reference,
                valid_for,
            },
        ),
        Command::Seal { conn } => officer::seal(&conn),
        Command::Unseal {
            conn, resume: true, ..
        } => officer::resume(&conn),
        Command::Unseal { conn, share, .. } => officer::unseal(&conn, share),
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(code)
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errs| report_problems(path, &errs.0))
}

/// Lists a configuration's problems on stderr: exit 64.
fn report_problems(path: &Path, problems: &[String]) -> ExitCode {
    eprintln!("{}: {} problem(s):", path.display(), problems.len());
    for p in problems {
        eprintln!("  - {p}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// What `serve` would fail on at start beyond the file's own validity:
/// TLS files it cannot read or use (unreadable, not PEM, a key that is not
/// the certificate's, a revocation list its CA did not sign), and a master-key file or variable it cannot read or
/// that does not hold a key. A master-key command is not run (it may have
/// effects, such as an HSM's audit log). The messages name sources and
/// error kinds, never what a file holds. What the file's own checks
/// already faulted (`known`: a TLS file missing, the key sources) is not
/// tried again, so a problem is listed once.
fn startup_problems(cfg: &Config, known: &[String]) -> Vec<String> {
    let faulted = |prefixes: &[&str]| {
        known
            .iter()
            .any(|p| prefixes.iter().any(|pre| p.starts_with(pre)))
    };
    let mut problems = Vec::new();
    if !faulted(&["tls.ca:", "tls.cert:", "tls.key:"]) {
        problems.extend(
            crate::tls::config_problems(cfg)
                .into_iter()
                .map(|e| format!("tls: {e}")),
        );
    }
    let k = &cfg.keys;
    if !faulted(&["keys:", "keys.master-key-file:"])
        && (k.master_key_file.is_some() || k.master_key_env.is_some())
    {
        if let Err(e) = crate::server::load_master(cfg) {
            problems.push(format!("keys: {e}"));
        }
    }
    problems
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a terminal: a log file keeps `Audit anchor seq=N
    // hash=H` as plain text, to grep and paste into `audit verify --anchor`.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn serve(cfg: &Config) -> ExitCode {
    init_logging(cfg.server.log_format);
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    crate::hardening::quiet_panics();
    for step in crate::hardening::disable_core_dumps() {
        tracing::warn!(step, "Process hardening step failed");
    }
    // Still one thread: the last moment to change the environment safely.
    if let Some(var) = &cfg.keys.master_key_env {
        if let Err(e) = crate::keys::take_master_env(var) {
            return fail(EXIT_RUNTIME, &format!("vault: cannot start: {e}"));
        }
    }
    let files = crate::hardening::raise_open_files_limit();
    let mut cfg = cfg.clone();
    // The officers' listener takes its places out of the same descriptors.
    let officers = if cfg.server.officer_addr.is_some() {
        crate::http::OFFICER_CONNECTIONS as u64
    } else {
        0
    };
    if let Some(allowed) = files
        .and_then(|n| connections_within(n.saturating_sub(officers), cfg.server.max_connections))
    {
        // Connections past the descriptors would fail in accept, before
        // any could be evicted, and take the database's files with them.
        tracing::warn!(
            open_files = files,
            max_connections = cfg.server.max_connections,
            allowed,
            "The open-files limit is below server.max-connections plus 1024 for the database; serving at most `allowed` connections: raise it (ulimit -n) or lower max-connections"
        );
        cfg.server.max_connections = allowed;
    }
    let cfg = &cfg;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_RUNTIME, &format!("runtime: {e}")),
    };
    rt.block_on(async {
        let running = match server::start(cfg).await {
            Ok(r) => r,
            Err(e) => return fail(EXIT_RUNTIME, &format!("vault: cannot start: {e}")),
        };
        let sealed = match (&running.vault.root, running.vault.keys.is_sealed()) {
            (_, false) => "",
            (crate::keys::RootSource::Shares, true) => " sealed (unseal with key shares)",
            (crate::keys::RootSource::Env, true) => {
                " sealed by an officer (stop it, run `vault operator clear-seal`, start it again)"
            }
            (_, true) => " sealed by an officer (two officers: `vault unseal --resume`)",
        };
        let officer = running
            .officer_addr
            .map(|a| format!(" officer=https://{a}"))
            .unwrap_or_default();
        // Listening for the stop signals before saying ready: a supervisor
        // that stops the vault right after the ready line gets a clean
        // shutdown, not the signal's default (killed, nothing drained).
        let stopped = stop_signals();
        println!(
            "vault ready api=https://{} ops=http://{}{officer}{sealed}",
            running.api_addr, running.ops_addr
        );
        stopped.await;
        tracing::info!("Shutting down");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// The connections a process allowed `files` descriptors can serve, when
/// fewer than `max`: what is left after up to 1,024 for the database (half
/// of them at most), at least one.
fn connections_within(files: u64, max: usize) -> Option<usize> {
    let reserve = files.min(2048) / 2;
    let allowed = usize::try_from(files - reserve)
        .unwrap_or(usize::MAX)
        .max(1);
    (allowed < max).then_some(allowed)
}

/// Installs the SIGTERM and SIGINT handlers now; the future it returns
/// ends at the first of them.
fn stop_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listening = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match listening {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

fn verify(data: &Path, anchors: &[String]) -> ExitCode {
    let mut heads = Vec::with_capacity(anchors.len());
    for a in anchors {
        match audit::parse_anchor(a) {
            Some(h) => heads.push(h),
            None => {
                return fail(
                    EXIT_CONFIG,
                    "--anchor: SEQ:HASH, a sequence number and 64 hex digits",
                )
            }
        }
    }
    let store = match crate::store::RocksStore::open_read_only(data) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                EXIT_RUNTIME,
                &format!("cannot open {}: {e}", data.display()),
            )
        }
    };
    match audit::verify_anchored(&store, &heads) {
        Ok(audit::Verdict::Intact { events }) => {
            println!(
                "audit chain intact: {events} events, {} anchors on it",
                heads.len()
            );
            if heads.is_empty() {
                // The chain has no key: whoever can write the database can
                // rewrite it whole, and only an anchor kept elsewhere shows.
                eprintln!(
                    "note: no --anchor given; a chain rewritten with its head verifies too. Pass the `Audit anchor ... seq=N hash=H` lines of the vault's logs as --anchor N:H: every one, or at least the last before each restart (an anchor `at start` is of whatever the database held then, a rewrite included)"
                );
            }
            ExitCode::SUCCESS
        }
        Ok(audit::Verdict::Broken { seq, why }) => {
            println!("audit chain broken at event {seq}: {why}");
            ExitCode::from(EXIT_BROKEN)
        }
        Err(e) => fail(EXIT_RUNTIME, &format!("audit verify: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::connections_within;

    #[test]
    fn connections_are_clamped_to_the_descriptors_left_for_them() {
        // Enough descriptors: no clamp.
        assert_eq!(connections_within(1 << 20, 4096), None);
        assert_eq!(connections_within(5120, 4096), None);
        // 1,024 kept for the database, the rest for connections.
        assert_eq!(connections_within(4096, 4096), Some(3072));
        // A small limit keeps half for the database.
        assert_eq!(connections_within(1024, 4096), Some(512));
        assert_eq!(connections_within(1, 4096), Some(1));
        assert_eq!(connections_within(1024, 100), None);
    }
}
