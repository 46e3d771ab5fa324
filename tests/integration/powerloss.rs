//! Power loss: the crash test's rounds (`crash.rs`), with the data
//! directory on a file system that forgets every write not yet synced
//! (`lossyfs.rs`). Each round's SIGKILL is followed by a power cut, clean
//! or torn in turn, before anything reads the directory again; a 200 must
//! mean the write reached the disk, not the page cache.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

use crate::crash::kill_cycles;
use crate::lossyfs::{mount_in, Cut, Lossy};

/// A private directory `name` on the lossy file system at `mnt`, made on
/// its disk `backing` itself, so durable before any start.
fn private_on(backing: &Path, mnt: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(backing.join(name))
        .unwrap();
    mnt.join(name)
}

/// A lossy file system mounted in `dir`, with a data directory for
/// `vault dev` on it (private, as it wants it).
fn vault_on_lossy(dir: &Path) -> Option<(Lossy, PathBuf)> {
    let (fs, backing, mnt) = mount_in(dir)?;
    let data = private_on(&backing, &mnt, "vault");
    Some((fs, data))
}

/// The files `vault dev` makes at its first start.
const DEV_FILES: [&str; 7] = [
    "master.key",
    "vault.toml",
    "tls/ca.pem",
    "tls/ca.key",
    "tls/server.pem",
    "tls/app.pem",
    "tls/app.key",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_lose_nothing_acknowledged_and_half_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some((fs, data)) = vault_on_lossy(dir.path()) else {
        return;
    };
    let mut lost = 0u64;
    let mut restored = 0usize;
    let mut names = 0usize;
    // What `vault dev` wrote at its first start must outlive every cut:
    // a lost CA or key would be replaced by a new one at the next start,
    // locking out every app (or every value) that used the old.
    let read = |data: &Path| -> Vec<Option<Vec<u8>>> {
        DEV_FILES
            .iter()
            .map(|f| std::fs::read(data.join(f)).ok())
            .collect()
    };
    let mut first: Option<Vec<Option<Vec<u8>>>> = None;
    kill_cycles(&data, 6, |cycle, rng| {
        let before = first.get_or_insert_with(|| read(&data)).clone();
        let how = if cycle % 2 == 0 {
            Cut::Clean
        } else {
            Cut::Torn
        };
        // A source of its own per cut: however many draws a cut takes, the
        // rounds' kill moments stay those of the seed.
        let mut tear = rand::rngs::StdRng::seed_from_u64(rng.gen());
        let report = fs.cut(how, &mut tear).unwrap();
        for (name, (was, is)) in DEV_FILES.iter().zip(before.iter().zip(read(&data))) {
            assert!(was.is_some(), "{name} missing before the cut");
            // Compared, never printed: these are keys.
            assert!(was == &is, "{name} lost or changed by power cut {cycle}");
        }
        eprintln!("cut {cycle} ({how:?}): {report:?}");
        lost += report.truncated;
        restored += report.restored;
        names += report.names;
    })
    .await;
    let (written, syncs) = fs.traffic();
    eprintln!("through the mount: {written} bytes written, {syncs} syncs; cuts dropped {lost} bytes, restored {restored} pages, undid {names} changes of names");
    // The vault's writes went through the lossy file system, and the cuts
    // did take away unsynced bytes (RocksDB's own LOG is never synced).
    assert!(
        syncs > 100 && written > 1 << 20,
        "{written} bytes, {syncs} syncs"
    );
    assert!(lost > 0, "no cut found anything unsynced to drop");
}

/// What officers are told is done survives a power cut: a rotation (new
/// values go under the new version), a rewrap's steps (it resumes from
/// its cursor and every value still opens), and a seal (the vault starts
/// sealed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_rewraps_and_seals_survive_power_cuts() {
    use crate::durability::{client_as, rewrap_killed_midway, spawn};
    use crate::harness::detok_req;

    let dir = tempfile::tempdir().unwrap();
    let Some((fs, data)) = vault_on_lossy(dir.path()) else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261208);
    let (mut second, tokens) = rewrap_killed_midway(&data, || {
        let cut = fs.cut(Cut::Clean, &mut rng).unwrap();
        eprintln!("cut mid-rewrap: {cut:?}");
    })
    .await;
    let refs: Vec<&str> = tokens.iter().map(|t| t.as_str()).collect();
    let officer = client_as(&data, &second.api, "officer");

    // A seal, cut right after its answer: the next start is sealed.
    assert!(officer.seal().await.unwrap().sealed);
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    // Clean: every unsynced byte goes, so a seal not synced is lost every
    // time, not one time in two.
    let cut = fs.cut(Cut::Clean, &mut rng).unwrap();
    eprintln!("cut after the seal: {cut:?}");
    let third = spawn(&data);
    let officer = client_as(&data, &third.api, "officer");
    assert!(
        officer.keys_status().await.unwrap().sealed,
        "the seal was lost"
    );
    let app = client_as(&data, &third.api, "app");
    let err = app
        .detokenize(&detok_req("notification", &refs[..1]))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(503), Some("sealed")));
    drop(third);
}

/// `vault dev`'s first start cut short by a power cut (torn) at a random
/// moment, again and again, each on a new directory: the next start must
/// come up by itself, with a master key and certificates that work
/// together, whatever part of the first start reached the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_cut_short_comes_up_at_the_next() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use vault_sdk::wire::Status;

    use crate::durability::client_as;
    use crate::harness::{detok_req, tokenize_one, vault_bin};

    let dir = tempfile::tempdir().unwrap();
    let Some((fs, backing, mnt)) = mount_in(dir.path()) else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        std::env::var("VAULT_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7),
    );
    let start = |data: &Path| {
        Command::new(vault_bin())
            .args(["dev", "--data"])
            .arg(data)
            .args(["--api-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(Reaped)
            .unwrap()
    };
    // Comes up, or the test shows why not.
    let ready = |data: &Path| {
        let mut child = start(data);
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if !line.contains("ready") {
            let _ = child.0.kill();
            let mut err = String::new();
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the start after a cut failed: {err}");
        }
        let api = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("api="))
            .unwrap()
            .to_string();
        (child, api)
    };
    let private = |name: String| private_on(&backing, &mnt, &name);
    // How long a whole first start takes here, and when it makes its
    // files (from the first, `tls/server.key`, to the last, `vault.toml`):
    // half the cuts fall while it makes them, the others anywhere.
    let t0 = Instant::now();
    let timing = private("timing".into());
    let child = start(&timing);
    let when = |f: &str| {
        while !timing.join(f).exists() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_micros(100));
        }
        t0.elapsed()
    };
    let (first, last) = (when("tls/server.key"), when("vault.toml"));
    drop(child);
    let t0 = Instant::now();
    let (child, _) = ready(&private("timing2".into()));
    let whole = t0.elapsed();
    drop(child);
    let rounds: u32 = std::env::var("VAULT_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let mut partial = 0;
    // The rounds asked for, and more (up to four times as many) until a cut
    // has fallen among the files, where the bugs were.
    let mut round = 0;
    while round < rounds || (partial == 0 && round < 4 * rounds.max(16)) {
        round += 1;
        let data = private(format!("v{round}"));
        let child = start(&data);
        let within = if round % 2 == 0 {
            first..last
        } else {
            Duration::ZERO..whole
        };
        let at = rng.gen_range(within.clone());
        std::thread::sleep(at);
        drop(child);
        let cut = fs.cut(Cut::Torn, &mut rng).unwrap();
        let left = DEV_FILES.iter().filter(|f| data.join(f).exists()).count();
        if left > 0 && left < DEV_FILES.len() {
            partial += 1;
        }
        eprintln!("round {round}: cut at {at:?} of {within:?}, {left} files left: {cut:?}");
        let (child, api) = ready(&data);
        let app = client_as(&data, &api, "app");
        let token = tokenize_one(&app, "acct-1", "notification", "phone", "13800138000").await;
        let out = app
            .detokenize(&detok_req("notification", &[&token]))
            .await
            .unwrap();
        assert_eq!(out.values[0].status, Status::Ok);
        drop(child);
    }
    eprintln!("{partial} of {round} cuts left some of the files and not others");
    assert!(partial > 0, "no cut fell among the files");
}

/// A child process killed and reaped when dropped, so a failing test
/// leaves no vault behind and the mount free.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A start cut short after making its files and before syncing their
/// directories leaves names that only a later sync makes durable: the next
/// start, finding them all, must sync them itself, before a power cut
/// takes them (and with them the CA every app's certificate comes from).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_makes_durable_the_names_an_interrupted_one_left() {
    use crate::durability::spawn;

    let dir = tempfile::tempdir().unwrap();
    let Some((fs, data)) = vault_on_lossy(dir.path()) else {
        return;
    };
    // A whole `vault dev` directory, made on a plain one.
    let made = tempfile::tempdir().unwrap();
    drop(spawn(made.path()));
    // Copied onto the mount, each file's bytes synced but no directory:
    // where a first start killed right before its directory syncs leaves
    // things.
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(data.join("tls"))
        .unwrap();
    let tls = Path::new("tls");
    let names = made.path().join(tls).read_dir().unwrap();
    let names = names.map(|f| tls.join(f.unwrap().file_name()));
    for name in names.chain(["master.key".into(), "vault.toml".into()]) {
        std::fs::copy(made.path().join(&name), data.join(&name)).unwrap();
        std::fs::File::open(data.join(&name))
            .unwrap()
            .sync_all()
            .unwrap();
    }
    // The next start finds everything in place; then the power goes.
    drop(spawn(&data));
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let cut = fs.cut(Cut::Clean, &mut rng).unwrap();
    eprintln!("{cut:?}");
    for name in DEV_FILES {
        let (was, is) = (
            std::fs::read(made.path().join(name)).unwrap(),
            std::fs::read(data.join(name)).ok(),
        );
        // Compared, never printed: these are keys.
        assert!(
            Some(was) == is,
            "{name} lost by the power cut after a start"
        );
    }
}

/// A directory the vault may not sync (here the one holding its data
/// directory, on a file system that answers EINVAL, as some answer every
/// directory's sync) is a warning at start, not a refused start: before
/// the vault synced such directories, the same start worked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_cannot_be_synced_is_a_warning_not_a_refused_start() {
    use crate::durability::{client, spawn};
    use crate::harness::tokenize_one;

    let dir = tempfile::tempdir().unwrap();
    let Some((fs, backing, mnt)) = mount_in(dir.path()) else {
        return;
    };
    let data = private_on(&backing, &mnt, "vault");
    fs.refuse_dir_sync(&mnt, &mnt);
    let v = spawn(&data);
    let token = tokenize_one(
        &client(&data, &v.api),
        "acct-1",
        "notification",
        "phone",
        "13800138000",
    )
    .await;
    assert!(!token.is_empty());
    let logs = v.logs_once("Could not sync a directory");
    assert!(logs.contains("Could not sync a directory"), "{logs}");
}

/// On a file system without hard links (vfat, some shared folders),
/// new files go in by a rename that refuses an existing name, in one step
/// (`RENAME_NOREPLACE`) or, where renames take no flags, after looking: an
/// existing name is refused, nothing is left beside it, a first start
/// comes up, and one cut short comes up at the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hard_links_new_files_are_renamed_in() {
    use crate::durability::spawn;

    for flags in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let Some((fs, data)) = vault_on_lossy(dir.path()) else {
            return;
        };
        fs.refuse_links(flags);
        // The writer itself: made once, refused after, the first kept.
        let p = data.join("probe");
        vault::store::write_new_file(&p, b"first", 0o600).unwrap();
        let again = vault::store::write_new_file(&p, b"second", 0o600).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists, "{flags}");
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        // A first start, then a start that finds everything.
        drop(spawn(&data));
        let made: Vec<Vec<u8>> = DEV_FILES
            .iter()
            .map(|f| std::fs::read(data.join(f)).unwrap())
            .collect();
        assert!(made.iter().all(|b| !b.is_empty()));
        for d in [data.clone(), data.join("tls")] {
            for e in std::fs::read_dir(&d).unwrap() {
                let name = e.unwrap().file_name();
                let name = name.to_string_lossy();
                assert!(!name.ends_with(".new"), "{name} left beside the files");
            }
        }
        // A power cut after the start: the files it made stay.
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        fs.cut(Cut::Torn, &mut rng).unwrap();
        drop(spawn(&data));
        for (f, was) in DEV_FILES.iter().zip(made) {
            assert!(std::fs::read(data.join(f)).unwrap() == was, "{f} changed");
        }
    }
}

/// `vault dev` on a data directory whose parents do not exist yet makes
/// them all, and a power cut after its start takes none of them (a lost
/// name high up would take the whole tree, keys included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directories_a_first_start_makes_survive_a_cut() {
    use crate::durability::spawn;

    let dir = tempfile::tempdir().unwrap();
    let Some((fs, _, mnt)) = mount_in(dir.path()) else {
        return;
    };
    let data = mnt.join("a").join("b").join("vault");
    drop(spawn(&data));
    let made: Vec<Vec<u8>> = DEV_FILES
        .iter()
        .map(|f| std::fs::read(data.join(f)).unwrap())
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    fs.cut(Cut::Clean, &mut rng).unwrap();
    for (f, was) in DEV_FILES.iter().zip(made) {
        let is = std::fs::read(data.join(f)).ok();
        // Compared, never printed: these are keys.
        assert!(
            is == Some(was),
            "{f} lost by a power cut after the first start"
        );
    }
}
