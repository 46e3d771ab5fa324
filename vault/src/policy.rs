//! Who may do what: callers and their roles, purposes, and the grants that
//! say which classes a caller may collect for a purpose and how much of each
//! class it gets back (`full`, `masked` or `none`). Invariant: anything not
//! granted is denied; a lookup never fails open.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use crate::classes::Class;
use crate::config::Config;
use crate::retention::parse_duration;

/// The eight legal exceptions of PIPL Art. 13 as purposes: they release data
/// only under a live officer approval, never by grant alone.
pub const LEGAL_EXCEPTIONS: [&str; 8] = [
    "national_security",
    "public_safety_health",
    "criminal_investigation",
    "vital_interests",
    "self_disclosed",
    "lawfully_disclosed",
    "legal_obligation",
    "site_rights",
];

/// The purpose of the subject-rights endpoints; never a detokenize purpose.
pub const DATA_SUBJECT_REQUEST: &str = "data_subject_request";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    App,
    Officer,
}

/// How much of a value a grant releases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Release {
    #[default]
    None,
    Masked,
    Full,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurposeInfo {
    pub requires_consent: bool,
    pub legal_exception: bool,
    /// Oldest privacy-policy version whose consent still counts.
    pub consent_since: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Grant {
    collect: [bool; 11],
    release: [Release; 11],
}

fn slot(class: Class) -> usize {
    usize::from(class.tag().saturating_sub(1))
}

/// Retention rules, parsed.
#[derive(Clone, Debug)]
pub struct RetentionRules {
    pub max: Duration,
    pub after_account_closed: Duration,
    from_collection: HashMap<Class, Duration>,
    legal_minimum: HashMap<Class, Duration>,
}

impl RetentionRules {
    /// The collection-clock retention of `class`, if its clock starts then.
    pub fn from_collection(&self, class: Class) -> Option<Duration> {
        self.from_collection.get(&class).copied()
    }

    /// How long the law requires `class` to be kept after collection.
    pub fn legal_minimum(&self, class: Class) -> Option<Duration> {
        self.legal_minimum.get(&class).copied()
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    callers: HashMap<String, Role>,
    purposes: HashMap<String, PurposeInfo>,
    grants: HashMap<String, HashMap<String, Grant>>,
    pub retention: RetentionRules,
}

impl Policy {
    /// Compiles the policy of a configuration that [`problems`] found clean.
    pub fn from_config(cfg: &Config) -> Policy {
        let callers = cfg
            .callers
            .iter()
            .map(|c| (c.name.clone(), c.role))
            .collect();
        let mut purposes: HashMap<String, PurposeInfo> = cfg
            .purposes
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    PurposeInfo {
                        requires_consent: p.requires_consent,
                        legal_exception: false,
                        consent_since: p.consent_since.clone(),
                    },
                )
            })
            .collect();
        for name in LEGAL_EXCEPTIONS {
            purposes.insert(
                name.to_string(),
                PurposeInfo {
                    requires_consent: false,
                    legal_exception: true,
                    consent_since: None,
                },
            );
        }
        purposes
            .entry(DATA_SUBJECT_REQUEST.to_string())
            .or_insert(PurposeInfo {
                requires_consent: false,
                legal_exception: false,
                consent_since: None,
            });
        let mut grants: HashMap<String, HashMap<String, Grant>> = HashMap::new();
        for g in &cfg.grants {
            let mut grant = Grant::default();
            for c in classes(&g.collect) {
                if let Some(x) = grant.collect.get_mut(slot(c)) {
                    *x = true;
                }
            }
            // `*` first, then the classes named: a class named in one list
            // gets that list's level whatever `*` says in the other, so
            // `full = ["*"], masked = ["phone"]` masks the phone, as it reads.
            let lists = [(&g.masked, Release::Masked), (&g.full, Release::Full)];
            for (list, level) in lists {
                if list.iter().any(|c| c == "*") {
                    for x in grant.release.iter_mut() {
                        *x = (*x).max(level);
                    }
                }
            }
            let mut named = [false; 11];
            for (list, level) in lists {
                for c in list.iter().filter_map(|c| Class::parse(c)) {
                    if let (Some(x), Some(n)) =
                        (grant.release.get_mut(slot(c)), named.get_mut(slot(c)))
                    {
                        // Named in both (a problem `check-config` reports):
                        // the lower level.
                        *x = if *n { (*x).min(level) } else { level };
                        *n = true;
                    }
                }
            }
            grants
                .entry(g.caller.clone())
                .or_default()
                .insert(g.purpose.clone(), grant);
        }
        let r = &cfg.retention;
        let retention = RetentionRules {
            max: parse_duration(&r.max).unwrap_or_default(),
            after_account_closed: parse_duration(&r.after_account_closed).unwrap_or_default(),
            from_collection: r
                .from_collection
                .iter()
                .filter_map(|(c, d)| Some((Class::parse(c)?, parse_duration(d).ok()?)))
                .collect(),
            legal_minimum: r
                .legal_minimum
                .iter()
                .filter_map(|(c, d)| Some((Class::parse(c)?, parse_duration(d).ok()?)))
                .collect(),
        };
        Policy {
            callers,
            purposes,
            grants,
            retention,
        }
    }

    pub fn role(&self, caller: &str) -> Option<Role> {
        self.callers.get(caller).copied()
    }

    pub fn purpose(&self, name: &str) -> Option<&PurposeInfo> {
        self.purposes.get(name)
    }

    fn grant(&self, caller: &str, purpose: &str) -> Option<&Grant> {
        self.grants.get(caller)?.get(purpose)
    }

    pub fn may_collect(&self, caller: &str, purpose: &str, class: Class) -> bool {
        self.grant(caller, purpose)
            .and_then(|g| g.collect.get(slot(class)).copied())
            .unwrap_or(false)
    }

    pub fn release(&self, caller: &str, purpose: &str, class: Class) -> Release {
        self.grant(caller, purpose)
            .and_then(|g| g.release.get(slot(class)).copied())
            .unwrap_or(Release::None)
    }

    /// Whether `caller` could ever get anything back for `purpose`.
    pub fn may_release_any(&self, caller: &str, purpose: &str) -> bool {
        self.grant(caller, purpose)
            .is_some_and(|g| g.release.iter().any(|r| *r != Release::None))
    }
}

/// Class names of a grant list; `*` means every class.
fn classes(list: &[String]) -> Vec<Class> {
    if list.iter().any(|c| c == "*") {
        return Class::ALL.to_vec();
    }
    list.iter().filter_map(|c| Class::parse(c)).collect()
}

pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Every policy problem of `cfg`, each naming where it is.
pub fn problems(cfg: &Config) -> Vec<String> {
    let mut p = Vec::new();
    let mut seen = HashMap::new();
    let mut officers = HashSet::new();
    for (i, c) in cfg.callers.iter().enumerate() {
        if c.role == Role::Officer {
            officers.insert(c.name.as_str());
        }
        if !valid_name(&c.name) {
            p.push(format!(
                "callers[{i}].name: must be 1-128 of [A-Za-z0-9._:-]"
            ));
        }
        if seen.insert(c.name.as_str(), i).is_some() {
            p.push(format!(
                "callers[{i}].name: caller {} is listed twice",
                c.name
            ));
        }
    }
    for name in cfg.purposes.keys() {
        if !valid_name(name) {
            p.push(format!("purposes.{name}: must be 1-128 of [A-Za-z0-9._:-]"));
        }
        if LEGAL_EXCEPTIONS.contains(&name.as_str()) {
            p.push(format!("purposes.{name}: legal-exception purposes are built in and released only by approval"));
        }
    }
    let mut pairs = HashMap::new();
    for (i, g) in cfg.grants.iter().enumerate() {
        if !seen.contains_key(g.caller.as_str()) {
            p.push(format!("grants[{i}].caller: unknown caller {}", g.caller));
        }
        // An officer's way to plaintext is a legal exception under another
        // officer's approval: a grant would be one without dual control.
        if officers.contains(g.caller.as_str()) {
            p.push(format!(
                "grants[{i}].caller: {} is an officer; officers release only under a legal exception another officer approves, never by grant",
                g.caller
            ));
        }
        if g.purpose == DATA_SUBJECT_REQUEST && !g.collect.is_empty() {
            p.push(format!(
                "grants[{i}].collect: nothing is collected under {DATA_SUBJECT_REQUEST}"
            ));
        }
        let known = cfg.purposes.contains_key(&g.purpose) || g.purpose == DATA_SUBJECT_REQUEST;
        if !known {
            p.push(format!(
                "grants[{i}].purpose: unknown purpose {}",
                g.purpose
            ));
        }
        if LEGAL_EXCEPTIONS.contains(&g.purpose.as_str()) {
            p.push(format!(
                "grants[{i}].purpose: {} is released only by approval, not by grant",
                g.purpose
            ));
        }
        if pairs
            .insert((g.caller.as_str(), g.purpose.as_str()), i)
            .is_some()
        {
            p.push(format!(
                "grants[{i}]: a second grant for caller {} and purpose {}",
                g.caller, g.purpose
            ));
        }
        for (field, list) in [
            ("collect", &g.collect),
            ("full", &g.full),
            ("masked", &g.masked),
        ] {
            for c in list {
                if c != "*" && Class::parse(c).is_none() {
                    p.push(format!("grants[{i}].{field}: unknown class {c}"));
                }
            }
        }
        for c in &g.full {
            if g.masked.contains(c) {
                p.push(format!("grants[{i}]: class {c} is both full and masked"));
            }
        }
    }
    p
}
