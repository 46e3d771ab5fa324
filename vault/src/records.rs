//! JSON Pointers (RFC 6901) over documents for `POST /v1/records`, with one
//! extension: a segment that is exactly `*` matches every element of an
//! array or every member of an object, so one mapping covers a list of
//! co-applicants. Invariant: matching and leaf walks visit each node of the
//! document at most once per pattern and never recurse (serde_json already
//! caps nesting at 128 levels; the walks use explicit stacks anyway), and
//! pointers name structure only, never a leaf's value.

use serde_json::Value;

use crate::classes::Class;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Any,
}

/// A parsed pointer pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(Vec<Segment>);

impl Pattern {
    /// `""` is the whole document; otherwise `/`-separated segments with
    /// `~0` for `~` and `~1` for `/`. Anything else (`a/b`, `/~2`) is `None`.
    pub fn parse(s: &str) -> Option<Pattern> {
        if s.is_empty() {
            return Some(Pattern(Vec::new()));
        }
        let rest = s.strip_prefix('/')?;
        rest.split('/')
            .map(|seg| {
                if seg == "*" {
                    return Some(Segment::Any);
                }
                unescape(seg).map(Segment::Key)
            })
            .collect::<Option<Vec<_>>>()
            .map(Pattern)
    }

    /// Every concrete pointer into `doc` this pattern names, in document
    /// order. Paths that do not exist in `doc` match nothing.
    pub fn matches(&self, doc: &Value) -> Vec<String> {
        self.matches_shown(doc)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// As [`Pattern::matches`], each with the form an error may show: an
    /// object member reached through `*` is named by its position
    /// (`/contacts/[member 1]`), not its name, which is the caller's data
    /// (a document keyed by phone number, say). What the mapping names and
    /// array indexes are structure, and stay.
    pub fn matches_shown(&self, doc: &Value) -> Vec<(String, String)> {
        let mut unbounded = usize::MAX;
        self.matches_within(doc, &mut unbounded)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, p, shown)| (p, shown))
            .collect()
    }

    /// As [`Pattern::matches_shown`], what the walk builds taken from
    /// `budget` (see [`node_cost`]); `None` once it runs out. A mapping is
    /// many patterns, each walking the document on its own: thousands of
    /// `/*/kN` over a long array cost patterns times elements, and every
    /// pointer built copies its parent's (a member name can be most of the
    /// body), so the walks of one request share one budget of bytes.
    /// Each match comes with the node it names, so no caller parses the
    /// pointer again to find it.
    pub fn matches_within<'a>(
        &self,
        doc: &'a Value,
        budget: &mut usize,
    ) -> Option<Vec<(&'a Value, String, String)>> {
        let mut out = Vec::new();
        let mut stack: Vec<(usize, &Value, String, String)> =
            vec![(0, doc, String::new(), String::new())];
        while let Some((depth, node, path, shown)) = stack.pop() {
            let Some(seg) = self.0.get(depth) else {
                out.push((node, path, shown));
                continue;
            };
            let mut children: Vec<(&Value, String, String)> = Vec::new();
            // A `*` costs its children before they are built: each copies
            // both pointers of its parent.
            let fan_out = match (seg, node) {
                (Segment::Any, Value::Array(items)) => items.len(),
                (Segment::Any, Value::Object(map)) => map.len(),
                _ => 0,
            };
            if fan_out.checked_mul(node_cost(path.len() + shown.len()))? > *budget {
                return None;
            }
            match (seg, node) {
                (Segment::Any, Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        children.push((item, format!("{path}/{i}"), format!("{shown}/{i}")));
                    }
                }
                (Segment::Any, Value::Object(map)) => {
                    for (n, (k, item)) in map.iter().enumerate() {
                        children.push((
                            item,
                            format!("{path}/{}", escape(k)),
                            format!("{shown}/[member {n}]"),
                        ));
                    }
                }
                (Segment::Key(k), Value::Object(map)) => {
                    if let Some(item) = map.get(k) {
                        let seg = escape(k);
                        children.push((item, format!("{path}/{seg}"), format!("{shown}/{seg}")));
                    }
                }
                (Segment::Key(k), Value::Array(items)) => {
                    if let Some(item) = array_index(k).and_then(|i| items.get(i)) {
                        children.push((item, format!("{path}/{k}"), format!("{shown}/{k}")));
                    }
                }
                _ => {}
            }
            for (_, p, sh) in &children {
                *budget = budget.checked_sub(node_cost(p.len() + sh.len()))?;
            }
            // Reversed so the stack pops them in document order.
            for (item, p, sh) in children.into_iter().rev() {
                stack.push((depth + 1, item, p, sh));
            }
        }
        Some(out)
    }
}

/// RFC 6901 array index: `0`, or digits without a leading zero.
fn array_index(s: &str) -> Option<usize> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

fn unescape(seg: &str) -> Option<String> {
    let mut out = String::with_capacity(seg.len());
    let mut chars = seg.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// A member name as a pointer segment.
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A mapping compiled: each pattern as written, parsed, and its class.
pub type Mapping = Vec<(String, Pattern, Class)>;

/// Why a mapping does not compile. It names the pointer, which is structure
/// the caller wrote, never a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("mapping {0:?}: not a JSON Pointer such as /applicant/name")]
    Pointer(String),
    #[error("mapping {0:?}: unknown class")]
    Class(String),
}

/// Compiles a mapping of pointer patterns to class names.
pub fn compile(
    mapping: &std::collections::BTreeMap<String, String>,
) -> Result<Mapping, MappingError> {
    mapping
        .iter()
        .map(|(p, c)| {
            let pattern = Pattern::parse(p).ok_or_else(|| MappingError::Pointer(p.clone()))?;
            let class = Class::parse(c).ok_or_else(|| MappingError::Class(p.clone()))?;
            Ok((p.clone(), pattern, class))
        })
        .collect()
}

/// What building one node's pointers of `len` bytes costs a budget: the
/// bytes, and a fixed share for the node's place on the walk.
pub fn node_cost(len: usize) -> usize {
    len.saturating_add(64)
}

/// The pointers of every string leaf of `doc`, in document order.
pub fn string_leaves(doc: &Value) -> Vec<String> {
    let mut unbounded = usize::MAX;
    string_leaves_within(doc, &mut unbounded)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// As [`string_leaves`], each leaf's text with its pointer, each pointer
/// built taken from `budget` (see [`node_cost`]); `None` once it runs out.
pub fn string_leaves_within<'a>(
    doc: &'a Value,
    budget: &mut usize,
) -> Option<Vec<(&'a str, String)>> {
    let mut out = Vec::new();
    let mut stack: Vec<(&Value, String)> = vec![(doc, String::new())];
    while let Some((node, path)) = stack.pop() {
        let fan_out = match node {
            Value::Array(items) => items.len(),
            Value::Object(map) => map.len(),
            _ => 0,
        };
        if fan_out.checked_mul(node_cost(path.len()))? > *budget {
            return None;
        }
        match node {
            Value::String(text) => out.push((text.as_str(), path)),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate().rev() {
                    let p = format!("{path}/{i}");
                    *budget = budget.checked_sub(node_cost(p.len()))?;
                    stack.push((item, p));
                }
            }
            Value::Object(map) => {
                let members: Vec<_> = map.iter().collect();
                for (k, item) in members.into_iter().rev() {
                    let p = format!("{path}/{}", escape(k));
                    *budget = budget.checked_sub(node_cost(p.len()))?;
                    stack.push((item, p));
                }
            }
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "applicant": {"name": "陈明", "phone": "13800138000"},
            "co_applicants": [
                {"name": "林小红", "phone": "13900139000"},
                {"name": "王芳"}
            ],
            "a/b": {"~k": "x"},
            "notes": ["one", 2, null, {"deep": "three"}]
        })
    }

    #[test]
    fn parses_rfc6901_and_star() {
        assert_eq!(Pattern::parse(""), Some(Pattern(vec![])));
        assert_eq!(
            Pattern::parse("/a~1b/~0k"),
            Some(Pattern(vec![
                Segment::Key("a/b".into()),
                Segment::Key("~k".into())
            ]))
        );
        assert_eq!(
            Pattern::parse("/x/*/y"),
            Some(Pattern(vec![
                Segment::Key("x".into()),
                Segment::Any,
                Segment::Key("y".into())
            ]))
        );
        for bad in ["a", "a/b", "/~2", "/x~", "/~"] {
            assert_eq!(Pattern::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn matches_keys_indexes_and_stars_in_document_order() {
        let d = doc();
        let m = |p: &str| Pattern::parse(p).unwrap().matches(&d);
        assert_eq!(m("/applicant/name"), vec!["/applicant/name"]);
        assert_eq!(m("/co_applicants/*/phone"), vec!["/co_applicants/0/phone"]);
        assert_eq!(
            m("/co_applicants/*/name"),
            vec!["/co_applicants/0/name", "/co_applicants/1/name"]
        );
        assert_eq!(m("/co_applicants/1/name"), vec!["/co_applicants/1/name"]);
        assert!(m("/co_applicants/01/name").is_empty());
        assert!(m("/co_applicants/9/name").is_empty());
        assert!(m("/missing/x").is_empty());
        assert_eq!(m("/a~1b/~0k"), vec!["/a~1b/~0k"]);
        assert_eq!(m(""), vec![""]);
        // Every concrete pointer resolves in serde_json itself.
        for p in m("/co_applicants/*/*") {
            assert!(d.pointer(&p).is_some(), "{p}");
        }
    }

    #[test]
    fn the_shown_form_names_members_under_a_star_by_position_only() {
        let d = serde_json::json!({
            "contacts": {"13800138000": 5, "chen@fj.gov.cn": "x"},
            "list": [{"13900000000": 1}],
        });
        let shown = |p: &str| Pattern::parse(p).unwrap().matches_shown(&d);
        assert_eq!(
            shown("/contacts/*"),
            [
                (
                    "/contacts/13800138000".to_string(),
                    "/contacts/[member 0]".to_string()
                ),
                (
                    "/contacts/chen@fj.gov.cn".into(),
                    "/contacts/[member 1]".into()
                ),
            ]
        );
        assert_eq!(
            shown("/list/*/*"),
            [(
                "/list/0/13900000000".to_string(),
                "/list/0/[member 0]".to_string()
            )]
        );
        // Named in the mapping: the caller's own structure, shown as is.
        assert_eq!(shown("/contacts/13800138000")[0].1, "/contacts/13800138000");
    }

    #[test]
    fn string_leaves_are_every_string_in_order() {
        let d = doc();
        let leaves = string_leaves(&d);
        assert_eq!(
            leaves,
            vec![
                "/a~1b/~0k",
                "/applicant/name",
                "/applicant/phone",
                "/co_applicants/0/name",
                "/co_applicants/0/phone",
                "/co_applicants/1/name",
                "/notes/0",
                "/notes/3/deep"
            ]
        );
        for p in &leaves {
            assert!(d.pointer(p).unwrap().is_string());
        }
    }

    #[test]
    fn compile_names_the_bad_pointer() {
        let mut m = std::collections::BTreeMap::new();
        m.insert("/a/*".to_string(), "phone".to_string());
        assert_eq!(compile(&m).unwrap().len(), 1);
        m.insert("nope".to_string(), "phone".to_string());
        assert_eq!(compile(&m), Err(MappingError::Pointer("nope".into())));
        m.remove("nope");
        m.insert("/b".to_string(), "shoe_size".to_string());
        assert_eq!(compile(&m), Err(MappingError::Class("/b".into())));
    }

    #[test]
    fn deep_documents_do_not_recurse() {
        // Deeper than serde_json would parse, built by hand.
        let mut v = Value::String("leaf".into());
        for _ in 0..10_000 {
            v = Value::Array(vec![v]);
        }
        assert_eq!(string_leaves(&v).len(), 1);
        let star = Pattern::parse(&"/*".repeat(10_000)).unwrap();
        assert_eq!(star.matches(&v).len(), 1);
        // Dropping a 10,000-deep Value recurses in serde_json; leak it
        // rather than overflow the test thread's stack.
        std::mem::forget(v);
    }
}
