//! Retries with exponential backoff and jitter for retryable provider
//! errors (429, 5xx, timeouts), honouring the provider's `Retry-After`.

use std::future::Future;
use std::time::Duration;

use crate::provider::ProviderError;

/// Attempts per call, the first included.
pub const ATTEMPTS: u32 = 5;
/// First backoff.
const BASE: Duration = Duration::from_millis(250);
/// Longest single wait.
const CAP: Duration = Duration::from_secs(30);

/// Calls `f` until it succeeds, fails for good, or runs out of attempts.
///
/// # Errors
/// The last error.
pub async fn with_retries<T, F, Fut>(mut f: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Err(ProviderError::Retryable {
                retry_after,
                message,
            }) if attempt < ATTEMPTS => {
                let backoff = BASE.saturating_mul(1 << (attempt - 1)).min(CAP);
                let wait = retry_after
                    .unwrap_or_else(|| backoff + jitter(backoff))
                    .min(CAP);
                tracing_note(&message, attempt, wait);
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// [`with_retries`] bounded by time rather than attempts: retryable errors
/// are retried with the same backoff (`Retry-After` honoured) until `limit`
/// has passed since the first call. For calls that are safe to repeat
/// identically and worth waiting for, such as a Crabbox coordinator's
/// idempotent create, which Crabbox repeats for up to 90 s.
///
/// # Errors
/// The last error.
pub async fn with_retries_within<T, F, Fut>(limit: Duration, mut f: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let started = tokio::time::Instant::now();
    let mut attempt: u32 = 0;
    loop {
        attempt = attempt.saturating_add(1);
        match f().await {
            Err(ProviderError::Retryable {
                retry_after,
                message,
            }) if started.elapsed() < limit => {
                let backoff = BASE.saturating_mul(1 << (attempt - 1).min(16)).min(CAP);
                let wait = retry_after
                    .unwrap_or_else(|| backoff + jitter(backoff))
                    .min(CAP)
                    .min(limit.saturating_sub(started.elapsed()));
                tracing_note(&message, attempt, wait);
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Up to half of `d`, random.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    d.mul_f64(f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0)
}

fn tracing_note(message: &str, attempt: u32, wait: Duration) {
    if std::env::var_os("CRABBOX_DEBUG").is_some() {
        eprintln!("retrying after {wait:?} (attempt {attempt} of {ATTEMPTS}): {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_only() {
        let calls = AtomicU32::new(0);
        let r = with_retries(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(ProviderError::Retryable {
                    message: "429".into(),
                    retry_after: Some(Duration::from_secs(1)),
                })
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_retries(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(ProviderError::Failed("boom".into()))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_retries(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(ProviderError::Retryable {
                message: "503".into(),
                retry_after: None,
            })
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);
    }
}
