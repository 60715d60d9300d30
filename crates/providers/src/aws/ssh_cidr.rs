//! The default SSH ingress of an AWS member without `aws.sshCIDRs`: this
//! machine's public IPv4 as a `/32`, found the way Crabbox finds it
//! (`internal/cli/aws_ssh_cidr.go` at 0bba5f7: `GET
//! https://checkip.amazonaws.com`, 5 s, at most 128 bytes of body, trimmed,
//! an IPv4 address only).
//!
//! Where Crabbox then opens SSH to `0.0.0.0/0` (`internal/cli/aws.go:1360`),
//! this fails asking for `aws.sshCIDRs`: a lease must never be open to the
//! world because a lookup failed.

use std::net::IpAddr;
use std::time::Duration;

use crabbox_core::provider::ProviderError;

/// Where the public address is asked (Crabbox's, AWS's own service).
pub const DEFAULT_URL: &str = "https://checkip.amazonaws.com";

/// Replaces [`DEFAULT_URL`] (tests; a proxy that answers for AWS).
pub const URL_ENV: &str = "CRABBOX_AWS_PUBLIC_IP_URL";

/// How long the lookup may take, connection included (Crabbox's).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The most of the answer read (Crabbox's): an address fits many times.
const MAX_BODY: usize = 128;

/// The lookup URL: `override_url` (the value of [`URL_ENV`]) when set and
/// not blank, else [`DEFAULT_URL`].
#[must_use]
pub fn lookup_url(override_url: Option<&str>) -> String {
    override_url
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .unwrap_or(DEFAULT_URL)
        .to_owned()
}

/// The SSH ranges of a member: its own `configured` ones when it has any,
/// else this machine's public IPv4 as a `/32`, asked at [`URL_ENV`]'s URL
/// or [`DEFAULT_URL`].
///
/// # Errors
/// [`ProviderError::Config`] when the address cannot be found, asking for
/// `aws.sshCIDRs`.
pub async fn ssh_cidrs(configured: &[String]) -> Result<Vec<String>, ProviderError> {
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    let url = lookup_url(std::env::var(URL_ENV).ok().as_deref());
    Ok(vec![public_ipv4_cidr(&url).await?])
}

/// This machine's public IPv4 as `a.b.c.d/32`, asked at `url`.
///
/// # Errors
/// [`ProviderError::Config`] when `url` does not answer in [`TIMEOUT`],
/// answers with an error status, or with anything but an IPv4 address
/// (an IPv6 one included: the security group rule takes IPv4 ranges).
pub async fn public_ipv4_cidr(url: &str) -> Result<String, ProviderError> {
    let body = tokio::time::timeout(TIMEOUT, fetch(url))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", TIMEOUT.as_secs())))
        .map_err(|why| not_found(url, &why))?;
    parse(&body).map_err(|why| not_found(url, &why))
}

/// The first [`MAX_BODY`] bytes `url` answers with.
async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("it answered {}", response.status()));
    }
    let mut body = Vec::new();
    while body.len() < MAX_BODY {
        match response.chunk().await.map_err(|e| e.to_string())? {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => break,
        }
    }
    body.truncate(MAX_BODY);
    Ok(body)
}

/// The `/32` of the IPv4 address `body` holds (surrounding whitespace
/// allowed, as `checkip.amazonaws.com` ends it with a newline).
///
/// # Errors
/// Why it is not one.
pub fn parse(body: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => Ok(format!("{v4}/32")),
        Ok(IpAddr::V6(v6)) => Err(format!(
            "it answered the IPv6 address {v6}, and the SSH rule takes IPv4 ranges"
        )),
        Err(_) => {
            let shown: String = text.chars().take(40).collect();
            Err(format!("it answered `{shown}`, which is not an IP address"))
        }
    }
}

fn not_found(url: &str, why: &str) -> ProviderError {
    ProviderError::Config {
        message: format!(
            "aws: could not find this machine's public IPv4 address for the SSH rule at {url}: {why}"
        ),
        hint: "set `aws: { sshCIDRs: [203.0.113.7/32] }` to the ranges allowed to reach SSH; crabbox never opens SSH to 0.0.0.0/0 on its own".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_an_ipv4_address_only() {
        assert_eq!(parse(b"203.0.113.7\n").as_deref(), Ok("203.0.113.7/32"));
        assert_eq!(parse(b"  198.51.100.1 ").as_deref(), Ok("198.51.100.1/32"));
        assert!(parse(b"2001:db8::1\n").unwrap_err().contains("IPv6"));
        assert!(parse(b"<html>").unwrap_err().contains("`<html>`"));
        assert!(parse(b"").is_err());
        assert!(parse(b"203.0.113.7/32").is_err());
    }

    #[test]
    fn the_url_is_overridable_but_not_by_a_blank() {
        assert_eq!(lookup_url(None), DEFAULT_URL);
        assert_eq!(lookup_url(Some("  ")), DEFAULT_URL);
        assert_eq!(
            lookup_url(Some("http://127.0.0.1:9/ip")),
            "http://127.0.0.1:9/ip"
        );
    }

    #[tokio::test]
    async fn configured_ranges_win_without_a_lookup() {
        let mine = vec!["10.0.0.0/8".to_owned()];
        assert_eq!(ssh_cidrs(&mine).await.expect("configured"), mine);
    }
}
