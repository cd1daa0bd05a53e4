//! What waking a thread costs on this machine, measured without livecast:
//! the floor under any thread-per-connection fan-out.
//!
//! 1. Ping-pong: two threads hand a number back and forth through rendezvous
//!    channels, so every hand-off is a wake-up plus a switch.
//! 2. Fan-out: one thread wakes N sleeping threads per round, each blocked in
//!    `read` on its own wake descriptor (one end of a socket pair, as a
//!    connection thread blocks on its eventfd); each woken thread does no
//!    work but count, and the last one wakes the first thread. This is a
//!    broadcaster cycle with every byte of real work taken out.
//!
//! Pinned to one core by the caller, as the benchmark pins the server:
//!
//! rustc -O scripts/bench/switch_cost.rs -o target/switch_cost && taskset -c 0 target/switch_cost

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

const ROUND_TRIPS: u32 = 100_000;
const FAN_ROUNDS: u32 = 200;

fn main() {
    let per_trip = ping_pong();
    println!("ping-pong: round trip {per_trip:?}, about {:?} per switch", per_trip / 2);
    for threads in [10, 1_000] {
        let per_wake = fan_out(threads);
        println!("fan-out to {threads} threads: {per_wake:?} per thread woken");
    }
}

fn ping_pong() -> Duration {
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
    per_trip
}

fn fan_out(threads: usize) -> Duration {
    let woken = Arc::new(AtomicUsize::new(0));
    let (mut done_rx, done_tx) = UnixStream::pair().expect("pair");
    let done_tx = Arc::new(done_tx);
    let mut wakes = Vec::with_capacity(threads);
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let (wake_tx, mut wake_rx) = UnixStream::pair().expect("pair");
        wakes.push(wake_tx);
        let (woken, done_tx) = (Arc::clone(&woken), Arc::clone(&done_tx));
        let worker = std::thread::Builder::new()
            .name(format!("w-{i}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut byte = [0u8];
                while wake_rx.read(&mut byte).expect("read") == 1 {
                    if woken.fetch_add(1, Ordering::AcqRel) + 1 == threads {
                        (&*done_tx).write_all(b"d").expect("write");
                    }
                }
            })
            .expect("spawn");
        workers.push(worker);
    }
    let mut byte = [0u8];
    let started = Instant::now();
    for _ in 0..FAN_ROUNDS {
        woken.store(0, Ordering::Release);
        for wake in &mut wakes {
            wake.write_all(b"w").expect("write");
        }
        done_rx.read_exact(&mut byte).expect("read");
    }
    let per_wake = started.elapsed() / (FAN_ROUNDS * threads as u32);
    drop(wakes);
    for worker in workers {
        worker.join().expect("join");
    }
    per_wake
}
