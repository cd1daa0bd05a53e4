//! What one thread switch costs on this machine: two threads hand a number
//! back and forth through rendezvous channels, pinned to one core by the
//! caller (`taskset -c 0`), so every hand-off is a wake-up plus a switch.
//!
//! rustc -O scripts/bench/switch_cost.rs -o target/switch_cost && taskset -c 0 target/switch_cost

use std::sync::mpsc::sync_channel;
use std::time::Instant;

const ROUND_TRIPS: u32 = 100_000;

fn main() {
    let (to_peer, from_main) = sync_channel::<u32>(0);
    let (to_main, from_peer) = sync_channel::<u32>(0);
    let peer = std::thread::Builder::new()
        .name("peer".into())
        .spawn(move || {
            while let Ok(v) = from_main.recv() {
                if to_main.send(v).is_err() {
                    break;
                }
            }
        })
        .expect("spawn");
    let started = Instant::now();
    for i in 0..ROUND_TRIPS {
        to_peer.send(i).expect("send");
        from_peer.recv().expect("recv");
    }
    let per_trip = started.elapsed() / ROUND_TRIPS;
    drop(to_peer);
    peer.join().expect("join");
    println!("round trip {per_trip:?}, about {:?} per switch", per_trip / 2);
}
