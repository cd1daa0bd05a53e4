//! SPEC §9, second round: revalidation re-authorizes each subscription,
//! every inbound frame counts and a message has at most 16 fragments, the
//! latest-position cache is bounded by bytes, and one `subscribed` answer
//! per event and cache state, freed once no queue holds it.

mod frames;
mod revalidation;
