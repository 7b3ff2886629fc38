//! Where a request may go: the URL rules every outbound client shares (`https://`, and plain
//! `http://` only to a loopback host), an S3 endpoint's base URL, and the [`Origin`] a
//! connection pool is keyed by.
//!
//! Owns parsing and judging URLs. Never resolves a name or opens a socket.

use std::net::IpAddr;

use http::Uri;

use super::NetError;

/// Accepts `https://host[:port]/…`, and `http://` only to a loopback host (development and
/// tests on one machine; nothing crosses a network in the clear).
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|_| "is not a valid URL".to_string())?;
    let host = uri
        .host()
        .ok_or_else(|| "needs a host, e.g. https://hooks.example/email".to_string())?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback_host(host) => Ok(()),
        Some("http") => {
            Err("must use https:// (http:// is allowed only to a loopback address)".into())
        }
        _ => Err("must start with https://".into()),
    }
}

/// Splits an endpoint URL into scheme and authority. The endpoint names a server, not a place
/// on it: no user info, no path other than `/`, no query.
pub fn parse_endpoint(endpoint: &str) -> Result<(String, String), String> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|_| "is not a valid URL".to_string())?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("https" | "http")) => s.to_string(),
        _ => return Err("must start with https://".into()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "needs a host, e.g. https://s3.example:9000".to_string())?;
    if authority.as_str().contains('@') {
        return Err("must not contain user info; use access_key_id".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must be the server's base URL, without a path or query".into());
    }
    Ok((scheme, authority.as_str().to_ascii_lowercase()))
}

/// Whether `host` (a name, an IPv4 address or a bracketed IPv6 address) is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Scheme, host and port of a request: what a connection is made to and pooled under (each
/// client has one trust store, so within a client this is the whole key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    /// `https` (else plain `http`, to loopback only).
    pub tls: bool,
    /// Lower-case host name or IP address, without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The origin of an absolute URI, refusing what [`check_url`] refuses.
    pub fn of(uri: &Uri) -> Result<Origin, NetError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(NetError::Request("the URL must start with https://".into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| NetError::Request("the URL has no host".into()))?;
        if !tls && !is_loopback_host(host) {
            return Err(NetError::Request(
                "plain http:// is allowed only to a loopback address".into(),
            ));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Origin { tls, host, port })
    }

    /// `host:port` as a socket address string (IPv6 in brackets).
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.host_port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_endpoint(endpoint: &str, expect: Result<(&str, &str), ()>) {
        let got = parse_endpoint(endpoint);
        match expect {
            Ok((scheme, authority)) => assert_eq!(
                got,
                Ok((scheme.to_string(), authority.to_string())),
                "{endpoint}"
            ),
            Err(()) => assert!(got.is_err(), "{endpoint} should be refused: {got:?}"),
        }
    }

    #[test]
    fn endpoints_are_base_urls() {
        check_endpoint("https://s3.example.test", Ok(("https", "s3.example.test")));
        check_endpoint(
            "https://s3.example.test:9000/",
            Ok(("https", "s3.example.test:9000")),
        );
        check_endpoint("http://127.0.0.1:9000", Ok(("http", "127.0.0.1:9000")));
        check_endpoint("https://s3.example.test/bucket", Err(()));
        check_endpoint("https://s3.example.test/?x=1", Err(()));
        check_endpoint("https://user:pw@s3.example.test", Err(()));
        check_endpoint("ftp://s3.example.test", Err(()));
        check_endpoint("s3.example.test", Err(()));
    }

    fn origin(url: &str) -> Result<String, ()> {
        let uri: Uri = url.parse().map_err(|_| ())?;
        Origin::of(&uri).map(|o| o.to_string()).map_err(|_| ())
    }

    #[test]
    fn origins_carry_default_ports_and_refuse_plain_http_off_loopback() {
        assert_eq!(
            origin("https://Hooks.Example.test/x"),
            Ok("https://hooks.example.test:443".into())
        );
        assert_eq!(
            origin("http://127.0.0.1:8080/x"),
            Ok("http://127.0.0.1:8080".into())
        );
        assert_eq!(origin("http://[::1]/x"), Ok("http://[::1]:80".into()));
        assert_eq!(
            origin("https://[2001:db8::1]:8443/"),
            Ok("https://[2001:db8::1]:8443".into())
        );
        assert_eq!(origin("http://10.0.0.1/x"), Err(()));
        assert_eq!(origin("ftp://example.test/"), Err(()));
        assert_eq!(origin("/relative"), Err(()));
    }
}
