//! Sender authentication (DESIGN §11): SPF, DKIM, DMARC and ARC verdicts for every message,
//! computed by mail-auth (Stalwart's library) before the SMTP reply.
//!
//! mail-auth resolves DNS with hickory's `TokioResolver`, so its futures need a tokio reactor
//! and timer. The node runs on smol and has no tokio runtime of its own: this module owns a
//! small one ([`DNS_THREADS`] worker threads, named `mxnode-auth`) and spawns every check onto
//! it; the smol side only awaits the join handles. Nothing else runs on that runtime.
//!
//! Timing: SPF needs only the envelope, so the SMTP driver starts it at `MAIL FROM`
//! ([`Authenticator::start_spf`]). DKIM, ARC and DMARC need the header section: as soon as it
//! is in, the driver asks for every signature's key and the `From:` domain's DMARC records
//! ([`Authenticator::prefetch`]), which warms the resolver's cache while the body is still
//! arriving; the checks themselves run at the end of data ([`Authenticator::verify`]),
//! alongside the MIME parse, and find their answers cached. Each stage has `auth.timeout`, SPF
//! counted from `MAIL FROM`, the rest from the end of data, so the reply waits at most
//! `auth.timeout` for authentication after the last byte. A stage that runs out of time reports
//! `temperror`: a dead resolver costs the timeout, never a hang.
//!
//! Privacy: this module logs result counts and timings only, never a domain, selector or
//! address (DESIGN invariant 6).

pub mod spf_void;
pub mod stamp;
pub mod verdict;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::{Alignment, Policy};
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, DkimOutput, DkimResult, MessageAuthenticator, Parameters,
    SpfOutput, SpfResult,
};

use crate::config::AuthConfig;
use verdict::{ArcVerdict, DkimVerdict, DmarcVerdict, SpfVerdict};
pub use verdict::{AuthVerdict, Enforcement};

/// Worker threads of the authentication runtime: the work is mostly waiting on DNS; the CPU
/// part (body hashes, signature checks) is small next to the MIME parse beside it.
pub const DNS_THREADS: usize = 2;
/// Answers kept in the resolver's cache (each for its TTL): SPF includes, DKIM keys and DMARC
/// records of the domains that send to this node repeat constantly.
pub const DNS_CACHE_ENTRIES: u64 = 4096;
/// Longest time an answer stays cached, whatever its TTL says.
pub const DNS_MAX_TTL: Duration = Duration::from_secs(3600);
/// Most DKIM and ARC keys asked for ahead of the end of data, per message: a header section
/// with more signatures than this gets the rest looked up at the end of data.
pub const PREFETCH_MAX_KEYS: usize = 8;

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth: cannot start the DNS runtime: {0}")]
    Runtime(std::io::Error),
    #[error("auth: cannot build the DNS resolver: {0}")]
    Resolver(String),
}

/// The node's sender authenticator: the resolver, its runtime and what every check needs.
pub struct Authenticator {
    runtime: tokio::runtime::Runtime,
    resolver: MessageAuthenticator,
    /// `node.hostname`: SPF's `%{r}` and the authserv-id of `Authentication-Results`.
    hostname: Arc<str>,
    timeout: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the runtime and the resolver: `auth.resolvers`, or the system's
    /// `/etc/resolv.conf` without them. A system without a readable resolver configuration
    /// still gets an authenticator, whose lookups all fail (`temperror`): mail keeps flowing.
    pub fn new(config: &AuthConfig, hostname: &str) -> Result<Authenticator, AuthSetupError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(DNS_THREADS)
            .thread_name("mxnode-auth")
            .enable_all()
            .build()
            .map_err(AuthSetupError::Runtime)?;
        let (resolver_config, mut options) = match &config.resolvers {
            Some(addrs) => (resolver_config(addrs), ResolverOpts::default()),
            None => match mail_auth::hickory_resolver::system_conf::read_system_conf() {
                Ok(system) => system,
                Err(e) => {
                    log::warn!(
                        "auth: no system resolver configuration ({e}); every lookup will be \
                         a temperror until auth.resolvers is set"
                    );
                    (
                        ResolverConfig::from_name_servers(Vec::new()),
                        ResolverOpts::default(),
                    )
                }
            },
        };
        // One attempt per server within the message's budget; the stage deadlines below are
        // what bounds the wait, this only keeps a single query from outliving them.
        options.timeout = config.timeout;
        options.attempts = 1;
        options.cache_size = DNS_CACHE_ENTRIES;
        options.positive_max_ttl = Some(DNS_MAX_TTL);
        options.negative_max_ttl = Some(DNS_MAX_TTL);
        // Local names from /etc/hosts are no authority on anyone's mail policy.
        options.use_hosts_file = mail_auth::hickory_resolver::config::ResolveHosts::Never;
        let resolver = {
            let _entered = runtime.enter();
            MessageAuthenticator::new(resolver_config, options)
                .map_err(|e| AuthSetupError::Resolver(e.to_string()))?
        };
        Ok(Authenticator {
            runtime,
            resolver,
            hostname: hostname.into(),
            timeout: config.timeout,
        })
    }

    /// `node.hostname`, the authserv-id of our `Authentication-Results`.
    pub fn hostname(&self) -> Arc<str> {
        self.hostname.clone()
    }

    /// `auth.timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Starts the SPF check of a transaction's envelope now (at `MAIL FROM`): `mail_from`'s
    /// domain, or the `HELO` name for the null sender, against the client's address.
    pub fn start_spf(&self, client: IpAddr, helo: &str, mail_from: &str) -> SpfCheck {
        let deadline = Instant::now() + self.timeout;
        let null_sender = mail_from.is_empty();
        let domain = if null_sender {
            helo.to_string()
        } else {
            mail_from
                .rsplit_once('@')
                .map_or(helo, |(_, domain)| domain)
                .to_string()
        };
        let resolver = self.resolver.clone();
        let hostname = self.hostname.clone();
        let helo_owned = helo.to_string();
        let sender = mail_from.to_string();
        let fallback_domain = domain.clone();
        let task = self.runtime.spawn(async move {
            let params = if sender.is_empty() {
                SpfParameters::verify_ehlo(client, &helo_owned, &hostname)
            } else {
                SpfParameters::verify_mail_from(client, &helo_owned, &hostname, &sender)
            };
            // The evaluation's queries are logged for the void-lookup limit (spf_void.rs).
            let log = spf_void::LookupLog::default();
            let check = async {
                let params = Parameters::new(params)
                    .with_txt_cache(&log)
                    .with_mx_cache(&log)
                    .with_ipv4_cache(&log)
                    .with_ipv6_cache(&log);
                let output = resolver.verify_spf(params).await;
                spf_void::apply_limit(&resolver, output, &log).await
            };
            match tokio::time::timeout_at(deadline.into(), check).await {
                Ok(output) => output,
                Err(_) => SpfOutput::new(fallback_domain).with_result(SpfResult::TempError),
            }
        });
        SpfCheck {
            helo: helo.to_string(),
            mail_from: mail_from.to_string(),
            domain,
            null_sender,
            task,
        }
    }

    /// Starts, without waiting for them, the lookups DKIM, ARC and DMARC will make once the
    /// message is complete: the key of every signature (at most [`PREFETCH_MAX_KEYS`]) and the
    /// DMARC records of the `From:` domain and its organisational domain. Called when the
    /// header section is in; the answers land in the resolver's cache (for their TTL), so the
    /// checks at the end of data find them there and a fast resolver adds no round trip after
    /// the last byte. Each lookup is bounded by `auth.timeout`; its result is dropped.
    pub fn prefetch(&self, header_section: &[u8]) {
        let names = prefetch_names(header_section);
        if names.is_empty() {
            return;
        }
        log::debug!(
            "auth: {} lookup(s) started with the header section",
            names.len()
        );
        for name in names {
            let resolver = self.resolver.clone();
            let timeout = self.timeout;
            self.runtime.spawn(async move {
                let _ = tokio::time::timeout(timeout, resolver.txt_raw_lookup(name)).await;
            });
        }
    }

    /// DKIM, ARC and DMARC of a received message, combined with its SPF check, within
    /// `auth.timeout` from now. The checks start at once (before the returned future is first
    /// polled), so they run while the caller parses the message.
    pub fn verify(
        &self,
        message: Arc<Vec<u8>>,
        spf: SpfCheck,
    ) -> impl std::future::Future<Output = AuthVerdict> + Send + 'static {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let resolver = self.resolver.clone();
        let hostname = self.hostname.clone();
        let spf_domain = spf.domain.clone();
        let null_sender = spf.null_sender;
        let task = self.runtime.spawn(async move {
            let mut spf = spf;
            let spf_output = match (&mut spf.task).await {
                Ok(output) => output,
                // The task cannot panic short of a library bug; report it as a DNS failure.
                Err(_) => SpfOutput::new(spf_domain.clone()).with_result(SpfResult::TempError),
            };
            check_message(
                &resolver,
                &hostname,
                &message,
                spf_output,
                &spf_domain,
                null_sender,
                deadline,
            )
            .await
        });
        let hostname = self.hostname.clone();
        async move {
            let verdict = match task.await {
                Ok(verdict) => verdict,
                Err(e) => {
                    log::error!("auth: verification task failed: {e}");
                    failed_verdict(&hostname)
                }
            };
            log::info!(
                "auth: spf={} dkim={} signature(s), {} passed, dmarc={} arc={} in {} ms",
                verdict.spf.result,
                verdict.dkim.len(),
                verdict.dkim.iter().filter(|d| d.result == "pass").count(),
                verdict.dmarc.result,
                verdict.arc.result,
                started.elapsed().as_millis()
            );
            verdict
        }
    }
}

/// The DKIM signatures and ARC sets mail-auth finds in a message's header section, as
/// `(DKIM-Signatures, ARC-Seals, ARC-Message-Signatures, header fields it could not parse)`:
/// the parsing every received message goes through, without DNS (the fuzz target's entry).
pub fn parse_summary(raw: &[u8]) -> Option<(usize, usize, usize, usize)> {
    let message = AuthenticatedMessage::parse(raw)?;
    Some((
        message.dkim_headers.len(),
        message.as_headers.len(),
        message.ams_headers.len(),
        message.errors.len(),
    ))
}

/// The TXT names [`Authenticator::prefetch`] asks for: `selector._domainkey.domain.` of every
/// DKIM-Signature and ARC-Message-Signature, `_dmarc.` of the `From:` domain and of its
/// organisational domain — the names mail-auth looks up at the end of data.
fn prefetch_names(header_section: &[u8]) -> Vec<String> {
    let Some(message) = AuthenticatedMessage::parse(header_section) else {
        return Vec::new();
    };
    let mut names: Vec<String> = message
        .dkim_headers
        .iter()
        .map(|header| (&header.header.s, &header.header.d))
        .chain(
            message
                .ams_headers
                .iter()
                .map(|header| (&header.header.s, &header.header.d)),
        )
        .take(PREFETCH_MAX_KEYS)
        .map(|(selector, domain)| format!("{selector}._domainkey.{domain}."))
        .collect();
    if let Some(domain) = message
        .from
        .first()
        .and_then(|from| from.rsplit_once('@'))
        .map(|(_, domain)| domain.to_ascii_lowercase())
    {
        if let Some(organizational) = verdict::organizational_domain(&domain) {
            names.push(format!("_dmarc.{organizational}."));
        }
        names.push(format!("_dmarc.{domain}."));
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// An SPF check under way, started at `MAIL FROM`.
#[derive(Debug)]
pub struct SpfCheck {
    helo: String,
    mail_from: String,
    /// The domain checked: `MAIL FROM`'s, or `HELO` for the null sender.
    domain: String,
    null_sender: bool,
    task: tokio::task::JoinHandle<SpfOutput>,
}

impl SpfCheck {
    /// Whether this check is for that envelope (a new `MAIL FROM` needs a new check).
    pub fn is_for(&self, helo: &str, mail_from: &str) -> bool {
        self.helo == helo && self.mail_from == mail_from
    }
}

impl Drop for SpfCheck {
    fn drop(&mut self) {
        // An abandoned transaction (RSET, QUIT) stops its lookups; a finished one is unaffected.
        self.task.abort();
    }
}

/// The SMTP driver's bookkeeping: the SPF check of the transaction open now, started as soon
/// as `MAIL FROM` is accepted and handed to delivery at the end of data, and the lookups
/// started as soon as the message's header section is in.
#[derive(Debug, Default)]
pub struct SpfTracker {
    current: Option<SpfCheck>,
    /// The header section of the message being received has been handed to
    /// [`Authenticator::prefetch`].
    prefetched: bool,
}

impl SpfTracker {
    /// Called after every batch of input: starts a check for a newly opened transaction.
    pub fn observe(
        &mut self,
        auth: &Authenticator,
        client: Option<IpAddr>,
        sender: Option<(&str, &str)>,
    ) {
        let (Some(client), Some((helo, mail_from))) = (client, sender) else {
            return;
        };
        if !self
            .current
            .as_ref()
            .is_some_and(|c| c.is_for(helo, mail_from))
        {
            self.current = Some(auth.start_spf(client, helo, mail_from));
        }
    }

    /// The check for the transaction that just ended, started now if its `MAIL FROM` and end
    /// of data arrived in one batch of input.
    pub fn take_for(
        &mut self,
        auth: &Authenticator,
        client: IpAddr,
        helo: &str,
        mail_from: &str,
    ) -> SpfCheck {
        match self.current.take() {
            Some(check) if check.is_for(helo, mail_from) => check,
            _ => auth.start_spf(client, helo, mail_from),
        }
    }

    /// Called after every batch of input with the header section of the message being
    /// received (None before it is complete and outside the data phase): hands it to
    /// [`Authenticator::prefetch`] once per message.
    pub fn observe_header(&mut self, auth: &Authenticator, header_section: Option<&[u8]>) {
        match header_section {
            Some(header) if !self.prefetched => {
                self.prefetched = true;
                auth.prefetch(header);
            }
            Some(_) => {}
            None => self.prefetched = false,
        }
    }
}

/// Resolver configuration for `auth.resolvers`: UDP, falling back to TCP for truncated answers.
fn resolver_config(addrs: &[SocketAddr]) -> ResolverConfig {
    let servers = addrs
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    ResolverConfig::from_name_servers(servers)
}

/// The checks after end of data, on the authentication runtime.
async fn check_message(
    resolver: &MessageAuthenticator,
    hostname: &str,
    raw: &[u8],
    spf_output: SpfOutput,
    spf_domain: &str,
    null_sender: bool,
    deadline: Instant,
) -> AuthVerdict {
    let spf = SpfVerdict {
        result: verdict::spf_word(spf_output.result()),
        domain: spf_domain.to_string(),
    };
    let Some(message) = AuthenticatedMessage::parse(raw) else {
        // No header section at all: nothing is signed, there is no From: for DMARC.
        let dmarc = DmarcVerdict {
            result: "none",
            domain: None,
            policy: None,
        };
        let arc = ArcVerdict { result: "none" };
        let header = verdict::header_value(hostname, &spf, null_sender, &[], &dmarc, &arc);
        return AuthVerdict {
            spf,
            dkim: Vec::new(),
            dmarc,
            arc,
            header,
            reject_applies: false,
        };
    };
    let deadline = tokio::time::Instant::from(deadline);
    let (dkim_output, arc_output) = tokio::join!(
        tokio::time::timeout_at(deadline, resolver.verify_dkim(&message)),
        tokio::time::timeout_at(deadline, resolver.verify_arc(&message)),
    );
    let dkim_output: Vec<DkimOutput<'_>> = match dkim_output {
        Ok(output) => output,
        // Out of time: every signature is a temperror (none when unsigned).
        Err(_) => message
            .dkim_headers
            .iter()
            .map(|header| {
                DkimOutput::temp_err(mail_auth::Error::Dns(mail_auth::DnsError::Resolver(
                    "timeout".into(),
                )))
                .with_signature(&header.header)
            })
            .collect(),
    };
    let arc_output = arc_output.unwrap_or_else(|_| {
        let has_chain = !message.as_headers.is_empty() || !message.ams_headers.is_empty();
        let result = if has_chain {
            DkimResult::TempError(mail_auth::Error::Dns(mail_auth::DnsError::Resolver(
                "timeout".into(),
            )))
        } else {
            DkimResult::None
        };
        ArcOutput::default().with_result(result)
    });
    let dmarc_output = tokio::time::timeout_at(
        deadline,
        resolver.verify_dmarc(DmarcParameters::new(
            &message,
            &dkim_output,
            spf_domain,
            &spf_output,
        )),
    )
    .await;
    let from_domain = message
        .from
        .first()
        .and_then(|from| from.rsplit_once('@'))
        .map(|(_, domain)| domain.to_ascii_lowercase());
    let (dmarc, reject_applies) = match dmarc_output {
        Ok(output) => {
            let record = output.dmarc_record();
            // mail-auth finds the record and the policy that applies (the DNS tree walk); the
            // alignment that decides pass or fail is ours, on the Public Suffix List (RFC 7489
            // §3.2) rather than the library's tree walk (ARCHITECTURE.md, "DMARC alignment").
            let result = match record {
                Some(record) => verdict::dmarc_by_alignment(
                    output.domain(),
                    (spf_domain, spf_check(spf_output.result())),
                    record.aspf == Alignment::Strict,
                    &dkim_identifiers(&dkim_output),
                    record.adkim == Alignment::Strict,
                ),
                None => verdict::dmarc_word(&output.result()),
            };
            let policy = record.and_then(|_| verdict::policy_word(output.policy()));
            let domain = (!output.domain().is_empty()).then(|| output.domain().to_string());
            let reject_applies = result == "fail"
                && output.policy() == Policy::Reject
                && sampled(resolver, output.domain(), deadline).await;
            (
                DmarcVerdict {
                    result,
                    domain,
                    policy,
                },
                reject_applies,
            )
        }
        Err(_) => (
            DmarcVerdict {
                result: "temperror",
                domain: from_domain,
                policy: None,
            },
            false,
        ),
    };
    // One entry per DKIM-Signature; one that does not even parse has no d= or s= to report.
    let dkim: Vec<DkimVerdict> = dkim_output
        .iter()
        .map(|output| match output.signature() {
            Some(signature) => DkimVerdict {
                result: verdict::dkim_word(output.result()),
                domain: signature.d.clone(),
                selector: signature.s.clone(),
                body_length: (signature.l > 0).then_some(signature.l),
            },
            None => DkimVerdict {
                result: "permerror",
                domain: String::new(),
                selector: String::new(),
                body_length: None,
            },
        })
        .collect();
    let arc = ArcVerdict {
        result: verdict::arc_word(arc_output.result()),
    };
    let header = verdict::header_value(hostname, &spf, null_sender, &dkim, &dmarc, &arc);
    AuthVerdict {
        spf,
        dkim,
        dmarc,
        arc,
        header,
        reject_applies,
    }
}

/// What SPF's result means for DMARC.
fn spf_check(result: SpfResult) -> verdict::Check {
    match result {
        SpfResult::Pass => verdict::Check::Pass,
        SpfResult::TempError => verdict::Check::TempError,
        _ => verdict::Check::NotPass,
    }
}

/// The `d=` of every DKIM signature with what its result means for DMARC.
fn dkim_identifiers<'a>(outputs: &'a [DkimOutput<'_>]) -> Vec<(&'a str, verdict::Check)> {
    outputs
        .iter()
        .filter_map(|output| {
            let check = match output.result() {
                DkimResult::Pass => verdict::Check::Pass,
                DkimResult::TempError(_) => verdict::Check::TempError,
                _ => verdict::Check::NotPass,
            };
            Some((output.signature()?.d.as_str(), check))
        })
        .collect()
}

/// RFC 7489 §6.6.4: with `pct=` below 100, `p=reject` applies to that share of failing mail
/// only; the rest is treated as `p=quarantine`. The record is read again (from the resolver's
/// cache: DMARC has just fetched it), first at the `From:` domain, then up its tree.
async fn sampled(
    resolver: &MessageAuthenticator,
    domain: &str,
    deadline: tokio::time::Instant,
) -> bool {
    for name in verdict::dmarc_candidates(domain) {
        let lookup = resolver.txt_raw_lookup(format!("_dmarc.{name}."));
        let Ok(Ok(bytes)) = tokio::time::timeout_at(deadline, lookup).await else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        if verdict::is_dmarc_record(&text) {
            let pct = verdict::dmarc_pct(&text);
            return pct >= 100 || random_percent() < pct;
        }
    }
    true
}

/// A uniformly random number below 100 (ring's system generator).
fn random_percent() -> u8 {
    use ring::rand::SecureRandom as _;
    let mut byte = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut byte).is_err() {
        return 0;
    }
    (u32::from_le_bytes(byte) % 100) as u8
}

/// The verdict when the verification itself failed (a panic in the library): every check a
/// temperror, so enforcing routes defer and reporting routes deliver.
fn failed_verdict(hostname: &str) -> AuthVerdict {
    let spf = SpfVerdict {
        result: "temperror",
        domain: String::new(),
    };
    let dmarc = DmarcVerdict {
        result: "temperror",
        domain: None,
        policy: None,
    };
    let arc = ArcVerdict { result: "none" };
    let header = verdict::header_value(hostname, &spf, false, &[], &dmarc, &arc);
    AuthVerdict {
        spf,
        dkim: Vec::new(),
        dmarc,
        arc,
        header,
        reject_applies: false,
    }
}

#[cfg(test)]
mod tests {
    //! The published examples verify through the same library calls and result mapping the
    //! node uses, with their keys served from a cache instead of DNS (the resolver is given no
    //! server, so any lookup would fail the test).

    use std::borrow::Borrow;
    use std::collections::HashMap;
    use std::hash::Hash;

    use mail_auth::common::parse::TxtRecordParser as _;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::{ResolverCache, Txt};

    use super::*;

    /// DKIM keys by name, as the DNS would serve them.
    struct Keys(HashMap<Box<str>, Txt>);

    impl ResolverCache<Box<str>, Txt> for Keys {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.get(name).cloned()
        }

        fn remove<Q>(&self, _: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            None
        }

        fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
    }

    /// The DKIM words for `message` (LF line ends in the file, CRLF on the wire).
    fn dkim_words(message: &str, keys: &[(&str, &str)]) -> Vec<(&'static str, String, String)> {
        let keys = Keys(
            keys.iter()
                .map(|(name, record)| {
                    let key = DomainKey::parse(record.as_bytes()).expect("the key record parses");
                    (Box::from(*name), Txt::from(key))
                })
                .collect(),
        );
        let raw = message.replace('\n', "\r\n");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let resolver = MessageAuthenticator::new(
                ResolverConfig::from_name_servers(Vec::new()),
                ResolverOpts::default(),
            )
            .expect("resolver");
            let message = AuthenticatedMessage::parse(raw.as_bytes()).expect("message parses");
            let outputs = resolver
                .verify_dkim(Parameters::new(&message).with_txt_cache(&keys))
                .await;
            outputs
                .iter()
                .map(|o| {
                    let s = o.signature().expect("a signature");
                    (verdict::dkim_word(o.result()), s.d.clone(), s.s.clone())
                })
                .collect()
        })
    }

    #[test]
    fn rfc8463_appendix_a_ed25519_and_rsa_signatures_verify() {
        let words = dkim_words(
            include_str!("testdata/rfc8463-appendix-a.eml"),
            &[
                (
                    "brisbane._domainkey.football.example.com.",
                    "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
                ),
                (
                    "test._domainkey.football.example.com.",
                    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3\
                     idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+\
                     yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB",
                ),
            ],
        );
        let expect = |s: &str| ("pass", "football.example.com".to_string(), s.to_string());
        assert_eq!(words, [expect("brisbane"), expect("test")]);
    }

    #[test]
    fn rfc6376_appendix_a_message_verifies_with_its_key() {
        // The message and `newengland` key of RFC 6376 Appendix A (the signature as re-made
        // with the Appendix's private key in mail-auth's test vectors).
        let key = "v=DKIM1; p=MIGJAoGBALVI635dLK4cJJAH3Lx6upo3X/Lm1tQz3mezcWTA3BUBnyIsdnRf57aD5BtN\
                   mhPrYYDlWlzw3UgnKisIxktkk5+iMQMlFtAS10JB8L3YadXNJY+JBcbeSi5TgJe4WFzNgW95FWDAuSTR\
                   XSWZfA/8xjflbTLDx0euFZOM7C4T0GwLAgMBAAE=";
        let message = include_str!("testdata/rfc6376-appendix-a.eml");
        let words = dkim_words(message, &[("newengland._domainkey.example.com.", key)]);
        assert_eq!(
            words,
            [("pass", "example.com".to_string(), "newengland".to_string())]
        );
        // One changed body byte and the same signature fails.
        let altered = message.replace("We lost the game.", "We won the game.");
        let words = dkim_words(&altered, &[("newengland._domainkey.example.com.", key)]);
        assert_eq!(words[0].0, "fail");
    }
}
