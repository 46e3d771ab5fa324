//! Officer subcommands: key status, rotation, minimum version, rewrap, seal,
//! unseal (through the API with an officer certificate, via the SDK) and
//! `operator init` (offline, on the database). Exit codes: 0 done, 1 the
//! vault refused (the error code is printed), 64 bad usage or
//! configuration, 69 the vault could not be reached, 70 a local failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde::Serialize;
use vault_sdk::wire::{KeysStatus, RewrapStatus};
use vault_sdk::{Client, ClientBuilder};

use super::{fail, load, EXIT_BROKEN, EXIT_CONFIG, EXIT_RUNTIME};
use crate::audit::Draft;
use crate::keys::{Keyring, UnsealMeta, UNSEAL_SLOT};
use crate::store::{RocksStore, Space, Store};

/// Could not reach the vault (sysexits EX_UNAVAILABLE).
pub const EXIT_UNREACHABLE: u8 = 69;

/// How to reach the vault as an officer.
#[derive(Debug, Args)]
pub struct Connection {
    /// API endpoint.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    pub endpoint: String,
    /// A `vault dev` directory: takes the CA and the `officer` certificate
    /// from DIR/tls unless --ca/--cert/--key say otherwise.
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// CA certificate (PEM) the server's certificate must chain to.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Officer client certificate and key (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Versions, their states and how many values each protects.
    Status,
    /// Make a new active data-key version.
    Rotate,
    /// Refuse to decrypt anything older than VERSION.
    MinDecryptionVersion { version: u32 },
    /// Delete a key version no stored value uses any more (after a rewrap).
    Retire { version: u32 },
    /// Start re-encrypting every value under the active version.
    RewrapStart,
    /// Progress of the rewrap job.
    RewrapStatus,
}

fn client(c: &Connection) -> Result<Client, ExitCode> {
    let dev_file = |name: &str| c.dev.as_ref().map(|d| d.join("tls").join(name));
    let (Some(ca), Some(cert), Some(key)) = (
        c.ca.clone().or_else(|| dev_file("ca.pem")),
        c.cert.clone().or_else(|| dev_file("officer.pem")),
        c.key.clone().or_else(|| dev_file("officer.key")),
    ) else {
        return Err(fail(
            EXIT_CONFIG,
            "give --dev DIR, or --ca, --cert and --key",
        ));
    };
    ClientBuilder::new(&c.endpoint)
        .ca_file(ca)
        .and_then(|b| b.identity_files(cert, key))
        .and_then(|b| b.build())
        .map_err(|e| fail(EXIT_CONFIG, &format!("cannot set up the client: {e}")))
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(EXIT_RUNTIME, &format!("runtime: {e}")))
}

/// Prints an answer, or the error with the exit code it means.
fn report<T: Serialize>(
    json: bool,
    r: Result<T, vault_sdk::Error>,
    text: impl FnOnce(&T) -> String,
) -> ExitCode {
    match r {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("{}", text(&v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => match e.code() {
            Some(code) => fail(EXIT_BROKEN, &format!("refused: {code}: {e}")),
            None => fail(EXIT_UNREACHABLE, &format!("cannot reach the vault: {e}")),
        },
    }
}

fn keys_text(s: &KeysStatus) -> String {
    if s.sealed {
        let mut out = if s.unseal_threshold > 0 {
            format!(
                "sealed: yes\nunseal progress: {}/{}",
                s.unseal_progress, s.unseal_threshold
            )
        } else {
            "sealed: yes".into()
        };
        if s.seal_unrecorded {
            out.push_str("\nwarning: the seal is not written to the database yet (storage failing; the vault keeps trying): a restart now would start unsealed");
        }
        return out;
    }
    let mut out = format!(
        "sealed: no\nactive version: {}\nmin decryption version: {}\n",
        s.active_version.unwrap_or(0),
        s.min_decryption_version.unwrap_or(0)
    );
    let at_least = if s.counts_partial { "at least " } else { "" };
    for v in &s.versions {
        out.push_str(&format!(
            "  v{:<4} {:<13} {at_least}{} values\n",
            v.version, v.state, v.values
        ));
    }
    if s.counts_partial {
        out.push_str("(counting the stored values stopped at the request's deadline)\n");
    }
    out.trim_end().to_string()
}

fn rewrap_text(s: &RewrapStatus) -> String {
    let behind = if s.left_behind > 0 {
        format!(
            ", {} left behind (not moved: changed outside the vault, version refused, subject key gone, or a format-1 value not matched to its token; their version cannot be retired while they stay)",
            s.left_behind
        )
    } else {
        String::new()
    };
    let fenced = if s.fenced { ", fenced" } else { "" };
    let floor = s
        .proven_floor
        .map(|f| format!("; no value is below v{f}: retiring an older version needs no count"))
        .unwrap_or_default();
    format!(
        "rewrap: {} (target v{}{fenced}, {} values looked at, {} re-encrypted{behind}){floor}",
        s.state, s.target_version, s.scanned, s.rewrapped
    )
}

pub fn keys(conn: &Connection, cmd: &KeysCommand) -> ExitCode {
    let (c, rt) = match (client(conn), runtime()) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let json = conn.json;
    rt.block_on(async {
        match cmd {
            KeysCommand::Status => report(json, c.keys_status().await, keys_text),
            KeysCommand::Rotate => report(json, c.rotate_keys().await, keys_text),
            KeysCommand::MinDecryptionVersion { version } => report(
                json,
                c.set_min_decryption_version(*version).await,
                keys_text,
            ),
            KeysCommand::Retire { version } => {
                report(json, c.retire_key_version(*version).await, keys_text)
            }
            KeysCommand::RewrapStart => report(json, c.start_rewrap().await, rewrap_text),
            KeysCommand::RewrapStatus => report(json, c.rewrap_status().await, rewrap_text),
        }
    })
}

fn audit_text(r: &vault_sdk::wire::AuditResponse) -> String {
    let mut out = String::new();
    for e in &r.events {
        out.push_str(&format!(
            "#{} {} {} {} {} purpose={} subject={} class={} outcome={}",
            e.seq,
            e.time_ms,
            e.request_id,
            e.caller,
            e.action,
            e.purpose.as_deref().unwrap_or("-"),
            e.subject.as_deref().unwrap_or("-"),
            e.class.as_deref().unwrap_or("-"),
            e.outcome
        ));
        // Legal exceptions: the approval, whom it is for, the case; and why
        // a release was denied.
        for (name, value) in [
            ("approval", &e.approval),
            ("requester", &e.requester),
            ("reference", &e.reference),
            ("reason", &e.reason),
        ] {
            if let Some(v) = value {
                out.push_str(&format!(" {name}={v}"));
            }
        }
        out.push('\n');
    }
    out.push_str(&format!("{} event(s)", r.events.len()));
    out
}

/// `vault audit query`: events through the API, oldest first.
pub fn audit_query(
    conn: &Connection,
    subject: Option<&str>,
    since: Option<u64>,
    limit: Option<u32>,
) -> ExitCode {
    let (c, rt) = match (client(conn), runtime()) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    rt.block_on(async { report(conn.json, c.audit(subject, since, limit).await, audit_text) })
}

/// `vault approve`: prints the approval id to pass as `legal_basis`.
pub fn approve(conn: &Connection, req: vault_sdk::wire::ApprovalRequest) -> ExitCode {
    let (c, rt) = match (client(conn), runtime()) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    rt.block_on(async {
        report(conn.json, c.approve(&req).await, |a| {
            format!(
                "approval {} for {} ({}), subjects {}, reference {}, expires {} ms",
                a.id,
                a.requester,
                a.purpose,
                a.subjects.join(","),
                a.reference,
                a.expires_ms
            )
        })
    })
}

pub fn seal(conn: &Connection) -> ExitCode {
    let (c, rt) = match (client(conn), runtime()) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    rt.block_on(async { report(conn.json, c.seal().await, keys_text) })
}

/// Turns core dumps off before a command holds a share or the root key:
/// a crash must not write them to disk, nor another user read them from
/// memory. Best effort, as in `serve`: a failed step is warned about.
fn harden() {
    for step in crate::hardening::disable_core_dumps() {
        eprintln!("warning: process hardening step failed: {step}");
    }
}

/// Unseals with one share, from `--share` or, so it stays out of the shell
/// history and the process list, from the first line of standard input.
pub fn unseal(conn: &Connection, share: Option<String>) -> ExitCode {
    harden();
    let share = zeroize::Zeroizing::new(match share {
        Some(s) => {
            eprintln!(
                "warning: --share puts the share on the command line, where other local users can read it (/proc/PID/cmdline) and the shell may keep it in its history; give it on standard input instead (`vault unseal ... < FILE`, or type it at the prompt)"
            );
            s
        }
        None => {
            match stdin_secret_line() {
                Ok(line) if !line.is_empty() => line.to_string(),
                Ok(_) | Err(_) => return fail(
                    EXIT_CONFIG,
                    "give a share with --share or on standard input (one line, at most 1024 bytes)",
                ),
            }
        }
    });
    let (c, rt) = match (client(conn), runtime()) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    rt.block_on(async { report(conn.json, c.unseal(&share).await, keys_text) })
}

/// `vault unseal --resume`: one officer's ask to read the root key again.
pub fn resume(conn: &Connection) -> ExitCode {
    let (c, rt) = match (client(conn), runtime()) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    rt.block_on(async { report(conn.json, c.resume_unseal().await, keys_text) })
}

/// Writes `batch` to a stopped vault's database with one audit event of
/// the operator's (`action`, outcome `ok`), through a committer of its
/// own, so the event is chained like any other.
fn offline_commit(
    store: &Arc<dyn Store>,
    batch: crate::store::Batch,
    request_id: &str,
    action: &'static str,
) -> Result<Result<(), crate::commit::CommitError>, ExitCode> {
    offline_commit_with(store, batch, request_id, action, None)
}

/// As [`offline_commit`], the event carrying `reference`.
fn offline_commit_with(
    store: &Arc<dyn Store>,
    batch: crate::store::Batch,
    request_id: &str,
    action: &'static str,
    reference: Option<String>,
) -> Result<Result<(), crate::commit::CommitError>, ExitCode> {
    let event = Draft {
        request_id: request_id.into(),
        caller: "operator".into(),
        action,
        outcome: "ok",
        reference,
        ..Draft::default()
    };
    runtime().map(|rt| {
        rt.block_on(async {
            let committer = crate::commit::Committer::start(
                store.clone(),
                Arc::new(crate::metrics::Metrics::new()),
            )?;
            committer.commit(batch, vec![event]).await
        })
    })
}

/// The database of a stopped vault, opened for an offline change. A
/// directory that holds no vault is a mistake, not one to create.
fn stopped_store(cfg: &crate::config::Config) -> Result<Arc<dyn Store>, ExitCode> {
    if !cfg.data_dir().join("CURRENT").is_file() {
        return Err(fail(
            EXIT_CONFIG,
            &format!("no vault database in {}", cfg.data_dir().display()),
        ));
    }
    match RocksStore::open(&cfg.data_dir()) {
        Ok(s) => Ok(Arc::new(s)),
        Err(e) => Err(fail(
            EXIT_RUNTIME,
            &format!("cannot open the database (is the vault still running?): {e}"),
        )),
    }
}

/// `vault operator clear-seal`: removes an officer's seal from a stopped
/// vault's database (audited), so it starts unsealed.
pub fn clear_seal(config: &std::path::Path) -> ExitCode {
    harden();
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = match stopped_store(&cfg) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mark = match store.get(Space::Meta, crate::keys::SEAL_MARK) {
        Ok(m) => m,
        Err(e) => return fail(EXIT_RUNTIME, &format!("cannot read the database: {e}")),
    };
    let Some(mark) = mark else {
        println!("No officer's seal to clear: the vault starts as its configuration says.");
        return ExitCode::SUCCESS;
    };
    let mut batch = crate::store::Batch::default();
    batch.expect(Space::Meta, crate::keys::SEAL_MARK.to_vec(), Some(mark));
    batch.delete(Space::Meta, crate::keys::SEAL_MARK.to_vec());
    let written = offline_commit(&store, batch, "operator-clear-seal", "seal_cleared");
    match written {
        Ok(Ok(())) => {
            println!(
                "Seal cleared: the vault starts as its configuration says at its next start{}.",
                if cfg.keys.unseal_with_shares {
                    " (sealed until officers give their shares)"
                } else {
                    " (unsealed)"
                }
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(EXIT_RUNTIME, &format!("cannot clear the seal: {e}")),
        Err(code) => code,
    }
}

/// `vault operator accept-shred-log`: a stopped vault's database takes the
/// shred log as it is now as the one it saw (audited, with what it saw
/// before), and its next start checks every subject key against it (and
/// refuses it if it changed since).
pub fn accept_shred_log(config: &std::path::Path) -> ExitCode {
    harden();
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(path) = cfg.server.shred_log.as_ref().map(|p| cfg.resolve(p)) else {
        return fail(
            EXIT_CONFIG,
            "server.shred-log is not set in this configuration",
        );
    };
    let store = match stopped_store(&cfg) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // The log must open as the start will open it (and not be held).
    let log = match crate::shreds::ShredLog::open(&path) {
        Ok(l) => l,
        Err(e) => return fail(EXIT_RUNTIME, &e.to_string()),
    };
    let before = match crate::shreds::seen_in(store.as_ref()) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_RUNTIME, &format!("cannot read the database: {e}")),
    };
    let mut batch = crate::store::Batch::default();
    let Some(accepted) = crate::shreds::accept(&mut batch, &log) else {
        return fail(EXIT_RUNTIME, "the shred log is busy");
    };
    let shown = |s: Option<(u64, String)>| s.map_or("none".into(), |(l, h)| format!("{l}:{h}"));
    let reference = format!("seen={} accepted={}", shown(before), shown(Some(accepted)));
    match offline_commit_with(
        &store,
        batch,
        "operator-accept-shred-log",
        "shred_log_accepted",
        Some(reference),
    ) {
        Ok(Ok(())) => {
            println!(
                "Accepted: the next start checks every subject key against {} as it is now. Erasures it does not name cannot be made again.",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(EXIT_RUNTIME, &format!("cannot write the database: {e}")),
        Err(code) => code,
    }
}

/// `vault operator accept-crls`: a stopped vault's database takes the
/// revocation lists in `tls.crls` as they are as the newest of their CAs
/// (audited, with each CA's change), so its next start takes them in.
/// Without `yes`, the changes are shown and nothing is written.
pub fn accept_crls(config: &std::path::Path, yes: bool) -> ExitCode {
    harden();
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.tls.crls.is_empty() {
        return fail(EXIT_CONFIG, "tls.crls is not set in this configuration");
    }
    let store = match stopped_store(&cfg) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (batch, changes) = match crate::tls::accept_lists(&cfg, store.as_ref()) {
        Ok(x) => x,
        Err(e @ crate::tls::TlsError::Numbers(_)) => return fail(EXIT_RUNTIME, &e.to_string()),
        Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
    };
    if changes.is_empty() {
        println!(
            "Nothing to accept: the database already holds each CA to the list tls.crls gives."
        );
        return ExitCode::SUCCESS;
    }
    if !yes {
        println!("Would accept as the newest of their CAs (nothing written):");
        for c in &changes {
            println!("  {c}");
        }
        println!("Check each change (a replayed list goes back in time and number), then run again with --yes to write it (audited).");
        return ExitCode::SUCCESS;
    }
    match offline_commit_with(
        &store,
        batch,
        "operator-accept-crls",
        "crl_numbers_accepted",
        Some(changes.join("; ")),
    ) {
        Ok(Ok(())) => {
            println!("Accepted as the newest of their CAs (the next start takes them in, and refuses older ones):");
            for c in &changes {
                println!("  {c}");
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(EXIT_RUNTIME, &format!("cannot write the database: {e}")),
        Err(code) => code,
    }
}

/// `vault operator init`: creates the root key of a vault configured with
/// `unseal-with-shares`, stores its key hierarchy, and prints the shares
/// once. The server must not be running (the database is opened directly).
pub fn init(config: &std::path::Path, shares: u8, threshold: u8, json: bool) -> ExitCode {
    harden();
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !cfg.keys.unseal_with_shares {
        return fail(
            EXIT_CONFIG,
            "operator init needs `unseal-with-shares = true` in [keys]",
        );
    }
    let root = crate::secret::SecretKey::<32>::generate();
    let printed = match crate::shares::split(&root, shares, threshold) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_CONFIG, &format!("operator init: {e}")),
    };
    let store: Arc<dyn Store> = match RocksStore::open(&cfg.data_dir()) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(EXIT_RUNTIME, &format!("cannot open the database: {e}")),
    };
    match Keyring::exists(store.as_ref()) {
        Ok(false) => {}
        Ok(true) => {
            return fail(
                EXIT_BROKEN,
                "this vault is already initialized; nothing was changed",
            )
        }
        Err(e) => return fail(EXIT_RUNTIME, &format!("cannot read the database: {e}")),
    }
    match Keyring::refuse_over_data(store.as_ref()) {
        Ok(()) => {}
        Err(crate::keys::KeyError::KeysMissing) => {
            return fail(
                EXIT_BROKEN,
                "this database holds data but no keys (its key records are missing); refusing to create new keys over it; nothing was changed",
            )
        }
        Err(e) => return fail(EXIT_RUNTIME, &format!("cannot read the database: {e}")),
    }
    // The threshold counts officers, not shares (a second share from one
    // officer is refused): more than the configuration names, and the
    // vault this makes could never be unsealed.
    let officers = cfg
        .callers
        .iter()
        .filter(|c| c.role == crate::policy::Role::Officer)
        .count();
    if usize::from(threshold) > officers {
        return fail(
            EXIT_CONFIG,
            &format!(
                "operator init: a threshold of {threshold} needs {threshold} officers to unseal (each gives one share), and the configuration names {officers}; add officers or lower --threshold; nothing was changed"
            ),
        );
    }
    // The key hierarchy, the split's metadata and the audit event go in one
    // durable write: a failure leaves the vault uninitialized (and init can
    // run again), never initialized without anyone holding its shares.
    let mut batch = match Keyring::genesis_batch(&root) {
        Ok(b) => b,
        Err(e) => return fail(EXIT_RUNTIME, &format!("cannot create the keys: {e}")),
    };
    let meta = UnsealMeta {
        shares,
        threshold,
        fingerprints: printed
            .iter()
            .filter_map(|s| crate::shares::fingerprint(s))
            .collect(),
    };
    batch.put(
        Space::Meta,
        UNSEAL_SLOT.to_vec(),
        serde_json::to_vec(&meta).unwrap_or_default(),
    );
    let written = offline_commit(&store, batch, "operator-init", "operator_init");
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return fail(EXIT_RUNTIME, &format!("cannot create the keys: {e}")),
        Err(code) => return code,
    }
    // What was written opens under the root the shares carry.
    if let Err(e) = Keyring::open_existing(&root, store.as_ref()) {
        return fail(EXIT_RUNTIME, &format!("the keys written do not open: {e}"));
    }
    drop(root);
    let text = if json {
        shares_json(&printed, threshold)
    } else {
        shares_text(&printed, threshold)
    };
    match stdout_unbuffered(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        // Nobody holds the shares now, and init refuses an initialized
        // vault; but it ran on an empty database, so nothing is lost by
        // starting over.
        Err(e) => fail(
            EXIT_RUNTIME,
            &format!(
                "the vault was initialized but its shares could not all be printed ({}), so not every share is held: delete {} (it holds no data yet) and run operator init again",
                e.kind(),
                cfg.data_dir().display()
            ),
        ),
    }
}

/// The longest line [`stdin_secret_line`] takes: a share is under 100.
const SECRET_LINE_MAX: usize = 1024;

/// The first line of standard input, trimmed, read straight from the
/// descriptor into one buffer allocated at full size and wiped on drop.
/// `std::io::stdin()` would keep a copy of it in its process-wide buffer,
/// never wiped. Reads a byte at a time, so nothing after the line is
/// consumed.
fn stdin_secret_line() -> std::io::Result<zeroize::Zeroizing<String>> {
    use std::io::IsTerminal;
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let fd = stdin.as_fd().try_clone_to_owned()?;
    // Typed at a terminal: a prompt, and the share not echoed to the
    // screen (restored when the guard drops).
    let quiet = if stdin.is_terminal() {
        eprint!("Key share (not echoed): ");
        crate::hardening::echo_off(stdin.as_fd())
    } else {
        None
    };
    let line = read_secret_line(std::fs::File::from(fd));
    if quiet.is_some() {
        eprintln!();
    }
    line
}

fn read_secret_line(mut from: impl std::io::Read) -> std::io::Result<zeroize::Zeroizing<String>> {
    use zeroize::Zeroize;
    let too_long = || std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long");
    let mut line = zeroize::Zeroizing::new(Vec::with_capacity(SECRET_LINE_MAX));
    let mut byte = [0u8; 1];
    let read = loop {
        match from.read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) if byte == [b'\n'] => break Ok(()),
            Ok(_) if line.len() == SECRET_LINE_MAX => break Err(too_long()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    byte.zeroize();
    read?;
    let text = std::str::from_utf8(&line)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))?
        .trim();
    let mut out = zeroize::Zeroizing::new(String::with_capacity(text.len()));
    out.push_str(text);
    Ok(out)
}

/// Writes `text` to standard output straight to the descriptor, after
/// whatever was printed before. `println!` would leave a copy of it in
/// std's process-wide buffer, never wiped.
fn stdout_unbuffered(text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsFd;
    let out = std::io::stdout();
    out.lock().flush()?;
    let fd = out.as_fd().try_clone_to_owned()?;
    let mut f = std::fs::File::from(fd);
    f.write_all(text)?;
    f.flush()
}

/// The shares as lines for a person, in one buffer sized up front and
/// wiped on drop.
fn shares_text(shares: &[zeroize::Zeroizing<String>], threshold: u8) -> zeroize::Zeroizing<String> {
    let head = format!(
        "Vault initialized. {} key shares; any {threshold} unseal it.\n\
         Give each to a different officer. They are shown once and stored nowhere.\n\n",
        shares.len()
    );
    let size = head.len() + shares.iter().map(|s| s.len() + 16).sum::<usize>();
    let mut out = zeroize::Zeroizing::new(String::with_capacity(size));
    out.push_str(&head);
    for (i, s) in shares.iter().enumerate() {
        out.push_str("share ");
        out.push_str(&(i + 1).to_string());
        out.push_str(": ");
        out.push_str(s);
        out.push('\n');
    }
    out
}

/// `{"shares":[...],"threshold":N}`, written by hand into one buffer sized
/// up front and wiped on drop: a `serde_json::Value` would hold its own
/// copy of every share, never wiped. A share is `vs1-` and hex, so it needs
/// no escaping.
fn shares_json(shares: &[zeroize::Zeroizing<String>], threshold: u8) -> zeroize::Zeroizing<String> {
    let size = shares.iter().map(|s| s.len() + 3).sum::<usize>() + 32;
    let mut out = zeroize::Zeroizing::new(String::with_capacity(size));
    out.push_str("{\"shares\":[");
    for (i, s) in shares.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
    out.push_str("],\"threshold\":");
    out.push_str(&threshold.to_string());
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn the_shares_json_is_what_serde_would_write_and_sized_up_front() {
        let root = crate::secret::SecretKey::<32>::generate();
        for (n, t) in [(2, 2), (5, 3), (16, 16)] {
            let shares = crate::shares::split(&root, n, t).unwrap();
            let text = shares_json(&shares, t);
            let list: Vec<&str> = shares.iter().map(|s| s.as_str()).collect();
            let want = serde_json::json!({"shares": list, "threshold": t});
            let got: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(got, want);
            // No reallocation: no freed copy of a share left behind.
            assert!(text.len() <= text.capacity());
            let size = shares.iter().map(|s| s.len() + 3).sum::<usize>() + 32;
            assert_eq!(text.capacity(), size);
            let people = shares_text(&shares, t);
            let cap = people.capacity();
            let listed: Vec<&str> = people
                .lines()
                .filter_map(|l| l.split_once(": ").map(|(_, s)| s))
                .collect();
            assert_eq!(listed, list);
            assert!(people.starts_with(&format!("Vault initialized. {n} key shares; any {t}")));
            assert!(people.len() <= cap);
        }
    }

    #[test]
    fn a_secret_line_is_read_up_to_its_newline_and_no_further() {
        let mut input = std::io::Cursor::new(b"  vs1-0123abcd \nthe next line\n".to_vec());
        assert_eq!(
            read_secret_line(&mut input).unwrap().as_str(),
            "vs1-0123abcd"
        );
        // The rest is still there for whoever reads next.
        assert_eq!(input.position(), 16);
        assert_eq!(
            read_secret_line(&mut input).unwrap().as_str(),
            "the next line"
        );
        assert_eq!(read_secret_line(&mut input).unwrap().as_str(), "");
        // The last line needs no newline.
        let got = read_secret_line(std::io::Cursor::new(b"vs1-ff".to_vec())).unwrap();
        assert_eq!(got.as_str(), "vs1-ff");
        // A line past the limit is refused, not grown into.
        let long = vec![b'a'; SECRET_LINE_MAX + 1];
        assert!(read_secret_line(std::io::Cursor::new(long)).is_err());
        let mut exact = vec![b'a'; SECRET_LINE_MAX];
        exact.push(b'\n');
        assert_eq!(
            read_secret_line(std::io::Cursor::new(exact)).unwrap().len(),
            SECRET_LINE_MAX
        );
        assert!(read_secret_line(std::io::Cursor::new(vec![0xff, b'\n'])).is_err());
    }
}
