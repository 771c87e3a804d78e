//! Per-core liveness for the systemd watchdog: each core runtime bumps its own timestamp
//! from a timer task, so a core stuck in a hung engine run or a busy loop stops bumping and
//! the watchdog pings stop with it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often each core bumps its heartbeat.
pub const BEAT_INTERVAL: Duration = Duration::from_millis(100);

/// The last beat of every serving core.
#[derive(Debug)]
pub struct Heartbeats {
    base: Instant,
    cores: Vec<Beat>,
}

#[derive(Debug)]
struct Beat {
    cpu: usize,
    /// Nanoseconds after `base` of the last beat; 0 = never beat.
    last_ns: AtomicU64,
}

impl Heartbeats {
    /// One slot per serving core, in runtime order; `cpus` are the cores they run on.
    pub fn new(cpus: &[usize]) -> Heartbeats {
        Heartbeats {
            base: Instant::now(),
            cores: cpus
                .iter()
                .map(|&cpu| Beat {
                    cpu,
                    last_ns: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// Called by runtime `index` from its timer task.
    pub fn beat(&self, index: usize) {
        self.beat_at(index, Instant::now());
    }

    pub fn beat_at(&self, index: usize, now: Instant) {
        if let Some(b) = self.cores.get(index) {
            // +1 so a beat at the very start is distinguishable from "never".
            let ns = now.saturating_duration_since(self.base).as_nanos() as u64 + 1;
            b.last_ns.store(ns, Relaxed);
        }
    }

    /// `(cpu, age of its last beat)` for every core; `None` if it has never beaten.
    pub fn ages_at(&self, now: Instant) -> Vec<(usize, Option<Duration>)> {
        let now_ns = now.saturating_duration_since(self.base).as_nanos() as u64 + 1;
        self.cores
            .iter()
            .map(|b| {
                let last = b.last_ns.load(Relaxed);
                (
                    b.cpu,
                    (last != 0).then(|| Duration::from_nanos(now_ns.saturating_sub(last))),
                )
            })
            .collect()
    }

    pub fn ages(&self) -> Vec<(usize, Option<Duration>)> {
        self.ages_at(Instant::now())
    }

    /// True when every core has beaten within `max_age` of `now`: the condition for a
    /// watchdog ping.
    pub fn all_fresh_at(&self, now: Instant, max_age: Duration) -> bool {
        !self.cores.is_empty()
            && self
                .ages_at(now)
                .iter()
                .all(|(_, age)| age.is_some_and(|a| a <= max_age))
    }

    pub fn all_fresh(&self, max_age: Duration) -> bool {
        self.all_fresh_at(Instant::now(), max_age)
    }

    /// The cores whose last beat is older than `max_age` (or that never beat).
    pub fn stale(&self, max_age: Duration) -> Vec<usize> {
        self.ages()
            .into_iter()
            .filter(|(_, age)| age.is_none_or(|a| a > max_age))
            .map(|(cpu, _)| cpu)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.cores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_that_stops_beating_goes_stale() {
        let hb = Heartbeats::new(&[0, 1]);
        let t0 = Instant::now();
        assert!(
            !hb.all_fresh_at(t0, Duration::from_secs(1)),
            "never beaten is not fresh"
        );
        hb.beat_at(0, t0);
        hb.beat_at(1, t0);
        assert!(hb.all_fresh_at(t0 + Duration::from_millis(500), Duration::from_secs(1)));
        hb.beat_at(0, t0 + Duration::from_secs(2));
        let later = t0 + Duration::from_millis(2500);
        assert!(!hb.all_fresh_at(later, Duration::from_secs(1)));
        let ages = hb.ages_at(later);
        assert_eq!(ages[0].0, 0);
        assert!(ages[0].1.unwrap() <= Duration::from_millis(501));
        assert!(ages[1].1.unwrap() >= Duration::from_millis(2499));
    }
}
