//! The PostgreSQL state backend: claims of label-less providers and pond
//! locks in a database that every runner reaches, so a pond applied on one
//! machine can be destroyed from another.
//!
//! Chosen by `CRABBOX_STATE_URL` (a `postgres://` or `postgresql://` URL), or
//! by the spec's `state:` block when that variable is not set; the command
//! line decides once per command and builds one [`Database`] (inside a
//! [`crate::claims::ClaimStore`]) that it passes down.
//!
//! The client is `tokio-postgres`: every call is a future on the caller's
//! runtime, so a slow database never holds a tokio worker. The connection is
//! made on first use (its connection task spawned on that runtime), remade
//! once when it breaks, and the schema is created or migrated then, under an
//! advisory lock so concurrent first runs do not race. A connection belongs
//! to the runtime that spawned it, which is why a `Database` is built per
//! command and never cached for the whole process.

use crabbox_core::state_url::redact;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// The environment variable naming the state database.
pub const URL_ENV: &str = "CRABBOX_STATE_URL";

/// Schema migrations, applied in order; the version is the count applied.
const MIGRATIONS: &[&str] = &[
    // 1: claims and pond locks.
    "CREATE TABLE IF NOT EXISTS crabbox_claims (
         lease_id   text PRIMARY KEY,
         pond       text NOT NULL DEFAULT '',
         provider   text NOT NULL DEFAULT '',
         revision   text NOT NULL,
         body       jsonb NOT NULL,
         updated_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE INDEX IF NOT EXISTS crabbox_claims_pond ON crabbox_claims (pond);
     CREATE TABLE IF NOT EXISTS crabbox_locks (
         pond       text PRIMARY KEY,
         holder     jsonb NOT NULL,
         token      text NOT NULL,
         expires_at timestamptz NOT NULL
     );",
];

/// Key of the advisory lock held while the schema is created or migrated
/// (`crabbox` in ASCII).
const MIGRATION_LOCK: i64 = 0x0063_7261_6262_6f78;

/// Longest one call (connecting included) may take before it is an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Connect timeout unless the URL sets one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A state-database failure, already phrased for people (no password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StateError(pub String);

impl From<StateError> for std::io::Error {
    fn from(e: StateError) -> Self {
        std::io::Error::other(e.0)
    }
}

/// Claim-write compare-and-swap conflicts seen by this process (for tests
/// and diagnostics).
static CONFLICTS: AtomicU64 = AtomicU64::new(0);

/// How many claim writes found the claim changed under them (and retried).
#[must_use]
pub fn conflicts() -> u64 {
    CONFLICTS.load(Ordering::Relaxed)
}

pub(crate) fn count_conflict() {
    CONFLICTS.fetch_add(1, Ordering::Relaxed);
}

/// One state database as one command uses it: its URL, its connection
/// (made on first use), and the claim bodies read through it, by revision
/// (the base of a merge when a write finds the claim changed).
pub struct Database {
    url: String,
    /// The connected client, shared by concurrent calls (tokio-postgres
    /// pipelines them); `None` until the first call or after it broke.
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    seen: Mutex<HashMap<String, Vec<(String, serde_json::Value)>>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &redact(&self.url))
            .finish_non_exhaustive()
    }
}

/// Revisions remembered per claim.
const SEEN_PER_CLAIM: usize = 8;

impl Database {
    /// The database at `url`; nothing is connected until the first call.
    #[must_use]
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            client: tokio::sync::Mutex::new(None),
            seen: Mutex::default(),
        }
    }

    /// The URL without its password.
    #[must_use]
    pub fn display_url(&self) -> String {
        redact(&self.url)
    }

    /// The connected client: the one made earlier while it is open, else a
    /// new connection with the schema ready. Concurrent first calls wait
    /// for one connection rather than each making its own.
    async fn client(&self) -> Result<Arc<Client>, StateError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        *slot = None;
        let client = Arc::new(self.connect().await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forgets `broken` so that the next call connects again (unless another
    /// call already replaced it).
    async fn forget(&self, broken: &Arc<Client>) {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            *slot = None;
        }
    }

    async fn connect(&self) -> Result<Client, StateError> {
        let shown = redact(&self.url);
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| StateError(format!("the state URL {shown} cannot be used: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(Duration::from_secs(30));
        let (mut client, connection) = config.connect(NoTls).await.map_err(|e| {
            StateError(format!(
                "cannot connect to the state database {shown}: {}; check that it is running and reachable, and the URL",
                describe(&e)
            ))
        })?;
        // The connection ends with its client (or its runtime); an error
        // there surfaces as a closed client at the next call.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // Migrating needs a transaction, which needs the client to itself:
        // done before the client is shared.
        migrate(&mut client).await.map_err(|e| {
            StateError(format!(
                "cannot prepare the schema of the state database {shown}: {e}"
            ))
        })?;
        Ok(client)
    }

    /// Runs `f` with the connection, at most [`CALL_TIMEOUT`] in all; a
    /// broken connection is remade and `f` run once more.
    ///
    /// # Errors
    /// Connection, migration and query errors, and the timeout.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, StateError>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let attempts = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let client = self.client().await?;
                match f(client.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) if attempt == 1 && (e.is_closed() || client.is_closed()) => {
                        self.forget(&client).await;
                    }
                    Err(e) => {
                        return Err(StateError(format!(
                            "state database {}: {}",
                            self.display_url(),
                            describe(&e)
                        )));
                    }
                }
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, attempts)
            .await
            .unwrap_or_else(|_| {
                Err(StateError(format!(
                    "the state database {} did not answer within {}s; check that it is reachable and not overloaded",
                    self.display_url(),
                    CALL_TIMEOUT.as_secs()
                )))
            })
    }

    pub(crate) fn remember(&self, lease_id: &str, revision: &str, body: &serde_json::Value) {
        if revision.is_empty() {
            return;
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let versions = seen.entry(lease_id.to_owned()).or_default();
        if versions.iter().any(|(r, _)| r == revision) {
            return;
        }
        if versions.len() >= SEEN_PER_CLAIM {
            versions.remove(0);
        }
        versions.push((revision.to_owned(), body.clone()));
    }

    pub(crate) fn remembered(&self, lease_id: &str, revision: &str) -> Option<serde_json::Value> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(lease_id)?
            .iter()
            .find(|(r, _)| r == revision)
            .map(|(_, v)| v.clone())
    }

    // ---- claims ----

    /// Every claim row: (lease ID, revision, body as text), by lease ID.
    pub(crate) async fn claim_rows(&self) -> Result<Vec<(String, String, String)>, StateError> {
        self.call(|c| async move {
            Ok(c.query(
                "SELECT lease_id, revision, body::text FROM crabbox_claims ORDER BY lease_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
        })
        .await
    }

    /// One claim row: (revision, body as text).
    pub(crate) async fn claim_row(
        &self,
        lease_id: &str,
    ) -> Result<Option<(String, String)>, StateError> {
        self.call(|c| async move {
            Ok(c.query_opt(
                "SELECT revision, body::text FROM crabbox_claims WHERE lease_id = $1",
                &[&lease_id],
            )
            .await?
            .map(|r| (r.get(0), r.get(1))))
        })
        .await
    }

    /// Writes a claim row if its revision is still `expected` (`None`: if no
    /// row exists). Returns whether it was written.
    pub(crate) async fn claim_cas(
        &self,
        expected: Option<&str>,
        row: &ClaimRow,
    ) -> Result<bool, StateError> {
        self.call(|c| async move {
            let n = match expected {
                Some(rev) => {
                    c.execute(
                        "UPDATE crabbox_claims
                            SET pond = $3, provider = $4, revision = $5, body = $6::text::jsonb,
                                updated_at = now()
                          WHERE lease_id = $1 AND revision = $2",
                        &[
                            &row.lease_id,
                            &rev,
                            &row.pond,
                            &row.provider,
                            &row.revision,
                            &row.body,
                        ],
                    )
                    .await?
                }
                None => {
                    c.execute(
                        "INSERT INTO crabbox_claims (lease_id, pond, provider, revision, body, updated_at)
                         VALUES ($1, $2, $3, $4, $5::text::jsonb, now())
                         ON CONFLICT (lease_id) DO NOTHING",
                        &[
                            &row.lease_id,
                            &row.pond,
                            &row.provider,
                            &row.revision,
                            &row.body,
                        ],
                    )
                    .await?
                }
            };
            Ok(n == 1)
        })
        .await
    }

    /// Deletes a claim row (absent is fine).
    pub(crate) async fn claim_delete(&self, lease_id: &str) -> Result<(), StateError> {
        self.call(|c| async move {
            c.execute(
                "DELETE FROM crabbox_claims WHERE lease_id = $1",
                &[&lease_id],
            )
            .await
            .map(drop)
        })
        .await
    }

    // ---- pond locks ----

    /// Takes the pond's lock when it is free or expired (or already ours:
    /// a retried call after a lost answer). Returns whether it is ours now.
    ///
    /// # Errors
    /// Database errors.
    pub async fn lock_try(
        &self,
        pond: &str,
        holder_json: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let secs = ttl.as_secs_f64();
        self.call(|c| async move {
            Ok(c.query_opt(
                "INSERT INTO crabbox_locks (pond, holder, token, expires_at)
                 VALUES ($1, $2::text::jsonb, $3, now() + make_interval(secs => $4))
                 ON CONFLICT (pond) DO UPDATE
                    SET holder = excluded.holder, token = excluded.token,
                        expires_at = excluded.expires_at
                  WHERE crabbox_locks.expires_at < now() OR crabbox_locks.token = excluded.token
                 RETURNING token",
                &[&pond, &holder_json, &token, &secs],
            )
            .await?
            .is_some())
        })
        .await
    }

    /// Extends the lock while `token` still holds it; `false` when it no
    /// longer does (broken with `--force`, or expired and taken).
    ///
    /// # Errors
    /// Database errors.
    pub async fn lock_renew(
        &self,
        pond: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let secs = ttl.as_secs_f64();
        self.call(|c| async move {
            Ok(c.execute(
                "UPDATE crabbox_locks SET expires_at = now() + make_interval(secs => $3)
                  WHERE pond = $1 AND token = $2",
                &[&pond, &token, &secs],
            )
            .await?
                == 1)
        })
        .await
    }

    /// Releases the lock if `token` holds it.
    ///
    /// # Errors
    /// Database errors.
    pub async fn lock_release(&self, pond: &str, token: &str) -> Result<(), StateError> {
        self.call(|c| async move {
            c.execute(
                "DELETE FROM crabbox_locks WHERE pond = $1 AND token = $2",
                &[&pond, &token],
            )
            .await
            .map(drop)
        })
        .await
    }

    /// The live (unexpired) lock of a pond: the holder as JSON text and the
    /// seconds left before it expires.
    ///
    /// # Errors
    /// Database errors.
    pub async fn lock_holder(&self, pond: &str) -> Result<Option<(String, f64)>, StateError> {
        self.call(|c| async move {
            Ok(c.query_opt(
                "SELECT holder::text, EXTRACT(EPOCH FROM (expires_at - now()))::float8
                   FROM crabbox_locks WHERE pond = $1 AND expires_at >= now()",
                &[&pond],
            )
            .await?
            .map(|r| (r.get(0), r.get(1))))
        })
        .await
    }

    /// Deletes the pond's lock whoever holds it; returns the holder (JSON
    /// text) of a lock that had not expired.
    ///
    /// # Errors
    /// Database errors.
    pub async fn lock_break(&self, pond: &str) -> Result<Option<String>, StateError> {
        self.call(|c| async move {
            let rows = c
                .query(
                    "DELETE FROM crabbox_locks WHERE pond = $1
                     RETURNING holder::text, expires_at >= now()",
                    &[&pond],
                )
                .await?;
            Ok(rows.iter().find(|r| r.get::<_, bool>(1)).map(|r| r.get(0)))
        })
        .await
    }
}

/// A claim as stored: the row's columns.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRow {
    pub lease_id: String,
    pub pond: String,
    pub provider: String,
    pub revision: String,
    pub body: String,
}

/// An error with the server's message when there is one.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Creates or migrates the schema; safe to run from many processes at once.
async fn migrate(client: &mut Client) -> Result<(), String> {
    let known = i32::try_from(MIGRATIONS.len()).expect("few migrations");
    let tx = client.transaction().await.map_err(|e| describe(&e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| describe(&e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS crabbox_schema_version (version integer NOT NULL)",
    )
    .await
    .map_err(|e| describe(&e))?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM crabbox_schema_version",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?
        .get(0);
    if current > known {
        return Err(format!(
            "its schema is version {current}, newer than this crabbox knows ({known}); upgrade crabbox"
        ));
    }
    if current < known {
        for sql in &MIGRATIONS[usize::try_from(current).unwrap_or(0)..] {
            tx.batch_execute(sql).await.map_err(|e| describe(&e))?;
        }
        tx.execute("DELETE FROM crabbox_schema_version", &[])
            .await
            .map_err(|e| describe(&e))?;
        tx.execute(
            "INSERT INTO crabbox_schema_version (version) VALUES ($1)",
            &[&known],
        )
        .await
        .map_err(|e| describe(&e))?;
    }
    tx.commit().await.map_err(|e| describe(&e))
}

/// Three-way merge of a claim's JSON: `mine` is `base` with the caller's
/// changes; they are applied to `current` (what is stored now), key by key
/// and into nested maps, so a concurrent writer's other changes are kept.
/// Where both changed the same value, the caller's wins.
#[must_use]
pub fn merge(
    base: &serde_json::Value,
    mine: &serde_json::Value,
    current: &serde_json::Value,
) -> serde_json::Value {
    use serde_json::Value;
    match (base, mine, current) {
        (Value::Object(b), Value::Object(m), Value::Object(c)) => {
            let mut out = c.clone();
            let keys: Vec<&String> = b
                .keys()
                .chain(m.keys().filter(|k| !b.contains_key(*k)))
                .collect();
            for k in keys {
                match (b.get(k), m.get(k)) {
                    (bv, mv) if bv == mv => {}
                    (_, None) => {
                        out.remove(k);
                    }
                    (Some(bv), Some(mv)) => {
                        let merged = match c.get(k) {
                            Some(cv) => merge(bv, mv, cv),
                            None => mv.clone(),
                        };
                        out.insert(k.clone(), merged);
                    }
                    // An object both writers created (a claim's `labels`,
                    // where our own fields are folded): merged key by key.
                    (None, Some(mv)) => {
                        let merged = match c.get(k) {
                            Some(cv) if mv.is_object() && cv.is_object() => {
                                merge(&Value::Object(serde_json::Map::new()), mv, cv)
                            }
                            _ => mv.clone(),
                        };
                        out.insert(k.clone(), merged);
                    }
                }
            }
            Value::Object(out)
        }
        _ => mine.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_keeps_both_writers_changes() {
        let base = json!({"a": 1, "labels": {"x": "1"}, "gone": true});
        let mine = json!({"a": 2, "labels": {"x": "1", "m": "1"}});
        let current = json!({"a": 1, "labels": {"x": "1", "c": "1"}, "gone": true, "new": 3});
        assert_eq!(
            merge(&base, &mine, &current),
            json!({"a": 2, "labels": {"x": "1", "c": "1", "m": "1"}, "new": 3})
        );
    }
}
