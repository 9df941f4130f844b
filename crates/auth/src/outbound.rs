//! The one request the authorisation server makes on a client's behalf: fetching a client's JWK set from
//! its registered `jwks_uri`. A URL anyone may register is a way into the server's network (SSRF), so the
//! fetch is fenced:
//!
//! - apps that registered themselves (RFC 7591) may only use `https` URLs whose host resolves to public
//!   addresses; the check is made on the addresses actually connected to (a resolver that drops the
//!   others), so a name that resolves differently later (DNS rebinding) gains nothing;
//! - apps an administrator registered may also use private networks, and loopback only when this server
//!   itself runs on loopback (development); link-local addresses (cloud metadata services) never;
//! - no redirects, a short timeout, a size cap, and one generic error whatever went wrong: the caller
//!   learns nothing about what answered (or did not). The reason goes to the log.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The most a JWK set may weigh.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(3);

/// Which addresses an outbound fetch may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// Private (RFC 1918, unique-local) addresses.
    pub private: bool,
    /// Loopback addresses.
    pub loopback: bool,
}

impl Reach {
    /// Public addresses only.
    pub const PUBLIC: Reach = Reach { private: false, loopback: false };

    /// Whether `ip` may be reached.
    pub fn allows(self, ip: IpAddr) -> bool {
        match classify(ip) {
            Class::Public => true,
            Class::Private => self.private,
            Class::Loopback => self.loopback,
            Class::Never => false,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Public,
    Private,
    Loopback,
    /// Link-local (cloud metadata services), unspecified, multicast, broadcast, reserved, documentation.
    Never,
}

fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Class::Loopback
            } else if v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
            {
                Class::Never
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                Class::Private
            } else {
                Class::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Class::Loopback
            } else if v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xffc0) == 0xfe80
                || seg[0] == 0x2001 && seg[1] == 0x0db8
                || seg[0] == 0x0064 && seg[1] == 0xff9b
                || seg[0] == 0
            {
                // Link-local, documentation, NAT64 (reaches IPv4 addresses of any class), and the rest of
                // ::/16 (IPv4-compatible and other reserved forms).
                Class::Never
            } else if (seg[0] & 0xfe00) == 0xfc00 {
                Class::Private
            } else {
                Class::Public
            }
        }
    }
}

/// A resolver that hands the connector only the addresses `reach` allows.
struct Fenced(Reach);

impl Resolve for Fenced {
    fn resolve(&self, name: Name) -> Resolving {
        let reach = self.0;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.into_iter().filter(|a| reach.allows(a.ip())).collect();
            if allowed.is_empty() {
                return Err("the host resolves to no address this server may reach".into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// HTTP clients for client-supplied URLs, one per [`Reach`].
pub struct Fetcher {
    public: reqwest::Client,
    private: reqwest::Client,
    with_loopback: reqwest::Client,
}

fn client(reach: Reach) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(Fenced(reach)))
        .build()
}

/// A fetched JWK set and how long (seconds) its `Cache-Control` lets it be kept.
pub struct Fetched {
    /// The JWK Set.
    pub jwks: serde_json::Value,
    /// Seconds it may be kept.
    pub max_age: i64,
}

impl Fetcher {
    /// A fetcher with the time limits and address rules above.
    pub fn new() -> Result<Fetcher, reqwest::Error> {
        Ok(Fetcher {
            public: client(Reach::PUBLIC)?,
            private: client(Reach { private: true, loopback: false })?,
            with_loopback: client(Reach { private: true, loopback: true })?,
        })
    }

    /// Fetches a JWK set from `url` within `reach`; the error is for the log only.
    pub async fn jwks(&self, url: &str, reach: Reach, https_only: bool) -> Result<Fetched, String> {
        let parsed = url::Url::parse(url).map_err(|_| "not a URL".to_string())?;
        match parsed.scheme() {
            "https" => {}
            "http" if !https_only => {}
            other => return Err(format!("scheme {other} is not allowed")),
        }
        // An address written in the URL never goes through the resolver: judge it here.
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err("no host".into()),
        };
        if let Some(ip) = literal
            && !reach.allows(ip)
        {
            return Err(format!("address {ip} is not reachable for this client"));
        }
        let http = match (reach.private, reach.loopback) {
            (_, true) => &self.with_loopback,
            (true, false) => &self.private,
            (false, false) => &self.public,
        };
        let mut response = http.get(parsed).header("accept", "application/json").send().await.map_err(|e| format!("fetch failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
            return Err("too large".into());
        }
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.contains("no-store") && !v.contains("no-cache"))
            .and_then(|v| v.split(',').find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<i64>().ok()))
            .unwrap_or(0)
            .clamp(0, 3600);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("read failed: {e}"))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        let jwks: serde_json::Value = serde_json::from_slice(&body).map_err(|_| "not JSON".to_string())?;
        if !jwks["keys"].is_array() {
            return Err("not a JWK set".into());
        }
        Ok(Fetched { jwks, max_age })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_classified() {
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(Reach::PUBLIC.allows(ip(public)), "{public}");
        }
        for never in ["169.254.169.254", "0.0.0.0", "255.255.255.255", "224.0.0.1", "fe80::1", "::", "64:ff9b::7f00:1", "::127.0.0.1"] {
            assert!(!Reach { private: true, loopback: true }.allows(ip(never)), "{never}");
        }
        for private in ["10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "fd00::1"] {
            assert!(!Reach::PUBLIC.allows(ip(private)), "{private}");
            assert!(Reach { private: true, loopback: false }.allows(ip(private)), "{private}");
        }
        for lo in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(!Reach { private: true, loopback: false }.allows(ip(lo)), "{lo}");
            assert!(Reach { private: true, loopback: true }.allows(ip(lo)), "{lo}");
        }
    }
}
