//! Restart policy: a pure function from a service's crash history to what to do next.
//! No clocks, no processes: the supervisor passes times and a jitter draw in, so every rule is
//! tested directly.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    /// Delay before the first restart.
    pub base: Duration,
    /// Ceiling of the exponential backoff.
    pub max: Duration,
    /// A run at least this long counts as healthy: the backoff starts over.
    pub healthy_after: Duration,
    /// `crash_loop_count` exits within `crash_loop_window` mean the service is failed.
    pub crash_loop_count: usize,
    pub crash_loop_window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            crash_loop_count: 5,
            crash_loop_window: Duration::from_secs(60),
        }
    }
}

/// What the supervisor remembers about one service's exits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Exits since the last healthy run.
    pub consecutive: u32,
    /// Times of recent exits (supervisor clock), oldest first.
    pub exits: Vec<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    RestartAfter(Duration),
    /// Crash loop: stop restarting, report the service failed.
    GiveUp,
}

impl RestartPolicy {
    /// `now`: when the exit was seen; `ran_for`: how long that run lasted; `jitter` in [0, 1).
    pub fn on_exit(
        &self,
        h: &mut History,
        now: Duration,
        ran_for: Duration,
        jitter: f64,
    ) -> Decision {
        if ran_for >= self.healthy_after {
            h.consecutive = 0;
        }
        h.consecutive += 1;
        h.exits.push(now);
        h.exits
            .retain(|t| now.saturating_sub(*t) <= self.crash_loop_window);
        if h.exits.len() >= self.crash_loop_count {
            return Decision::GiveUp;
        }
        let exp = h.consecutive.saturating_sub(1).min(20);
        let backoff = self.base.saturating_mul(1u32 << exp).min(self.max);
        // Up to +50% jitter, so services restarted together do not retry in lockstep.
        let jitter = jitter.clamp(0.0, 1.0);
        Decision::RestartAfter(backoff + backoff.mul_f64(0.5 * jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let p = RestartPolicy {
            crash_loop_count: 100,
            ..RestartPolicy::default()
        };
        let mut h = History::default();
        let mut delays = Vec::new();
        for i in 0..10 {
            match p.on_exit(&mut h, secs(i * 100), Duration::from_millis(10), 0.0) {
                Decision::RestartAfter(d) => delays.push(d),
                Decision::GiveUp => panic!("gave up"),
            }
        }
        assert_eq!(delays[0], Duration::from_millis(200));
        assert_eq!(delays[1], Duration::from_millis(400));
        assert_eq!(delays[2], Duration::from_millis(800));
        assert_eq!(*delays.last().unwrap(), secs(30));
    }

    #[test]
    fn jitter_adds_at_most_half() {
        let p = RestartPolicy::default();
        let mut h = History::default();
        let d = p.on_exit(&mut h, secs(0), secs(0), 0.999_999);
        match d {
            Decision::RestartAfter(d) => {
                assert!(d > Duration::from_millis(200) && d < Duration::from_millis(301))
            }
            _ => panic!(),
        }
    }

    #[test]
    fn a_healthy_run_resets_the_backoff() {
        let p = RestartPolicy::default();
        let mut h = History::default();
        p.on_exit(&mut h, secs(0), secs(0), 0.0);
        p.on_exit(&mut h, secs(1), secs(0), 0.0);
        assert_eq!(h.consecutive, 2);
        let d = p.on_exit(&mut h, secs(500), secs(400), 0.0);
        assert_eq!(d, Decision::RestartAfter(Duration::from_millis(200)));
    }

    #[test]
    fn crash_loop_gives_up_but_spread_out_crashes_do_not() {
        let p = RestartPolicy::default();
        let mut h = History::default();
        let mut last = Decision::RestartAfter(Duration::ZERO);
        for i in 0..5 {
            last = p.on_exit(&mut h, secs(i), secs(0), 0.0);
        }
        assert_eq!(last, Decision::GiveUp);

        let mut h = History::default();
        for i in 0..20 {
            let d = p.on_exit(&mut h, secs(i * 30), secs(1), 0.0);
            assert_ne!(d, Decision::GiveUp, "exit {i}");
        }
    }
}
