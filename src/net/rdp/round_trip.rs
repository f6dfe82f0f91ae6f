//! A desktop's own round trip, as the client sees it: from input that should change the
//! picture (a key, a character or a button pressed) until the next picture change arrives.
//! It covers the whole way a person feels, through the relay, the desktop's reaction and its
//! drawing, which the session's round trip (console to SP to tenant) does not. Measured
//! here, from this side's clock; nothing the server reports is copied.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::DesktopInput;

/// A press with no picture change within this long changed nothing visible: no sample (a
/// clock ticking later would otherwise be taken for its answer).
pub const GIVE_UP: Duration = Duration::from_millis(500);

/// How many samples the median is taken over.
const KEPT: usize = 20;

/// Input-to-picture round trips: one measurement at a time, the recent ones kept.
#[derive(Debug, Default)]
pub struct InputRoundTrip {
    /// When the first press since the last picture change went out.
    pending: Option<Instant>,
    recent: VecDeque<Duration>,
}

impl InputRoundTrip {
    /// `input` went out at `now`; a press in it starts a measurement unless one runs.
    pub fn sent(&mut self, input: &[DesktopInput], now: Instant) {
        let press = input.iter().any(|i| {
            matches!(
                i,
                DesktopInput::Key { pressed: true, .. }
                    | DesktopInput::Unicode { pressed: true, .. }
                    | DesktopInput::Button { pressed: true, .. }
            )
        });
        if press
            && self
                .pending
                .is_none_or(|at| now.saturating_duration_since(at) > GIVE_UP)
        {
            self.pending = Some(now);
        }
    }

    /// The picture changed at `now`: the measurement under way, if any, ends here.
    pub fn painted(&mut self, now: Instant) -> Option<Duration> {
        let took = now.saturating_duration_since(self.pending.take()?);
        if took > GIVE_UP {
            return None;
        }
        if self.recent.len() == KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(took);
        Some(took)
    }

    /// The median of the recent round trips, if any was measured.
    pub fn median(&self) -> Option<Duration> {
        let mut sorted: Vec<Duration> = self.recent.iter().copied().collect();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied()
    }

    /// How many round trips the median is over.
    pub fn samples(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::rdp::MouseButton;

    const KEY: DesktopInput = DesktopInput::Key {
        scancode: 0x1e,
        extended: false,
        pressed: true,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_press_until_the_next_picture_change_is_one_round_trip() {
        let t0 = Instant::now();
        let mut rt = InputRoundTrip::default();
        assert_eq!(rt.median(), None);
        rt.sent(&[KEY], t0);
        // A second press before the answer does not restart the measurement.
        rt.sent(&[KEY], t0 + ms(3));
        assert_eq!(rt.painted(t0 + ms(7)), Some(ms(7)));
        // A change nobody asked for measures nothing.
        assert_eq!(rt.painted(t0 + ms(20)), None);
        assert_eq!(rt.samples(), 1);
    }

    #[test]
    fn releases_and_moves_start_nothing() {
        let t0 = Instant::now();
        let mut rt = InputRoundTrip::default();
        rt.sent(
            &[
                DesktopInput::PointerMoved { x: 1, y: 1 },
                DesktopInput::Button {
                    button: MouseButton::Left,
                    pressed: false,
                },
                DesktopInput::Wheel { delta: 120 },
            ],
            t0,
        );
        assert_eq!(rt.painted(t0 + ms(1)), None);
        rt.sent(
            &[DesktopInput::Button {
                button: MouseButton::Left,
                pressed: true,
            }],
            t0 + ms(2),
        );
        assert_eq!(rt.painted(t0 + ms(6)), Some(ms(4)));
    }

    #[test]
    fn a_press_that_changed_nothing_is_given_up() {
        let t0 = Instant::now();
        let mut rt = InputRoundTrip::default();
        rt.sent(&[KEY], t0);
        // The clock's next tick is not this press's answer.
        assert_eq!(rt.painted(t0 + GIVE_UP + ms(1)), None);
        // A press long after a silent one starts afresh.
        rt.sent(&[KEY], t0 + ms(2000));
        rt.sent(&[KEY], t0 + ms(2000) + GIVE_UP + ms(1));
        assert_eq!(rt.painted(t0 + ms(2000) + GIVE_UP + ms(6)), Some(ms(5)));
    }

    #[test]
    fn the_median_is_over_the_recent_ones() {
        let t0 = Instant::now();
        let mut rt = InputRoundTrip::default();
        for (i, took) in [9, 1, 5, 3, 400].into_iter().enumerate() {
            let at = t0 + ms(1000 * i as u64);
            rt.sent(&[KEY], at);
            rt.painted(at + ms(took));
        }
        assert_eq!(rt.median(), Some(ms(5)));
        for i in 0..KEPT as u64 {
            let at = t0 + ms(10_000 + 1000 * i);
            rt.sent(&[KEY], at);
            rt.painted(at + ms(2));
        }
        assert_eq!((rt.samples(), rt.median()), (KEPT, Some(ms(2))));
    }
}
