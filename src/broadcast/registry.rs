//! Event → subscribers, owned by the broadcaster thread.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::server::ClientHandle;

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
