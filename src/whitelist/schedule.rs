//! When the updater tries next: a pure function of the last attempts, the configured daily
//! time and a jitter draw, so the rules are tested without clocks.
//!
//! * Nothing installed, or the last attempt failed: retry with backoff (1, 2, 4 … 60 min), so
//!   a box without a list (or with a failing server) keeps trying without hammering it.
//! * Otherwise, the next daily slot after the last attempt: `daily_at` UTC plus a jitter drawn
//!   once per slot in `[0, jitter)`, spreading the country's boxes over the window.
//! * A box that was off past a slot (its last success is more than a day old) tries at once.

/// What the schedule needs to know of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    pub last_attempt_unix: Option<i64>,
    pub last_success_unix: Option<i64>,
    /// Failed attempts since the last success (or since the first attempt).
    pub failures_in_a_row: u32,
    /// A verified list is installed.
    pub installed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub daily_at_minutes: u32,
    pub jitter_seconds: u32,
}

pub const DAY: i64 = 86_400;
const MAX_BACKOFF: i64 = 3600;

/// Seconds to wait after the `n`-th failure in a row (n ≥ 1): 60 s doubling, at most an hour.
pub fn backoff_seconds(n: u32) -> i64 {
    (60i64 << n.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}

/// The daily slot of the day holding `unix`, jitter included (`draw` in `[0, 1)`).
fn slot_of_day(unix: i64, s: Schedule, draw: f64) -> i64 {
    let day = unix.div_euclid(DAY) * DAY;
    let jitter = (f64::from(s.jitter_seconds) * draw.clamp(0.0, 0.999_999)) as i64;
    day + i64::from(s.daily_at_minutes) * 60 + jitter
}

/// When the next attempt is due (it may be in the past: due now).
pub fn next_attempt(standing: Standing, s: Schedule, draw: f64) -> i64 {
    let Some(last) = standing.last_attempt_unix else {
        return i64::MIN;
    };
    if standing.failures_in_a_row > 0 || !standing.installed {
        return last + backoff_seconds(standing.failures_in_a_row.max(1));
    }
    // A success: the first slot after it. If the box missed one (off for a day), now.
    let success = standing.last_success_unix.unwrap_or(last);
    let mut slot = slot_of_day(last, s, draw);
    if slot <= last {
        slot = slot_of_day(last + DAY, s, draw);
    }
    if slot - success > DAY + i64::from(s.jitter_seconds) {
        return last;
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Schedule = Schedule {
        daily_at_minutes: 3 * 60 + 30,
        jitter_seconds: 3600,
    };
    /// 2026-12-02T00:00:00Z.
    const D: i64 = 1_796_169_600;

    fn ok_at(t: i64) -> Standing {
        Standing {
            last_attempt_unix: Some(t),
            last_success_unix: Some(t),
            failures_in_a_row: 0,
            installed: true,
        }
    }

    #[test]
    fn a_box_without_history_tries_at_once() {
        assert!(next_attempt(Standing::default(), S, 0.5) <= D);
    }

    #[test]
    fn after_a_success_the_next_slot_with_its_jitter() {
        // Succeeded at 01:00: today's slot, 03:30 + half of the hour.
        assert_eq!(
            next_attempt(ok_at(D + 3600), S, 0.5),
            D + 3 * 3600 + 1800 + 1800
        );
        // Succeeded at 05:00 (after today's slot): tomorrow's.
        assert_eq!(next_attempt(ok_at(D + 5 * 3600), S, 0.0), D + DAY + 12_600);
        // The draw stays inside the window.
        let latest = next_attempt(ok_at(D + 5 * 3600), S, 1.0);
        assert!(latest < D + DAY + 12_600 + 3600, "{latest}");
    }

    #[test]
    fn failures_back_off_up_to_an_hour() {
        let failed = |n| Standing {
            last_attempt_unix: Some(D),
            last_success_unix: Some(D - 10),
            failures_in_a_row: n,
            installed: true,
        };
        assert_eq!(next_attempt(failed(1), S, 0.3), D + 60);
        assert_eq!(next_attempt(failed(2), S, 0.3), D + 120);
        assert_eq!(next_attempt(failed(6), S, 0.3), D + 1920);
        assert_eq!(next_attempt(failed(7), S, 0.3), D + 3600);
        assert_eq!(next_attempt(failed(40), S, 0.3), D + 3600);
    }

    #[test]
    fn nothing_installed_means_retrying_even_after_a_verified_fetch() {
        // (An install that failed leaves nothing in service.)
        let s = Standing {
            installed: false,
            ..ok_at(D)
        };
        assert_eq!(next_attempt(s, S, 0.0), D + 60);
    }

    #[test]
    fn a_box_that_missed_a_day_tries_at_once() {
        // Last success two days ago, last attempt then: due now.
        let s = ok_at(D - 2 * DAY);
        assert!(next_attempt(s, S, 0.0) <= D);
    }
}
