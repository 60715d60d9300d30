//! What a provider saw of its servers lately: a relabel checks ownership
//! against a sighting from the last minute (its create, a listing, an
//! earlier relabel) instead of reading the server again. Labels can be put
//! back, so a recent sighting is proof enough for a relabel — never for a
//! delete, which always reads afresh.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a sighting of a server's labels stands in for reading them again
/// before a relabel.
const SIGHTING_TTL: Duration = Duration::from_secs(60);

/// Server ID → when it was last seen, and what was seen.
#[derive(Debug)]
pub(crate) struct Sightings<K, V> {
    seen: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K, V> Default for Sightings<K, V> {
    fn default() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, V: Clone> Sightings<K, V> {
    /// Remembers `server` as seen now.
    pub(crate) fn saw(&self, id: K, server: V) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (Instant::now(), server));
    }

    /// Remembers every server of a listing as seen now (one lock for a page).
    pub(crate) fn saw_all(&self, servers: impl IntoIterator<Item = (K, V)>) {
        let now = Instant::now();
        let servers = servers.into_iter();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        // Room for the page at once, not by doublings as its servers arrive.
        seen.reserve(servers.size_hint().0);
        for (id, server) in servers {
            seen.insert(id, (now, server));
        }
    }

    /// Forgets the server (it is gone).
    pub(crate) fn forget(&self, id: &K) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// The server as seen in the last [`SIGHTING_TTL`].
    pub(crate) fn recent(&self, id: &K) -> Option<V> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .filter(|(at, _)| at.elapsed() < SIGHTING_TTL)
            .map(|(_, server)| server.clone())
    }
}
