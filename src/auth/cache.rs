//! A bounded, time-limited cache of auth decisions with one lookup in
//! flight per key, shared by the connection threads (`ws-xxxxxxxx`) that
//! ask.
//!
//! Why the in-flight gate: after a restart or a network blip every
//! dashboard of an installation reconnects within a second, often with the
//! same session. Without it, N threads would miss the cache at once and
//! send N identical requests to Directus; with it, the first thread (the
//! *leader*) asks, and the others wait on a condition variable and reuse
//! its answer, failures included. Only answers are kept afterwards: a
//! failure (timeout, 5xx) is handed to the threads already waiting and then
//! forgotten, so the next check asks again.
//!
//! Keys are 128-bit keyed hashes of the credential (see
//! [`super::directus`]), never the secret itself. The map's lock is held
//! only to look up, insert or remove, never during a lookup.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A cache key: a keyed 128-bit hash of what the decision depends on.
pub(crate) type Key = u128;

/// What a key maps to: a decision, or a lookup in flight.
enum Entry<V> {
    /// A decision, valid until `expires`.
    Ready { value: V, expires: Instant },
    /// A lookup in progress; waiters block on it.
    Pending(Arc<Flight<V>>),
}

/// The meeting point of a leader and its waiters.
struct Flight<V> {
    state: Mutex<FlightState<V>>,
    done: Condvar,
}

enum FlightState<V> {
    Running,
    /// The leader's answer or failure, for the waiters.
    Done(V),
    /// The leader unwound without an answer (it cannot panic by our lints,
    /// but a dependency might): waiters ask for themselves.
    Abandoned,
}

/// How an answer was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// This thread asked the authority.
    Fetched,
    /// From the cache, or from the lookup another thread had in flight.
    Shared,
}

/// The cache. `V` is what a lookup yields (an answer or a failure);
/// `keep` decides how long each one is kept (zero: not at all).
pub(crate) struct DecisionCache<V> {
    entries: Mutex<HashMap<Key, Entry<V>>>,
    capacity: usize,
}

impl<V> fmt::Debug for DecisionCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecisionCache")
            .field("entries", &self.entries.lock().len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<V: Clone> DecisionCache<V> {
    /// A cache holding at most about `capacity` decisions.
    pub(crate) fn new(capacity: usize) -> DecisionCache<V> {
        DecisionCache { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// The decision for `key`: from the cache, from the lookup another
    /// thread has in flight, or from `fetch`, run in this thread.
    ///
    /// Blocks for as long as `fetch` does (its own timeout bounds it); a
    /// waiter gives up waiting after `wait_limit` and runs `fetch` itself,
    /// which only happens if the leader's timeout did not work. `keep`
    /// says how long a fetched value stays cached (`Duration::ZERO`: it is
    /// only shared with the threads already waiting).
    pub(crate) fn get_or_fetch(
        &self,
        key: Key,
        wait_limit: Duration,
        keep: impl Fn(&V) -> Duration,
        fetch: impl FnOnce() -> V,
    ) -> (V, Served) {
        let flight = {
            let entries = self.entries.lock();
            let now = Instant::now();
            match entries.get(&key) {
                Some(Entry::Ready { value, expires }) if *expires > now => {
                    return (value.clone(), Served::Shared);
                }
                Some(Entry::Pending(flight)) => Some(Arc::clone(flight)),
                Some(Entry::Ready { .. }) | None => None,
            }
        };
        if let Some(flight) = flight {
            if let Some(value) = flight.wait(Instant::now() + wait_limit) {
                return (value, Served::Shared);
            }
            // The leader is stuck or gone: ask directly, cache nothing.
            return (fetch(), Served::Fetched);
        }

        let flight =
            Arc::new(Flight { state: Mutex::new(FlightState::Running), done: Condvar::new() });
        {
            let mut entries = self.entries.lock();
            // Another thread may have become leader between the two locks.
            match entries.get(&key) {
                Some(Entry::Pending(other)) => {
                    let other = Arc::clone(other);
                    drop(entries);
                    if let Some(value) = other.wait(Instant::now() + wait_limit) {
                        return (value, Served::Shared);
                    }
                    return (fetch(), Served::Fetched);
                }
                Some(Entry::Ready { value, expires }) if *expires > Instant::now() => {
                    return (value.clone(), Served::Shared);
                }
                Some(Entry::Ready { .. }) | None => {}
            }
            if entries.len() >= self.capacity {
                evict(&mut entries, self.capacity);
            }
            entries.insert(key, Entry::Pending(Arc::clone(&flight)));
        }
        let mut lead = Lead { cache: self, key, flight, finished: false };
        let value = fetch();
        lead.finish(&value, keep(&value));
        (value, Served::Fetched)
    }

    /// Number of keys held (answers and lookups in flight).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

/// Makes room: drops expired answers, then, if still full, the answer
/// closest to expiry. Lookups in flight are never dropped (their number is
/// bounded by the connection threads).
fn evict<V>(entries: &mut HashMap<Key, Entry<V>>, capacity: usize) {
    let now = Instant::now();
    entries.retain(|_, entry| match entry {
        Entry::Ready { expires, .. } => *expires > now,
        Entry::Pending(_) => true,
    });
    while entries.len() >= capacity {
        let oldest = entries
            .iter()
            .filter_map(|(k, entry)| match entry {
                Entry::Ready { expires, .. } => Some((*k, *expires)),
                Entry::Pending(_) => None,
            })
            .min_by_key(|(_, expires)| *expires);
        match oldest {
            Some((key, _)) => {
                entries.remove(&key);
            }
            None => return,
        }
    }
}

impl<V: Clone> Flight<V> {
    /// The leader's value, or `None` when it was abandoned or `deadline`
    /// passed.
    fn wait(&self, deadline: Instant) -> Option<V> {
        let mut state = self.state.lock();
        loop {
            match &*state {
                FlightState::Done(value) => return Some(value.clone()),
                FlightState::Abandoned => return None,
                FlightState::Running => {
                    if self.done.wait_until(&mut state, deadline).timed_out() {
                        return match &*state {
                            FlightState::Done(value) => Some(value.clone()),
                            FlightState::Running | FlightState::Abandoned => None,
                        };
                    }
                }
            }
        }
    }
}

/// The leader's duty: publish its value, or on unwinding release the
/// waiters, so that no key stays pending forever.
struct Lead<'a, V: Clone> {
    cache: &'a DecisionCache<V>,
    key: Key,
    flight: Arc<Flight<V>>,
    finished: bool,
}

impl<V: Clone> Lead<'_, V> {
    fn finish(&mut self, value: &V, keep: Duration) {
        {
            let mut entries = self.cache.entries.lock();
            if self.is_ours(&entries) {
                if keep.is_zero() {
                    entries.remove(&self.key);
                } else {
                    let expires = Instant::now() + keep;
                    entries.insert(self.key, Entry::Ready { value: value.clone(), expires });
                }
            }
        }
        *self.flight.state.lock() = FlightState::Done(value.clone());
        self.flight.done.notify_all();
        self.finished = true;
    }

    /// Whether the key still points at this leader's flight (an eviction
    /// never removes a pending entry, but stay safe).
    fn is_ours(&self, entries: &HashMap<Key, Entry<V>>) -> bool {
        matches!(entries.get(&self.key), Some(Entry::Pending(f)) if Arc::ptr_eq(f, &self.flight))
    }
}

impl<V: Clone> Drop for Lead<'_, V> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        {
            let mut entries = self.cache.entries.lock();
            if self.is_ours(&entries) {
                entries.remove(&self.key);
            }
        }
        *self.flight.state.lock() = FlightState::Abandoned;
        self.flight.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const LONG: Duration = Duration::from_secs(60);
    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn caches_for_the_kept_duration() {
        let cache: DecisionCache<u32> = DecisionCache::new(10);
        let calls = AtomicUsize::new(0);
        let fetch = || {
            calls.fetch_add(1, Ordering::SeqCst);
            7
        };
        assert_eq!(cache.get_or_fetch(1, WAIT, |_| LONG, fetch), (7, Served::Fetched));
        assert_eq!(cache.get_or_fetch(1, WAIT, |_| LONG, fetch), (7, Served::Shared));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another key is another decision.
        assert_eq!(cache.get_or_fetch(2, WAIT, |_| LONG, fetch).1, Served::Fetched);
        // Expired: asked again.
        let short = Duration::from_millis(1);
        cache.get_or_fetch(3, WAIT, |_| short, fetch);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(cache.get_or_fetch(3, WAIT, |_| short, fetch).1, Served::Fetched);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn failures_are_not_kept() {
        let cache: DecisionCache<Result<u32, ()>> = DecisionCache::new(10);
        let keep = |v: &Result<u32, ()>| if v.is_ok() { LONG } else { Duration::ZERO };
        assert_eq!(cache.get_or_fetch(1, WAIT, keep, || Err(())).1, Served::Fetched);
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.get_or_fetch(1, WAIT, keep, || Ok(1)), (Ok(1), Served::Fetched));
        assert_eq!(cache.get_or_fetch(1, WAIT, keep, || Ok(2)), (Ok(1), Served::Shared));
    }

    #[test]
    fn concurrent_lookups_of_one_key_make_one_call() {
        let cache: DecisionCache<u32> = DecisionCache::new(10);
        let calls = AtomicUsize::new(0);
        let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                cache.get_or_fetch(
                    1,
                    WAIT,
                    |_| Duration::ZERO,
                    || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = started_tx.send(());
                        let _ = release_rx.recv();
                        5
                    },
                )
            });
            started_rx.recv().unwrap();
            let waiters: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        cache.get_or_fetch(
                            1,
                            WAIT,
                            |_| Duration::ZERO,
                            || {
                                calls.fetch_add(1, Ordering::SeqCst);
                                6
                            },
                        )
                    })
                })
                .collect();
            // Every waiter holds the flight (entry + leader + 8): release.
            let holders = || match cache.entries.lock().get(&1) {
                Some(Entry::Pending(f)) => Arc::strong_count(f),
                _ => panic!("the leader's entry is pending"),
            };
            while holders() < 10 {
                std::thread::yield_now();
            }
            release_tx.send(()).unwrap();
            assert_eq!(leader.join().unwrap(), (5, Served::Fetched));
            for w in waiters {
                assert_eq!(w.join().unwrap(), (5, Served::Shared));
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the waiters shared the leader's call");
        assert_eq!(cache.len(), 0, "kept for zero time: nothing stays");
    }

    #[test]
    fn an_abandoned_lookup_releases_its_waiters() {
        let cache: DecisionCache<u32> = DecisionCache::new(10);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.get_or_fetch(1, WAIT, |_| LONG, || panic!("dependency bug"))
        }));
        assert!(result.is_err());
        assert_eq!(cache.len(), 0, "no key stays pending");
        assert_eq!(cache.get_or_fetch(1, WAIT, |_| LONG, || 3), (3, Served::Fetched));
    }

    #[test]
    fn stays_bounded() {
        let cache: DecisionCache<u32> = DecisionCache::new(4);
        for key in 0..20u64 {
            cache.get_or_fetch(key.into(), WAIT, |_| LONG + Duration::from_secs(key), || 1);
            assert!(cache.len() <= 4);
        }
        // The newest answers survive; the oldest were evicted.
        assert_eq!(cache.get_or_fetch(19, WAIT, |_| LONG, || 2), (1, Served::Shared));
        assert_eq!(cache.get_or_fetch(0, WAIT, |_| LONG, || 2), (2, Served::Fetched));
    }
}
