//! Readiness checks on this machine: a TCP connect or an HTTP GET to the
//! member's own loopback address (`localhost` in a check means the member).

use super::*;

pub(super) async fn tcp_connects(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

/// `http://host[:port][/path]` split into host, port, request target and `Host` header.
pub(super) fn parse_http_url(url: &str) -> Result<(String, u16, String, String), ProviderError> {
    let bad = |why: &str| ProviderError::Failed(format!("ready check URL `{url}` {why}"));
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(ProviderError::Failed(
            "https ready checks are not supported on local; use tcp".to_owned(),
        ));
    }
    if !lower.starts_with("http://") {
        return Err(bad("must start with http://"));
    }
    let rest = &url["http://".len()..];
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let tail = tail.split('#').next().unwrap_or_default();
    let target = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("has an unterminated IPv6 address"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = match port {
        None | Some("") => 80,
        Some(p) => p.parse().map_err(|_| bad("has an invalid port"))?,
    };
    Ok((host.to_owned(), port, target, authority.to_owned()))
}

/// Whether a ready check's host means "this member" (`localhost`, `127.0.0.1`).
pub(super) fn is_loopback_name(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]")
}

/// One HTTP GET: true on a 2xx or 3xx status (redirects are not
/// followed: answering at all is ready); unreachable or slow is false. A
/// `localhost` URL reaches the member's own loopback address, with the
/// `Host` header the URL names.
pub(super) async fn http_ok(url: &str, own_addr: &str) -> Result<bool, ProviderError> {
    let (host, port, target, host_header) = parse_http_url(url)?;
    let host = if is_loopback_name(&host) {
        own_addr.to_owned()
    } else {
        host
    };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    // One client for every check (a ready check repeats every half second),
    // keeping no idle connections: a connection belongs to the runtime that
    // made it, and tests run many.
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            .user_agent("crabbox")
            .build()
            .unwrap_or_default()
    });
    let response = client
        .get(format!("http://{authority}{target}"))
        .header(reqwest::header::HOST, host_header)
        .send()
        .await;
    Ok(response.is_ok_and(|r| r.status().is_success() || r.status().is_redirection()))
}
