//! Who may talk to the server and what the page may talk to.
//!
//! - `Host`: only the loopback names with the bound port, and names given with `--allow-host`; a
//!   page on another name (DNS rebinding) gets nothing.
//! - CORS on `/models/`: only for the server's own origins and those given with `--cors-origin`,
//!   never `*`, so other sites the user visits cannot read local checkpoints.
//! - Content-Security-Policy on every response: scripts, workers and connections only to the page's
//!   origin, the Hugging Face hub and the origins given with `--connect-src`, so no image byte can
//!   leave the page even if a script misbehaves.

use anyhow::{bail, Result};

/// Where the page downloads hub models from: the hub, its LFS CDNs (`cdn-lfs*.huggingface.co`)
/// and its Xet storage (`*.hf.co`), which the hub's `resolve` URLs redirect to.
pub const HUB_ORIGINS: [&str; 3] = [
    "https://huggingface.co",
    "https://*.huggingface.co",
    "https://*.hf.co",
];

pub struct Policy {
    port: u16,
    /// `--allow-host` names (lowercase), each with the port it was given with, if any.
    allowed_hosts: Vec<(String, Option<u16>)>,
    /// Origins whose pages may read `/models/` (serialized as browsers send them).
    cors_origins: Vec<String>,
    csp: String,
}

impl Policy {
    pub fn new(
        port: u16,
        allow_hosts: &[String],
        cors_origins: &[String],
        connect_src: &[String],
    ) -> Result<Self> {
        let mut allowed_hosts = Vec::new();
        for h in allow_hosts {
            match split_host(h) {
                Some((name, port)) if !name.is_empty() && !name.contains('/') => {
                    allowed_hosts.push((name, port))
                }
                _ => bail!("--allow-host {h}: expected a host name, optionally with :PORT"),
            }
        }
        let mut origins: Vec<String> = ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .map(|h| origin_string("http", h, Some(port)))
            .collect();
        for o in cors_origins {
            origins.push(
                parse_origin(o, false)
                    .map_err(|why| anyhow::anyhow!("--cors-origin {o}: {why}"))?,
            );
        }
        let mut connect = Vec::new();
        for o in connect_src {
            connect.push(
                parse_origin(o, true).map_err(|why| anyhow::anyhow!("--connect-src {o}: {why}"))?,
            );
        }
        Ok(Self {
            port,
            allowed_hosts,
            cors_origins: origins,
            csp: content_security_policy(&connect),
        })
    }

    /// Whether a request with this `Host` header is served.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some((name, port)) = host.and_then(split_host) else {
            return false;
        };
        let loopback = matches!(name.as_str(), "127.0.0.1" | "localhost" | "[::1]");
        if loopback {
            return port.unwrap_or(80) == self.port;
        }
        self.allowed_hosts
            .iter()
            .any(|(n, p)| *n == name && (p.is_none() || *p == port))
    }

    /// Why a request's `Host` was refused, for the response body.
    pub fn host_refusal(&self, host: Option<&str>) -> String {
        format!(
            "gitcap serve refuses Host {}: it answers only for 127.0.0.1:{p}, localhost:{p} and \
             [::1]:{p} (so that a page on another name cannot reach it); start it with \
             --allow-host NAME to serve under another name",
            host.map(|h| format!("{h:?}"))
                .unwrap_or_else(|| "(none)".into()),
            p = self.port
        )
    }

    /// Whether a page of this origin may read `/models/` (CORS).
    pub fn cors_allows(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o == origin)
    }

    pub fn content_security_policy(&self) -> &str {
        &self.csp
    }
}

/// The page's policy. `'wasm-unsafe-eval'` lets it compile WebAssembly (and nothing else);
/// `blob:` workers are how wasm-bindgen-rayon starts the threaded build's pool; images are the
/// user's own, shown from `blob:` URLs.
pub fn content_security_policy(extra_connect: &[String]) -> String {
    let mut connect = vec!["'self'".to_string()];
    connect.extend(HUB_ORIGINS.iter().map(|s| s.to_string()));
    connect.extend(extra_connect.iter().cloned());
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; \
         connect-src {}; img-src 'self' blob: data:; style-src 'self'; object-src 'none'; \
         base-uri 'self'; form-action 'none'",
        connect.join(" ")
    )
}

/// A `Host` header (or `--allow-host` value) as a lowercase name and an optional port.
fn split_host(host: &str) -> Option<(String, Option<u16>)> {
    let host = host.trim().to_ascii_lowercase();
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        (name.to_string(), rest)
    } else {
        match host.rsplit_once(':') {
            Some((n, _)) if n.contains(':') => return None,
            Some((n, _)) => (n.to_string(), &host[n.len()..]),
            None => (host.clone(), ""),
        }
    };
    let port = match port.strip_prefix(':') {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None if port.is_empty() => None,
        None => return None,
    };
    let name = name.trim_end_matches('.').to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c))
    {
        return None;
    }
    Some((name, port))
}

/// `scheme://host[:port]` as browsers serialize an origin: the scheme's default port left out.
fn origin_string(scheme: &str, host: &str, port: Option<u16>) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    match port {
        Some(p) if p != default => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    }
}

/// An `http(s)://host[:port]` origin as browsers serialize it (lowercase, default port left out).
/// With `wildcard`, the host may start with `*.` (a CSP source for a family of hosts).
fn parse_origin(value: &str, wildcard: bool) -> Result<String, &'static str> {
    let v = value.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = v
        .split_once("://")
        .ok_or("expected an origin such as https://models.example.org")?;
    if scheme != "http" && scheme != "https" {
        return Err("only http and https origins");
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err("an origin has no path, query or user name");
    }
    let (wild, rest) = match rest.strip_prefix("*.") {
        Some(r) if wildcard => ("*.", r),
        _ => ("", rest),
    };
    let (name, port) = split_host(rest).ok_or("not a host name with an optional port")?;
    Ok(origin_string(scheme, &format!("{wild}{name}"), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            8080,
            &["Captions.Example".into(), "box:9000".into()],
            &["https://App.Example/".into()],
            &["https://models.example:8443".into()],
        )
        .unwrap()
    }

    #[test]
    fn hosts() {
        let p = policy();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
            "captions.example",
            "captions.example:443",
            "box:9000",
        ] {
            assert!(p.host_allowed(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1",
            "127.0.0.1:8081",
            "localhost:80",
            "box",
            "box:9001",
            "127.0.0.1:8080@evil",
            "",
        ] {
            assert!(!p.host_allowed(Some(bad)), "{bad}");
        }
        assert!(!p.host_allowed(None));
    }

    #[test]
    fn cors_origins() {
        let p = policy();
        assert!(p.cors_allows("http://127.0.0.1:8080"));
        assert!(p.cors_allows("http://localhost:8080"));
        assert!(p.cors_allows("https://app.example"));
        assert!(!p.cors_allows("https://evil.example"));
        assert!(!p.cors_allows("http://127.0.0.1:9999"));
        assert!(!p.cors_allows("null"));
    }

    #[test]
    fn origins_are_checked() {
        assert_eq!(
            parse_origin("HTTPS://X.Example:443/", false).unwrap(),
            "https://x.example"
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:9000", false).unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            parse_origin("https://*.cdn.example", true).unwrap(),
            "https://*.cdn.example"
        );
        for bad in [
            "*",
            "x.example",
            "ftp://x.example",
            "https://x.example/path",
            "https://x.example; script-src *",
            "https://*.x.example",
        ] {
            assert!(parse_origin(bad, false).is_err(), "{bad}");
        }
        assert!(parse_origin("https://x.example 'unsafe-inline'", true).is_err());
        assert!(Policy::new(80, &[], &["*".into()], &[]).is_err());
        assert!(Policy::new(80, &["a/b".into()], &[], &[]).is_err());
    }

    #[test]
    fn csp_connects_only_to_the_page_the_hub_and_named_origins() {
        let csp = policy().content_security_policy().to_string();
        let connect = csp
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix("connect-src "))
            .unwrap();
        assert_eq!(
            connect.split(' ').collect::<Vec<_>>(),
            [
                "'self'",
                "https://huggingface.co",
                "https://*.huggingface.co",
                "https://*.hf.co",
                "https://models.example:8443"
            ]
        );
        assert!(csp.contains("script-src 'self' 'wasm-unsafe-eval';"));
        assert!(!csp.contains("unsafe-inline"));
    }
}
