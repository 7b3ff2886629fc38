//! SPF's void-lookup limit (RFC 7208 §4.6.4), enforced around mail-auth's SPF evaluation.
//!
//! mail-auth 0.13 counts DNS mechanisms (the limit of 10) but not void lookups: terms whose
//! query is answered with NXDOMAIN or with no records. It has no hook for it either, so the
//! count is taken from the outside, without evaluating SPF a second time: the evaluation is
//! given [`LookupLog`] as its resolver cache. The library asks a cache before every query and
//! stores every positive answer in it, so the log sees each term's query in order and whether
//! it was answered. The log never answers (every query still goes to the resolver, whose own
//! cache keeps the TTLs).
//!
//! Which queries are terms: the MX query of `mx`, the A/AAAA query of `a`, and `exists`. The
//! address queries of an `mx` term's exchanges and of `ptr`'s names belong to their term and
//! are not counted. `include` and `redirect` targets without an SPF record are already a
//! `permerror` in the library; `ptr` (deprecated, RFC 7208 §5.5) is not counted.
//!
//! Counting after the evaluation gives the same result as stopping at the third void lookup:
//! the library stops at the first match or error, so every query in the log happened before
//! the result was known, and a third void lookup among them means RFC 7208 would have stopped
//! there with `permerror`. The one query that is not a term's answer is the failed query of a
//! `temperror`; it is the last one and is left out.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

use mail_auth::{MX, MessageAuthenticator, RecordSet, ResolverCache, SpfOutput, SpfResult, Txt};

/// RFC 7208 §4.6.4: "SPF implementations SHOULD limit 'void lookups' to two"; the third is a
/// `permerror`.
pub const MAX_VOID_LOOKUPS: usize = 2;

/// The record types whose queries the log sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Txt,
    Mx,
    A,
    Aaaa,
}

/// One call of the library into its cache: a query about to be made, or its positive answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The library asks for `name` (it is about to query the resolver).
    Ask(Kind, String),
    /// The positive answer for `name`: whether it held no record, and the names it points to
    /// (an MX answer's exchanges).
    Answer(Kind, String, bool, Vec<String>),
}

/// How the log classifies a term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Answered,
    Void,
    /// `exists:name`: the library resolves it without storing the answer; asked again
    /// afterwards (from the resolver's cache).
    Exists(String),
}

/// The queries of one SPF evaluation, in order, as the resolver cache it is given.
#[derive(Debug, Default)]
pub struct LookupLog {
    events: Mutex<Vec<Event>>,
}

impl LookupLog {
    fn push(&self, event: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// The name a cache is asked for. The trait hands it over as a generic `Q: Hash` borrowed from
/// `Box<str>`, i.e. a `str`, whose `Hash` writes its bytes followed by `0xff` (a byte that never
/// occurs in UTF-8): this hasher keeps those bytes. `name_capture_reads_str` pins the layout.
#[derive(Default)]
struct NameCapture(Vec<u8>);

impl Hasher for NameCapture {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

fn name_of<Q: Hash + ?Sized>(name: &Q) -> String {
    let mut capture = NameCapture::default();
    name.hash(&mut capture);
    if capture.0.last() == Some(&0xff) {
        capture.0.pop();
    }
    normalise(&String::from_utf8_lossy(&capture.0))
}

/// Names compare without case and without the root's dot.
fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

macro_rules! log_cache {
    ($value:ty, $kind:expr, |$v:ident| $empty:expr, $targets:expr) => {
        impl ResolverCache<Box<str>, $value> for LookupLog {
            fn get<Q>(&self, name: &Q) -> Option<$value>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                self.push(Event::Ask($kind, name_of(name)));
                None
            }

            fn remove<Q>(&self, _: &Q) -> Option<$value>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                None
            }

            fn insert(&self, key: Box<str>, $v: $value, _: Instant) {
                let empty: bool = $empty;
                let targets: Vec<String> = $targets;
                self.push(Event::Answer($kind, normalise(&key), empty, targets));
            }
        }
    };
}

log_cache!(
    Txt,
    Kind::Txt,
    |value| matches!(value, Txt::Error(_)),
    Vec::new()
);
log_cache!(
    RecordSet<MX>,
    Kind::Mx,
    |value| value.rrset.is_empty(),
    value
        .rrset
        .iter()
        .flat_map(|mx| mx.exchanges.iter())
        .map(|name| normalise(name))
        .collect()
);
log_cache!(
    RecordSet<Ipv4Addr>,
    Kind::A,
    |value| value.rrset.is_empty(),
    Vec::new()
);
log_cache!(
    RecordSet<Ipv6Addr>,
    Kind::Aaaa,
    |value| value.rrset.is_empty(),
    Vec::new()
);

/// The terms of an evaluation from its log (pure). `failed`: the evaluation ended in a
/// `temperror`, whose failed query is the last one asked and is no term's answer.
pub fn terms(events: &[Event], failed: bool) -> Vec<Term> {
    let mut terms = Vec::new();
    // The exchanges of MX answers: their address queries are part of the `mx` term.
    let mut exchanges: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let Event::Ask(kind, name) = &events[i] else {
            i += 1;
            continue;
        };
        let answer = match events.get(i + 1) {
            Some(Event::Answer(k, n, empty, targets)) if k == kind && n == name => {
                Some((*empty, targets))
            }
            _ => None,
        };
        let step = if answer.is_some() { 2 } else { 1 };
        match kind {
            // The SPF records themselves: `include`/`redirect` without one is the library's
            // permerror already; the sender's own missing record is SPF `none`.
            Kind::Txt => terms.push(Term::Answered),
            Kind::Mx => {
                if let Some((_, targets)) = answer {
                    exchanges.extend(targets.iter().map(String::as_str));
                }
                terms.push(match answer {
                    Some((false, _)) => Term::Answered,
                    _ => Term::Void,
                });
            }
            Kind::A | Kind::Aaaa if exchanges.contains(&name.as_str()) => {}
            Kind::A | Kind::Aaaa => {
                // `exists` asks the A cache, then the AAAA cache, for one name, and stores
                // nothing; `a` asks only the family of the client's address.
                let exists = *kind == Kind::A
                    && answer.is_none()
                    && matches!(events.get(i + 1), Some(Event::Ask(Kind::Aaaa, n)) if n == name);
                if exists {
                    terms.push(Term::Exists(name.clone()));
                    i += 2;
                    continue;
                }
                terms.push(match answer {
                    Some((false, _)) => Term::Answered,
                    _ => Term::Void,
                });
            }
        }
        i += step;
    }
    if failed {
        terms.pop();
    }
    terms
}

/// `output` with RFC 7208 §4.6.4 applied: `permerror` when its evaluation made more than
/// [`MAX_VOID_LOOKUPS`] void lookups. `exists` terms are asked again; the resolver's cache
/// holds their answers, so this costs no round trip.
pub async fn apply_limit(
    resolver: &MessageAuthenticator,
    output: SpfOutput,
    log: &LookupLog,
) -> SpfOutput {
    if output.result() == SpfResult::PermError {
        return output;
    }
    let terms = terms(&log.events(), output.result() == SpfResult::TempError);
    let mut voids = 0;
    for term in terms {
        voids += match term {
            Term::Answered => 0,
            Term::Void => 1,
            Term::Exists(name) => {
                let found = resolver
                    .exists(format!("{name}."), None::<&LookupLog>, None::<&LookupLog>)
                    .await;
                // A DNS error here is no void answer.
                usize::from(matches!(found, Ok(false)))
            }
        };
        if voids > MAX_VOID_LOOKUPS {
            return output.with_result(SpfResult::PermError);
        }
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(kind: Kind, name: &str) -> Event {
        Event::Ask(kind, name.into())
    }
    fn answer(kind: Kind, name: &str, empty: bool, targets: &[&str]) -> Event {
        Event::Answer(
            kind,
            name.into(),
            empty,
            targets.iter().map(|t| t.to_string()).collect(),
        )
    }

    #[test]
    fn name_capture_reads_str() {
        let cache = LookupLog::default();
        let key: Box<str> = "V1.Example.TEST.".into();
        let _: Option<RecordSet<Ipv4Addr>> = cache.get::<str>(&key);
        assert_eq!(cache.events(), [ask(Kind::A, "v1.example.test")]);
    }

    #[test]
    fn void_answers_of_a_mx_and_exists_are_counted_and_exchanges_are_not() {
        use Kind::*;
        let events = [
            ask(Txt, "void.test"),
            answer(Txt, "void.test", false, &[]),
            // a:v1 with no answer, a:origin with an answer.
            ask(A, "v1.void.test"),
            ask(A, "origin.test"),
            answer(A, "origin.test", false, &[]),
            // mx:m with one exchange that has no address: one answered term.
            ask(Mx, "m.test"),
            answer(Mx, "m.test", false, &["mx1.m.test"]),
            ask(A, "mx1.m.test"),
            // mx:v2 with no MX records.
            ask(Mx, "v2.void.test"),
            // exists:v3 (asked again later).
            ask(A, "v3.void.test"),
            ask(Aaaa, "v3.void.test"),
        ];
        assert_eq!(
            terms(&events, false),
            [
                Term::Answered,
                Term::Void,
                Term::Answered,
                Term::Answered,
                Term::Void,
                Term::Exists("v3.void.test".into()),
            ]
        );
    }

    #[test]
    fn the_failed_query_of_a_temperror_is_not_void() {
        use Kind::*;
        let events = [
            ask(Txt, "t.test"),
            answer(Txt, "t.test", false, &[]),
            ask(A, "v1.t.test"),
            ask(A, "timeout.t.test"),
        ];
        assert_eq!(terms(&events, true), [Term::Answered, Term::Void]);
        // An answer holding no records is void too (RCODE 0, no answers).
        let events = [ask(Aaaa, "x.test"), answer(Aaaa, "x.test", true, &[])];
        assert_eq!(terms(&events, false), [Term::Void]);
    }
}
