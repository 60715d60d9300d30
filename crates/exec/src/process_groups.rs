//! The process groups of the commands crabbox is running right now (local
//! steps, ssh clients). A second Ctrl-C exits at once, without running
//! destructors, so the groups are kept here for it to stop first: nothing a
//! run started in the foreground outlives an interrupted crabbox.
//! Background services are not here: they are the pond and outlive crabbox.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// A group registered while this value lives.
#[derive(Debug)]
pub struct Registered(i32);

/// Records a running command's process group (its leader's pid).
#[must_use]
pub fn register(pgid: i32) -> Registered {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(pgid);
    Registered(pgid)
}

impl Drop for Registered {
    fn drop(&mut self) {
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// Sends SIGKILL to every registered group.
pub fn kill_all() {
    let live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    for &pgid in live.iter().filter(|&&g| g > 1) {
        // SAFETY: killpg(2) takes integers and touches no memory; each group
        // is registered only while its leader is unreaped, so the ID is ours.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}
