//! Copying one local claim into the PostgreSQL state backend, for
//! `crabbox state migrate`: a claim already there is never overwritten.

use crate::claims::{Claim, row_of};
use crate::state_pg::Database;

/// What copying one claim did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    /// The claim was not in the database and now is (or would be).
    Copied,
    /// The database already holds this revision of the claim.
    Present,
    /// The database holds another revision (named): left as it is.
    Differs(String),
}

/// Copies `claim` into `db` unless the database has the lease already.
///
/// # Errors
/// The database could not be read or written, or the claim not encoded.
pub async fn copy_claim(db: &Database, claim: &Claim, dry_run: bool) -> Result<Copied, String> {
    match db.claim_row(&claim.lease_id).await.map_err(|e| e.0)? {
        Some((revision, _)) if revision == claim.revision => Ok(Copied::Present),
        Some((revision, _)) => Ok(Copied::Differs(revision)),
        None if dry_run => Ok(Copied::Copied),
        None => {
            let (row, _) = row_of(claim).map_err(|e| e.to_string())?;
            if db.claim_cas(None, &row).await.map_err(|e| e.0)? {
                Ok(Copied::Copied)
            } else {
                // Written by someone else meanwhile.
                Ok(Copied::Differs(String::from("(just written)")))
            }
        }
    }
}
