#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
use super::*;
use crate::policy::Policy;

/// A directory with the TLS files the example names, so it validates.
fn base() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    crate::dev::prepare(dir.path()).unwrap();
    dir
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let dir = base();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    Config::from_toml(text, dir.path(), &env)
}

const EXAMPLE: &str = include_str!("../../../config/vault.example.toml");

#[test]
fn a_class_named_in_a_grant_wins_over_a_star_in_the_other_list() {
    let mut cfg = load(EXAMPLE, &[]).unwrap();
    let g = cfg
        .grants
        .iter_mut()
        .find(|g| g.purpose == "respond_to_request")
        .unwrap();
    g.full = vec!["*".into()];
    g.masked = vec!["phone".into()];
    assert!(policy::problems(&cfg).is_empty());
    let policy = Policy::from_config(&cfg);
    assert_eq!(
        policy.release("app", "respond_to_request", Class::Phone),
        policy::Release::Masked
    );
    assert_eq!(
        policy.release("app", "respond_to_request", Class::Email),
        policy::Release::Full
    );
    // And the other way round.
    let g = cfg
        .grants
        .iter_mut()
        .find(|g| g.purpose == "respond_to_request")
        .unwrap();
    g.full = vec!["name".into()];
    g.masked = vec!["*".into()];
    let policy = Policy::from_config(&cfg);
    assert_eq!(
        policy.release("app", "respond_to_request", Class::Name),
        policy::Release::Full
    );
    assert_eq!(
        policy.release("app", "respond_to_request", Class::Phone),
        policy::Release::Masked
    );
}

#[test]
fn the_example_parses_and_validates() {
    let cfg = load(EXAMPLE, &[]).unwrap();
    assert_eq!(cfg.server.api_addr, "127.0.0.1:8443");
    assert_eq!(cfg.server.max_body_bytes, 1 << 20);
    assert_eq!(cfg.server.handshake_timeout_ms, 5_000);
    assert_eq!(cfg.server.idle_timeout_ms, 60_000);
    assert_eq!(cfg.server.max_streams_per_connection, 32);
    assert_eq!(cfg.grants.len(), 6);
    let policy = Policy::from_config(&cfg);
    assert!(policy.may_collect("app", "traffic_statistics", Class::Ip));
    assert!(!policy.may_collect("app", "traffic_statistics", Class::Phone));
    assert_eq!(
        policy.release("app", "identity_verification", Class::Phone),
        policy::Release::Masked
    );
    assert_eq!(
        policy.release("app", "respond_to_request", Class::Email),
        policy::Release::Full
    );
    assert_eq!(
        policy.release("app", "respond_to_request", Class::BankCard),
        policy::Release::Masked
    );
    assert!(!policy.may_release_any("app", "traffic_statistics"));
    assert!(policy.purpose("user_specified").unwrap().requires_consent);
    assert!(
        policy
            .purpose("criminal_investigation")
            .unwrap()
            .legal_exception
    );
    assert!(policy.purpose("data_subject_request").is_some());
    assert_eq!(policy.role("officer2"), Some(policy::Role::Officer));
    assert_eq!(policy.role("nobody"), None);
    assert_eq!(
        policy.retention.from_collection(Class::Ip),
        Some(std::time::Duration::from_secs(180 * 86400))
    );
}

#[test]
fn environment_overrides_win() {
    let cfg = load(
        EXAMPLE,
        &[
            ("VAULT__SERVER__API_ADDR", "127.0.0.1:0"),
            ("VAULT__SERVER__MAX_ITEMS", "5"),
            ("OTHER", "x"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.server.api_addr, "127.0.0.1:0");
    assert_eq!(cfg.server.max_items, 5);
}

#[test]
fn overrides_reach_names_with_underscores_and_keep_strings_strings() {
    let cfg = load(
        EXAMPLE,
        &[
            (
                "VAULT__PURPOSES__RESPOND_TO_REQUEST__REQUIRES_CONSENT",
                "true",
            ),
            (
                "VAULT__PURPOSES__USER_SPECIFIED__CONSENT_SINCE",
                "2024-01-01",
            ),
            ("VAULT__TLS__MIN_VERSION", "1.2"),
        ],
    )
    .unwrap();
    // The purpose the file defines, not a new `respond-to-request`.
    assert!(cfg.purposes["respond_to_request"].requires_consent);
    assert!(!cfg.purposes.contains_key("respond-to-request"));
    assert_eq!(
        cfg.purposes["user_specified"].consent_since.as_deref(),
        Some("2024-01-01")
    );
    assert_eq!(cfg.tls.min_version, "1.2");
}

#[test]
fn overrides_add_names_the_file_does_not_have_yet() {
    let cfg = load(
        EXAMPLE,
        &[
            ("VAULT__TOKENS__CN_RESIDENT_ID", "preserving"),
            ("VAULT__RETENTION__LEGAL_MINIMUM__BANK_CARD", "P1Y"),
            ("VAULT__RETENTION__FROM_COLLECTION__EMAIL", "P2Y"),
            ("VAULT__PURPOSES__CASE_REVIEW__DESCRIPTION", "Case review"),
        ],
    )
    .unwrap();
    assert_eq!(
        cfg.tokens.get("cn_resident_id"),
        Some(&crate::tokens::TokenStyle::Preserving)
    );
    assert_eq!(
        cfg.retention
            .legal_minimum
            .get("bank_card")
            .map(String::as_str),
        Some("P1Y")
    );
    assert_eq!(
        cfg.retention
            .from_collection
            .get("email")
            .map(String::as_str),
        Some("P2Y")
    );
    assert!(cfg.purposes.contains_key("case_review"));
}

#[test]
fn a_missing_master_key_file_is_a_problem_not_a_start_failure() {
    let text = EXAMPLE.replace(
        "master-key-file = \"master.key\"",
        "master-key-file = \"nowhere.key\"",
    );
    assert_ne!(text, EXAMPLE);
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("keys.master-key-file: no such file"), "{err}");
}

#[test]
fn risky_but_valid_settings_are_warned_about() {
    let cfg = load(EXAMPLE, &[]).unwrap();
    assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
    let cfg = load(
        EXAMPLE,
        &[
            ("VAULT__SERVER__OPS_ADDR", "0.0.0.0:9464"),
            ("VAULT__TLS__MIN_VERSION", "1.2"),
        ],
    )
    .unwrap();
    let w = cfg.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains("0.0.0.0:9464") && w[1].contains("1.2"));
}

#[test]
fn unknown_keys_are_named() {
    let text = EXAMPLE.replace("max-items = 1000", "max-itemz = 1000");
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("max-itemz"), "{err}");
}

#[test]
fn the_spec_spelling_of_requires_consent_is_the_same_key() {
    let text = EXAMPLE.replace("requires-consent = true", "requires_consent = true");
    assert_ne!(text, EXAMPLE);
    let cfg = load(&text, &[]).unwrap();
    assert!(cfg.purposes["user_specified"].requires_consent);
}

#[test]
fn every_problem_is_listed() {
    let text = EXAMPLE
        .replace("api-addr = \"127.0.0.1:8443\"", "api-addr = \"nowhere\"")
        .replace("max = \"P30Y\"", "max = \"30 years\"")
        .replace("collect = [\"ip\"]", "collect = [\"ipaddr\"]")
        .replace("purpose = \"notification\"", "purpose = \"marketing\"")
        .replace(
            "caller = \"app\"\npurpose = \"user_specified\"",
            "caller = \"ghost\"\npurpose = \"user_specified\"",
        )
        .replace("min-version = \"1.3\"", "min-version = \"1.0\"")
        .replace("ca = \"tls/ca.pem\"", "ca = \"tls/missing.pem\"");
    let errs = load(&text, &[]).unwrap_err().0;
    let all = errs.join("\n");
    for needle in [
        "server.api-addr",
        "retention.max",
        "unknown class ipaddr",
        "unknown purpose marketing",
        "unknown caller ghost",
        "tls.min-version",
        "tls.ca",
    ] {
        assert!(all.contains(needle), "missing {needle} in:\n{all}");
    }
    assert!(errs.len() >= 7);
}

#[test]
fn connection_deadlines_and_limits_are_bounded() {
    let text = EXAMPLE
        .replace("idle-timeout-ms = 60000", "idle-timeout-ms = 0")
        .replace("handshake-timeout-ms = 5000", "handshake-timeout-ms = 0")
        .replace("max-connections = 4096", "max-connections = 0")
        .replace(
            "max-streams-per-connection = 32",
            "max-streams-per-connection = 0",
        );
    let all = load(&text, &[]).unwrap_err().to_string();
    for key in [
        "server.idle-timeout-ms",
        "server.handshake-timeout-ms",
        "server.max-connections",
        "server.max-streams-per-connection",
    ] {
        assert!(all.contains(key), "missing {key} in:\n{all}");
    }
    let cfg = load(EXAMPLE, &[("VAULT__SERVER__IDLE_TIMEOUT_MS", "250")]).unwrap();
    assert_eq!(cfg.server.idle_timeout_ms, 250);
}

#[test]
fn the_body_deadline_is_within_the_request_deadline() {
    let cfg = load(EXAMPLE, &[]).unwrap();
    assert_eq!(cfg.server.body_timeout_ms(), 5_000);
    for bad in ["0", "10001"] {
        let text = EXAMPLE.replace(
            "body-timeout-ms = 5000",
            &format!("body-timeout-ms = {bad}"),
        );
        let all = load(&text, &[]).unwrap_err().to_string();
        assert!(all.contains("server.body-timeout-ms"), "{bad}: {all}");
    }
    // Unset, it is the default unless the request deadline is shorter.
    let unset = EXAMPLE.replace("body-timeout-ms = 5000\n", "");
    assert_eq!(load(&unset, &[]).unwrap().server.body_timeout_ms(), 5_000);
    let short = load(&unset, &[("VAULT__SERVER__REQUEST_TIMEOUT_MS", "2000")]).unwrap();
    assert_eq!(short.server.body_timeout_ms(), 2_000);
}

#[test]
fn legal_exceptions_cannot_be_granted() {
    let text = format!(
        "{EXAMPLE}\n[[grants]]\ncaller = \"app\"\npurpose = \"criminal_investigation\"\nfull = [\"name\"]\n"
    );
    let all = load(&text, &[]).unwrap_err().to_string();
    assert!(all.contains("only by approval"), "{all}");
}

#[test]
fn the_officers_listener_is_optional_and_must_be_an_address() {
    assert!(load(EXAMPLE, &[]).unwrap().server.officer_addr.is_none());
    let with = |addr: &str| {
        EXAMPLE.replace(
            "# officer-addr = \"127.0.0.1:8444\"",
            &format!("officer-addr = \"{addr}\""),
        )
    };
    let cfg = load(&with("127.0.0.1:8444"), &[]).unwrap();
    assert_eq!(cfg.server.officer_addr.as_deref(), Some("127.0.0.1:8444"));
    let err = load(&with("localhost"), &[]).unwrap_err().to_string();
    assert!(err.contains("server.officer-addr"), "{err}");
    let err = load(&with("127.0.0.1:8443"), &[]).unwrap_err().to_string();
    assert!(err.contains("must differ from api-addr"), "{err}");
}

#[test]
fn a_master_key_variable_cannot_be_an_override_or_hold_an_equals_sign() {
    let with = |name: &str| {
        EXAMPLE
            .replace("master-key-file = \"master.key\"", "")
            .replace(
                "# master-key-env = \"VAULT_MASTER_KEY\"",
                &format!("master-key-env = \"{name}\""),
            )
    };
    assert!(load(&with("VAULT_MASTER_KEY"), &[]).is_ok());
    for bad in ["VAULT__KEYS__ROOT", "A=B", ""] {
        let err = load(&with(bad), &[]).unwrap_err().to_string();
        assert!(err.contains("keys.master-key-env"), "{bad:?}: {err}");
    }
}

#[test]
fn key_source_must_be_exactly_one() {
    let text = EXAMPLE.replace(
        "# master-key-env = \"VAULT_MASTER_KEY\"",
        "master-key-env = \"VAULT_MASTER_KEY\"",
    );
    assert!(load(&text, &[])
        .unwrap_err()
        .to_string()
        .contains("exactly one of"));
    let shares = EXAMPLE.replace(
        "master-key-file = \"master.key\"",
        "unseal-with-shares = true",
    );
    assert!(load(&shares, &[]).is_ok());
    let none = EXAMPLE.replace("master-key-file = \"master.key\"", "");
    assert!(load(&none, &[])
        .unwrap_err()
        .to_string()
        .contains("exactly one of"));
    let bad = EXAMPLE
        .replace(
            "master-key-file = \"master.key\"",
            "master-key-command = []\nauto-rotate-period = \"often\"",
        )
        .replace("rewrap-batch = 1024", "rewrap-batch = 0")
        .replace("subject-key-cache = 65536", "subject-key-cache = 20000000");
    let all = load(&bad, &[]).unwrap_err().to_string();
    for want in [
        "master-key-command",
        "auto-rotate-period",
        "rewrap-batch",
        "subject-key-cache",
    ] {
        assert!(all.contains(want), "{want}: {all}");
    }
}

#[test]
fn bad_toml_is_reported() {
    assert!(load("[server", &[])
        .unwrap_err()
        .to_string()
        .contains("TOML"));
}

/// The names the vault writes into the audit log for its own work are not
/// callers' names.
#[test]
fn callers_cannot_take_the_vaults_own_names() {
    for name in ["vault", "operator"] {
        let text = EXAMPLE.replacen("name = \"app\"", &format!("name = \"{name}\""), 1);
        let errs = load(&text, &[]).unwrap_err();
        assert!(
            errs.0.iter().any(|e| e.contains("the vault's own")),
            "{name}: {errs:?}"
        );
    }
}

/// A grant to an officer would be plaintext without dual control, and a
/// collection under the subject's own request collects nothing: both are
/// problems the check names.
#[test]
fn grants_to_officers_and_collections_for_subject_requests_are_problems() {
    let mut cfg = load(EXAMPLE, &[]).unwrap();
    let mut g = cfg
        .grants
        .iter()
        .find(|g| g.purpose == "respond_to_request")
        .unwrap()
        .clone();
    g.caller = "officer".into();
    cfg.grants.push(g);
    cfg.grants
        .iter_mut()
        .find(|g| g.purpose == "data_subject_request")
        .unwrap()
        .collect = vec!["phone".into()];
    let found = policy::problems(&cfg);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("nothing is collected"), "{found:?}");
    assert!(found[1].contains("is an officer"), "{found:?}");
}

#[test]
fn the_shred_log_may_not_take_a_name_the_database_uses() {
    for bad in [
        "CURRENT",
        "000123.log",
        "MANIFEST-000004",
        "LOG",
        "LOCK",
        ".",
        "tls",
        "tls/ca.pem",
        "master.key",
        "nowhere/shred.log",
    ] {
        let text = EXAMPLE.replace(
            "shred-log = \"shred.log\"",
            &format!("shred-log = \"{bad}\""),
        );
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("server.shred-log"), "{bad}: {err}");
    }
    // Outside the database's directory, any name.
    let text = EXAMPLE.replace("shred-log = \"shred.log\"", "shred-log = \"tls/CURRENT\"");
    assert!(load(&text, &[]).is_ok());
    // Unset: valid, with a warning.
    let text = EXAMPLE.replace("shred-log = \"shred.log\"", "");
    let w = load(&text, &[]).unwrap().warnings();
    assert!(
        w.iter().any(|w| w.contains("server.shred-log is not set")),
        "{w:?}"
    );
}
