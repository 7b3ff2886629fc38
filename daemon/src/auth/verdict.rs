//! The contract's words for sender authentication (DESIGN §4 `auth`, §11): the verdict of one
//! message, the mapping from mail-auth's results to RFC 8601's lower-case names, the
//! `Authentication-Results` value, and what an enforcing route does with a verdict.
//!
//! Pure: no DNS, no clock, no I/O. Every value that reaches the header is reduced to characters
//! that cannot end or fold a header line, because the header is also written into the stored
//! message (`raw_to_s3`).

use mail_auth::dmarc::Policy;
use mail_auth::{DkimResult, DmarcResult, SpfResult};
use serde::Serialize;

/// The payload's `auth` object. Field order is the contract's (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthVerdict {
    pub spf: SpfVerdict,
    /// One entry per DKIM-Signature, in header order; `[]` when unsigned.
    pub dkim: Vec<DkimVerdict>,
    pub dmarc: DmarcVerdict,
    pub arc: ArcVerdict,
    /// The `Authentication-Results` value, authserv-id first.
    pub header: String,
    /// Whether an enforcing route refuses this message under its DMARC policy: `p=reject`
    /// applied (after `pct=` sampling, RFC 7489 §6.6.4). Not part of the payload.
    #[serde(skip)]
    pub reject_applies: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpfVerdict {
    /// `pass|fail|softfail|neutral|none|temperror|permerror`.
    pub result: &'static str,
    /// The `MAIL FROM` domain, or the `HELO` name for the null sender.
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DkimVerdict {
    /// `pass|fail|neutral|none|temperror|permerror|policy`.
    pub result: &'static str,
    /// `d=` of the signature.
    pub domain: String,
    /// `s=` of the signature.
    pub selector: String,
    /// `l=` of the signature, when it signs only part of the body (an extension of DESIGN §4:
    /// a receiver should know that text after this many body bytes is not covered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_length: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DmarcVerdict {
    /// `pass|fail|none|temperror|permerror`.
    pub result: &'static str,
    /// The `From:` domain; `null` when the message has none (or several).
    pub domain: Option<String>,
    /// The policy the domain publishes for this `From:` (`p=`, or `sp=` for a subdomain):
    /// `none|quarantine|reject`; `null` without a record.
    pub policy: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArcVerdict {
    /// `pass|fail|none`.
    pub result: &'static str,
}

/// The results of one message as words only, without domains or selectors: what metrics count
/// and the metadata record keeps (DMARC's, DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Results {
    pub spf: &'static str,
    pub dkim: Vec<&'static str>,
    pub dmarc: &'static str,
    pub arc: &'static str,
}

/// What an enforcing route does with a message (DESIGN §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    Deliver,
    /// DMARC `fail` under `p=reject`: `550 5.7.1`, nothing delivered.
    Reject,
    /// DMARC `temperror`: `451 4.7.5`, the sender retries.
    TempFail,
}

impl AuthVerdict {
    /// The words of this verdict.
    pub fn results(&self) -> Results {
        Results {
            spf: self.spf.result,
            dkim: self.dkim.iter().map(|d| d.result).collect(),
            dmarc: self.dmarc.result,
            arc: self.arc.result,
        }
    }

    /// The decision of a route with `dmarc = "enforce"`.
    pub fn enforcement(&self) -> Enforcement {
        match self.dmarc.result {
            "fail" if self.reject_applies => Enforcement::Reject,
            "temperror" => Enforcement::TempFail,
            _ => Enforcement::Deliver,
        }
    }
}

pub fn spf_word(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// DKIM words (RFC 8601 §2.7.1). mail-auth reports some verification failures as `neutral`:
/// a body hash that does not match is RFC 6376's PERMFAIL "body hash did not verify", `fail`
/// here; an expired signature is acceptable neither way, `policy`. Every other `neutral` (an
/// unsupported algorithm or version, a signature header that does not parse) stays `neutral`.
pub fn dkim_word(result: &DkimResult) -> &'static str {
    use mail_auth::dkim::DkimError;
    match result {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch)) => "fail",
        DkimResult::Neutral(mail_auth::Error::Dkim(DkimError::SignatureExpired)) => "policy",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

pub fn dmarc_word(result: &DmarcResult) -> &'static str {
    match result {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

/// ARC's `cv` words (RFC 8617 §4.1.3) are `pass|fail|none`: a chain that could not be
/// validated, for a DNS failure or a broken header, is `fail`.
pub fn arc_word(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "pass",
        DkimResult::None => "none",
        DkimResult::Neutral(_)
        | DkimResult::Fail(_)
        | DkimResult::PermError(_)
        | DkimResult::TempError(_) => "fail",
    }
}

pub fn policy_word(policy: Policy) -> Option<&'static str> {
    match policy {
        Policy::None => Some("none"),
        Policy::Quarantine => Some("quarantine"),
        Policy::Reject => Some("reject"),
        Policy::Unspecified => None,
    }
}

/// The `Authentication-Results` value (RFC 8601 §2.2): the authserv-id, then one resinfo per
/// check. `arc=` appears only when the message carries an ARC chain.
pub fn header_value(
    authserv_id: &str,
    spf: &SpfVerdict,
    null_sender: bool,
    dkim: &[DkimVerdict],
    dmarc: &DmarcVerdict,
    arc: &ArcVerdict,
) -> String {
    let mut out = value(authserv_id);
    out.push_str("; spf=");
    out.push_str(spf.result);
    if !spf.domain.is_empty() {
        out.push_str(if null_sender {
            " smtp.helo="
        } else {
            " smtp.mailfrom="
        });
        out.push_str(&value(&spf.domain));
    }
    if dkim.is_empty() {
        out.push_str("; dkim=none");
    }
    for signature in dkim {
        out.push_str("; dkim=");
        out.push_str(signature.result);
        if !signature.domain.is_empty() {
            out.push_str(" header.d=");
            out.push_str(&value(&signature.domain));
        }
        if !signature.selector.is_empty() {
            out.push_str(" header.s=");
            out.push_str(&value(&signature.selector));
        }
    }
    out.push_str("; dmarc=");
    out.push_str(dmarc.result);
    if let Some(domain) = &dmarc.domain {
        out.push_str(" header.from=");
        out.push_str(&value(domain));
    }
    if arc.result != "none" {
        out.push_str("; arc=");
        out.push_str(arc.result);
    }
    out
}

/// A property value (RFC 8601 §2.2 `pvalue`, RFC 2045 `value`): a token as it is, anything else
/// as a quoted-string. Characters that could end or fold the header (CR, LF, other controls)
/// and non-ASCII are dropped: the domains come from the message and DNS, which the sender
/// controls.
fn value(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect();
    let token = !clean.is_empty()
        && clean
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '@'));
    if token {
        clean
    } else {
        let mut quoted = String::with_capacity(clean.len() + 2);
        quoted.push('"');
        for c in clean.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    }
}

/// The `pct=` of a raw DMARC record (`v=DMARC1; p=reject; pct=50`), 100 when absent or
/// invalid (RFC 7489 §6.3). mail-auth follows DMARCbis, which dropped `pct=`; RFC 7489's
/// sampling is applied here.
pub fn dmarc_pct(record: &str) -> u8 {
    record
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("pct"))
        .and_then(|(_, value)| value.trim().parse::<u8>().ok())
        .filter(|pct| *pct <= 100)
        .unwrap_or(100)
}

/// Whether a raw TXT string is a DMARC record.
pub fn is_dmarc_record(record: &str) -> bool {
    record
        .trim_start()
        .get(..8)
        .is_some_and(|v| v.eq_ignore_ascii_case("v=DMARC1"))
}

/// The names whose `_dmarc` record may apply to `domain`, longest first, as DMARC's tree walk
/// asks them (RFC 9989 §4.10.1; at most eight, never the top-level domain alone).
pub fn dmarc_candidates(domain: &str) -> Vec<String> {
    let labels: Vec<&str> = domain
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .collect();
    (0..labels.len().saturating_sub(1))
        .take(8)
        .map(|skip| labels[skip..].join("."))
        .collect()
}

/// The organisational domain of `domain` (RFC 7489 §3.2): the public suffix from the Public
/// Suffix List plus one label. `None` for a public suffix itself (`co.uk`) or a bare name.
pub fn organizational_domain(domain: &str) -> Option<String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    psl::domain_str(&domain).map(str::to_string)
}

/// Identifier alignment (RFC 7489 §3.1): strict needs the same name, relaxed the same
/// organisational domain. A name that is a public suffix aligns only with itself, so a
/// signature by `co.uk` never speaks for `example.co.uk`.
pub fn aligned(identifier: &str, from: &str, strict: bool) -> bool {
    let identifier = identifier.trim_end_matches('.');
    let from = from.trim_end_matches('.');
    if identifier.eq_ignore_ascii_case(from) {
        return true;
    }
    !strict
        && organizational_domain(identifier)
            .is_some_and(|org| Some(org) == organizational_domain(from))
}

/// What DMARC needs to know about one authenticated identifier (SPF's domain, a DKIM `d=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Pass,
    TempError,
    /// Anything else: it cannot make DMARC pass.
    NotPass,
}

/// The DMARC result of a message whose `From:` domain has a record (RFC 7489 §6.6.2, §3.1 with
/// the organisational domain from the PSL): `pass` when SPF or a DKIM signature passed for an
/// aligned identifier; otherwise `temperror` when an aligned identifier could not be checked;
/// otherwise `fail`.
pub fn dmarc_by_alignment(
    from: &str,
    spf: (&str, Check),
    strict_spf: bool,
    dkim: &[(&str, Check)],
    strict_dkim: bool,
) -> &'static str {
    let spf_aligned = aligned(spf.0, from, strict_spf);
    let dkim_aligned = || dkim.iter().filter(|(d, _)| aligned(d, from, strict_dkim));
    if (spf_aligned && spf.1 == Check::Pass) || dkim_aligned().any(|(_, c)| *c == Check::Pass) {
        "pass"
    } else if (spf_aligned && spf.1 == Check::TempError)
        || dkim_aligned().any(|(_, c)| *c == Check::TempError)
    {
        "temperror"
    } else {
        "fail"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::Error;

    fn verdict(dmarc: &'static str, reject_applies: bool) -> AuthVerdict {
        let spf = SpfVerdict {
            result: "pass",
            domain: "example.org".into(),
        };
        let dkim = vec![DkimVerdict {
            result: "pass",
            domain: "example.org".into(),
            selector: "s1".into(),
            body_length: None,
        }];
        let dmarc = DmarcVerdict {
            result: dmarc,
            domain: Some("example.org".into()),
            policy: Some("reject"),
        };
        let arc = ArcVerdict { result: "none" };
        let header = header_value("mx1.example.test", &spf, false, &dkim, &dmarc, &arc);
        AuthVerdict {
            spf,
            dkim,
            dmarc,
            arc,
            header,
            reject_applies,
        }
    }

    #[test]
    fn library_results_map_to_the_contract_words() {
        let e = || Error::NotAligned;
        let spf: Vec<_> = [
            SpfResult::Pass,
            SpfResult::Fail,
            SpfResult::SoftFail,
            SpfResult::Neutral,
            SpfResult::None,
            SpfResult::TempError,
            SpfResult::PermError,
        ]
        .into_iter()
        .map(spf_word)
        .collect();
        assert_eq!(
            spf,
            [
                "pass",
                "fail",
                "softfail",
                "neutral",
                "none",
                "temperror",
                "permerror"
            ]
        );
        let dkim = [
            DkimResult::Pass,
            DkimResult::Fail(e()),
            DkimResult::Neutral(e()),
            DkimResult::None,
            DkimResult::TempError(e()),
            DkimResult::PermError(e()),
        ];
        assert_eq!(
            dkim.iter().map(dkim_word).collect::<Vec<_>>(),
            ["pass", "fail", "neutral", "none", "temperror", "permerror"]
        );
        use mail_auth::dkim::DkimError;
        let neutral = |e| DkimResult::Neutral(Error::Dkim(e));
        assert_eq!(dkim_word(&neutral(DkimError::FailedBodyHashMatch)), "fail");
        assert_eq!(dkim_word(&neutral(DkimError::SignatureExpired)), "policy");
        assert_eq!(
            dkim_word(&neutral(DkimError::UnsupportedAlgorithm)),
            "neutral"
        );
        assert_eq!(
            dkim.iter().map(arc_word).collect::<Vec<_>>(),
            ["pass", "fail", "fail", "none", "fail", "fail"]
        );
        let dmarc = [
            DmarcResult::Pass,
            DmarcResult::Fail(e()),
            DmarcResult::None,
            DmarcResult::TempError(e()),
            DmarcResult::PermError(e()),
        ];
        assert_eq!(
            dmarc.iter().map(dmarc_word).collect::<Vec<_>>(),
            ["pass", "fail", "none", "temperror", "permerror"]
        );
        assert_eq!(
            [
                Policy::None,
                Policy::Quarantine,
                Policy::Reject,
                Policy::Unspecified
            ]
            .map(policy_word),
            [Some("none"), Some("quarantine"), Some("reject"), None]
        );
    }

    #[test]
    fn header_matches_the_contract_example() {
        assert_eq!(
            verdict("pass", false).header,
            "mx1.example.test; spf=pass smtp.mailfrom=example.org; \
             dkim=pass header.d=example.org header.s=s1; dmarc=pass header.from=example.org"
        );
    }

    #[test]
    fn header_of_an_unsigned_null_sender_with_an_arc_chain() {
        let spf = SpfVerdict {
            result: "none",
            domain: "client.example".into(),
        };
        let dmarc = DmarcVerdict {
            result: "none",
            domain: None,
            policy: None,
        };
        let header = header_value(
            "mx",
            &spf,
            true,
            &[],
            &dmarc,
            &ArcVerdict { result: "pass" },
        );
        assert_eq!(
            header,
            "mx; spf=none smtp.helo=client.example; dkim=none; dmarc=none; arc=pass"
        );
    }

    #[test]
    fn hostile_values_cannot_break_the_header_line() {
        let spf = SpfVerdict {
            result: "fail",
            domain: "a.example;\r\nBcc: x@y".into(),
        };
        let dkim = [DkimVerdict {
            result: "fail",
            domain: "d\"\\é.example".into(),
            selector: "".into(),
            body_length: None,
        }];
        let dmarc = DmarcVerdict {
            result: "none",
            domain: None,
            policy: None,
        };
        let header = header_value(
            "mx",
            &spf,
            false,
            &dkim,
            &dmarc,
            &ArcVerdict { result: "none" },
        );
        assert!(!header.contains('\r') && !header.contains('\n'), "{header}");
        assert_eq!(
            header,
            "mx; spf=fail smtp.mailfrom=\"a.example;Bcc: x@y\"; \
             dkim=fail header.d=\"d\\\"\\\\.example\"; dmarc=none"
        );
    }

    #[test]
    fn enforcement_refuses_only_an_applied_reject_and_defers_temperror() {
        assert_eq!(verdict("fail", true).enforcement(), Enforcement::Reject);
        // p=quarantine, or p=reject not sampled by pct=: delivered with the verdict.
        assert_eq!(verdict("fail", false).enforcement(), Enforcement::Deliver);
        assert_eq!(
            verdict("temperror", false).enforcement(),
            Enforcement::TempFail
        );
        for result in ["pass", "none", "permerror"] {
            assert_eq!(verdict(result, true).enforcement(), Enforcement::Deliver);
        }
    }

    #[test]
    fn relaxed_alignment_uses_the_public_suffix_list() {
        assert_eq!(
            organizational_domain("Mail.Example.co.uk."),
            Some("example.co.uk".into())
        );
        assert_eq!(organizational_domain("co.uk"), None);
        assert_eq!(
            organizational_domain("a.b.origin.test"),
            Some("origin.test".into())
        );
        assert!(aligned("example.co.uk", "mail.example.co.uk", false));
        assert!(aligned("news.example.co.uk", "mail.example.co.uk", false));
        assert!(!aligned("example.co.uk", "mail.example.co.uk", true));
        assert!(aligned("MAIL.example.co.uk", "mail.example.co.uk", true));
        // Across a public suffix: co.uk is nobody's organisation, other.co.uk another one.
        assert!(!aligned("co.uk", "mail.example.co.uk", false));
        assert!(!aligned("other.co.uk", "example.co.uk", false));
        assert!(!aligned("org.uk", "victim.org.uk", false));
    }

    #[test]
    fn dmarc_result_from_aligned_identifiers() {
        use Check::*;
        let from = "mail.example.co.uk";
        let by = |spf, dkim: &[(&str, Check)]| dmarc_by_alignment(from, spf, false, dkim, false);
        assert_eq!(by(("bounce.example.co.uk", Pass), &[]), "pass");
        assert_eq!(by(("other.test", Pass), &[("example.co.uk", Pass)]), "pass");
        assert_eq!(by(("other.test", Pass), &[("co.uk", Pass)]), "fail");
        assert_eq!(
            by(("other.test", NotPass), &[("example.co.uk", NotPass)]),
            "fail"
        );
        assert_eq!(
            by(("other.test", Pass), &[("example.co.uk", TempError)]),
            "temperror"
        );
        assert_eq!(
            by(("example.co.uk", TempError), &[("x.test", Pass)]),
            "temperror"
        );
        // A temperror of an identifier that does not align cannot make DMARC pass: fail.
        assert_eq!(by(("other.test", TempError), &[]), "fail");
        // Strict DKIM alignment: the parent's signature does not count.
        assert_eq!(
            dmarc_by_alignment(
                from,
                ("x.test", Pass),
                false,
                &[("example.co.uk", Pass)],
                true
            ),
            "fail"
        );
    }

    #[test]
    fn pct_and_record_recognition() {
        assert_eq!(dmarc_pct("v=DMARC1; p=reject; pct=0"), 0);
        assert_eq!(dmarc_pct("v=DMARC1; p=reject; PCT = 25 ;"), 25);
        assert_eq!(dmarc_pct("v=DMARC1; p=reject"), 100);
        assert_eq!(dmarc_pct("v=DMARC1; p=reject; pct=101"), 100);
        assert_eq!(dmarc_pct("v=DMARC1; p=reject; pct=x"), 100);
        assert!(is_dmarc_record("v=DMARC1; p=none"));
        assert!(is_dmarc_record("V=dmarc1;p=none"));
        assert!(!is_dmarc_record("v=spf1 -all"));
        assert_eq!(
            dmarc_candidates("a.b.example.org."),
            ["a.b.example.org", "b.example.org", "example.org"]
        );
        assert!(dmarc_candidates("localhost").is_empty());
    }

    #[test]
    fn payload_object_has_the_contract_fields_in_order() {
        let json = serde_json::to_string(&verdict("pass", true)).expect("serialises");
        assert_eq!(
            json,
            r#"{"spf":{"result":"pass","domain":"example.org"},"dkim":[{"result":"pass","domain":"example.org","selector":"s1"}],"dmarc":{"result":"pass","domain":"example.org","policy":"reject"},"arc":{"result":"none"},"header":"mx1.example.test; spf=pass smtp.mailfrom=example.org; dkim=pass header.d=example.org header.s=s1; dmarc=pass header.from=example.org"}"#
        );
    }
}
