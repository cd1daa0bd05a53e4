//! Event → subscribers, owned by the broadcaster thread.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::outbound::ClientHandle;

/// Who is subscribed to which event.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Subscribers per event; a `Vec` because fan-out iterates it on every
    /// batch while subscribes are rare.
    events: HashMap<String, Vec<Arc<ClientHandle>>>,
    /// Events per client, to forget a client in one step.
    by_client: HashMap<Uuid, Vec<String>>,
    total: usize,
}

impl Registry {
    /// Adds `client` to `event`; `false` when it was already there.
    pub(crate) fn add(&mut self, event: &str, client: &Arc<ClientHandle>) -> bool {
        let subs = self.events.entry(event.to_owned()).or_default();
        if subs.iter().any(|c| c.id == client.id) {
            return false;
        }
        subs.push(Arc::clone(client));
        self.by_client.entry(client.id).or_default().push(event.to_owned());
        self.total += 1;
        true
    }

    /// Removes `id` from `event`; `false` when it was not there.
    pub(crate) fn remove(&mut self, event: &str, id: Uuid) -> bool {
        let Some(subs) = self.events.get_mut(event) else { return false };
        let Some(i) = subs.iter().position(|c| c.id == id) else { return false };
        subs.swap_remove(i);
        if subs.is_empty() {
            self.events.remove(event);
        }
        if let Some(events) = self.by_client.get_mut(&id) {
            events.retain(|e| e != event);
            if events.is_empty() {
                self.by_client.remove(&id);
            }
        }
        self.total -= 1;
        true
    }

    /// Forgets `id` everywhere; returns the events it leaves without
    /// subscribers.
    pub(crate) fn remove_client(&mut self, id: Uuid) -> Vec<String> {
        let mut emptied = Vec::new();
        for event in self.by_client.remove(&id).unwrap_or_default() {
            if let Some(subs) = self.events.get_mut(&event) {
                subs.retain(|c| c.id != id);
                self.total -= 1;
                if subs.is_empty() {
                    self.events.remove(&event);
                    emptied.push(event);
                }
            }
        }
        emptied
    }

    /// The subscribers of `event` (empty when none).
    pub(crate) fn subscribers(&self, event: &str) -> &[Arc<ClientHandle>] {
        self.events.get(event).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn has_subscribers(&self, event: &str) -> bool {
        self.events.contains_key(event)
    }

    /// Number of (client, event) pairs.
    pub(crate) fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    fn client() -> (Arc<ClientHandle>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (handle, _rx) =
            ClientHandle::new(Uuid::new_v4(), socket.local_addr().unwrap(), "u".into(), 4).unwrap();
        (handle, socket)
    }

    #[test]
    fn add_is_idempotent_and_remove_answers_whether_it_was_there() {
        let mut r = Registry::default();
        let (a, _s) = client();
        assert!(r.add("e", &a));
        assert!(!r.add("e", &a), "a second subscribe does not count twice");
        assert_eq!(r.total(), 1);
        assert!(r.has_subscribers("e"));
        assert!(r.remove("e", a.id));
        assert!(!r.remove("e", a.id));
        assert!(!r.remove("never", a.id));
        assert!(!r.has_subscribers("e"), "an event without subscribers is forgotten");
        assert_eq!(r.total(), 0);
    }

    #[test]
    fn removing_a_client_reports_the_events_it_leaves_empty() {
        let mut r = Registry::default();
        let (a, _s1) = client();
        let (b, _s2) = client();
        for event in ["e1", "e2"] {
            r.add(event, &a);
        }
        r.add("e2", &b);
        assert_eq!(r.total(), 3);
        let mut emptied = r.remove_client(a.id);
        emptied.sort();
        assert_eq!(emptied, ["e1"]);
        assert_eq!(r.subscribers("e2").len(), 1);
        assert_eq!(r.subscribers("e1").len(), 0);
        assert_eq!(r.total(), 1);
        assert!(r.remove_client(a.id).is_empty(), "twice is harmless");
        assert_eq!(r.remove_client(b.id), ["e2"]);
        assert_eq!(r.total(), 0);
    }
}
