//! Admission at the door: whether a request joining the queue would be answered before its
//! deadline, predicted from what the worker last published (until when the GPU is busy, and
//! the predicted time of each batch size at the highest clocks). A request predicted
//! to finish late is refused at once, with a reason and a retry hint, instead of waiting in the
//! queue to be refused or answered late.
//!
//! The queued samples are predicted to run in a schedule of batches, back to back from when the
//! GPU is next free, in the queue's order. Each new sample joins the last batch when that
//! batch, one sample larger, still ends before every one of its samples' deadlines and is not
//! yet the largest; otherwise it starts the next batch, sent when the last one ends. The worker
//! cuts batches the same way at dispatch (the largest batch of the oldest samples that answers
//! all of them in time), so a request admitted is not made late by the ones admitted after it.
//!
//! A sample that would end after its own deadline is refused. One that starts a batch is also
//! refused when the batch could not take the samples expected to arrive before it is sent (at
//! the rate requests reach the door) and still answer it in time: under overload, admitting
//! the first arrivals of a batch, which wait longest, would cut every batch small, and small
//! batches serve fewer requests per second; refusing them lets batches fill with the later
//! arrivals, which wait less. Below capacity the batch a starter expects fits, and nothing
//! changes.
//!
//! It assumes batches go as soon as the GPU is free, what a policy does when requests queue
//! up; a policy that waits for a batch to fill does so only while the SLO allows, and the
//! worker's check at dispatch still answers 503 to a request a slower schedule makes late.

use std::sync::Arc;

/// What the worker publishes for the request handlers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forecast {
    /// When the batch running now is predicted to end (s, the server's time axis); in the past
    /// while the GPU waits.
    pub busy_until_s: f64,
    /// Predicted execution time of a batch of `b` samples at `batch_s[b - 1]` (s), up to the
    /// policy's largest batch; empty when nothing predicts time (admission is then off).
    pub batch_s: Arc<[f64]>,
    /// How much later than scheduled batches have recently ended (s): a sample is placed only
    /// where its batch ends this long before its deadline.
    pub margin_s: f64,
}

/// The open end of the schedule the queued samples are predicted to run in: its last batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tail {
    /// When the last batch is predicted to be sent (s).
    pub send_s: f64,
    /// Samples in it; 0 when there is none yet and the next batch is sent at `send_s`.
    pub size: usize,
    /// The earliest deadline of its samples, less the margin (s).
    pub deadline_s: f64,
}

impl Tail {
    /// No batch yet; the first is sent at `send_s`.
    pub fn empty(send_s: f64) -> Self {
        Self {
            send_s,
            size: 0,
            deadline_s: f64::INFINITY,
        }
    }
}

impl Default for Tail {
    fn default() -> Self {
        Self::empty(0.0)
    }
}

impl Forecast {
    /// Whether batch times are predicted (otherwise every request is admitted).
    pub fn predicts(&self) -> bool {
        !self.batch_s.is_empty()
    }

    /// Predicted time of a batch of `b` (1 ≤ b ≤ the largest).
    fn time_s(&self, b: usize) -> f64 {
        self.batch_s[b.clamp(1, self.batch_s.len()) - 1]
    }

    /// The tail of an empty queue at `now_s`, `last` the one the queue holds: the first batch
    /// goes when the GPU is free, which the worker's last tail also says (it is made when the
    /// worker takes a batch, before the batch's end is published).
    pub fn empty_tail(&self, last: Tail, now_s: f64) -> Tail {
        Tail::empty(now_s.max(self.busy_until_s).max(last.send_s))
    }

    /// Places one sample due at `deadline_s` behind `tail` at `now_s`: the new tail, when the
    /// sample's batch is predicted to end (as it stands), and whether the sample started it.
    fn step(&self, tail: Tail, now_s: f64, deadline_s: f64) -> (Tail, f64, bool) {
        let deadline_s = deadline_s - self.margin_s;
        let send = tail.send_s.max(now_s);
        if tail.size > 0 && tail.size < self.batch_s.len() {
            let earliest = tail.deadline_s.min(deadline_s);
            let end = send + self.time_s(tail.size + 1);
            if end <= earliest {
                let joined = Tail {
                    send_s: send,
                    size: tail.size + 1,
                    deadline_s: earliest,
                };
                return (joined, end, false);
            }
        }
        let next = if tail.size == 0 {
            send
        } else {
            send + self.time_s(tail.size)
        };
        let started = Tail {
            send_s: next,
            size: 1,
            deadline_s,
        };
        (started, next + self.time_s(1), true)
    }

    /// Places `n` samples due at `deadline_s` behind `tail`, with `rate_per_s` samples a second
    /// reaching the door: the new tail when every one of them is predicted to be answered in
    /// time, else when the first late one would be (see the module docs). Without predicted
    /// times everything fits and the tail stays.
    pub fn place(
        &self,
        tail: Tail,
        now_s: f64,
        n: usize,
        deadline_s: f64,
        rate_per_s: f64,
    ) -> Result<Tail, f64> {
        if !self.predicts() {
            return Ok(tail);
        }
        let mut t = tail;
        for _ in 0..n {
            let (next, mut end, started) = self.step(t, now_s, deadline_s);
            if started {
                let expected = (rate_per_s.max(0.0) * (next.send_s - now_s).max(0.0)).ceil();
                let size = (1.0 + expected).min(self.batch_s.len() as f64) as usize;
                end = next.send_s + self.time_s(size);
            }
            if end > deadline_s - self.margin_s {
                return Err(end);
            }
            t = next;
        }
        Ok(t)
    }

    /// [`place`](Self::place) behind the `queued` samples whose schedule ends in `tail` (an
    /// empty queue's tail restarts from when the GPU is free): what the request handlers ask.
    pub fn admit(
        &self,
        queued: usize,
        tail: Tail,
        now_s: f64,
        n: usize,
        deadline_s: f64,
        rate_per_s: f64,
    ) -> Result<Tail, f64> {
        let tail = if queued == 0 {
            self.empty_tail(tail, now_s)
        } else {
            tail
        };
        self.place(tail, now_s, n, deadline_s, rate_per_s)
    }

    /// The tail of `deadlines` (queued samples in order) scheduled from `send_s`, late ones
    /// included: what the worker recomputes after it takes a batch or refuses samples.
    pub fn schedule(&self, send_s: f64, now_s: f64, deadlines: impl Iterator<Item = f64>) -> Tail {
        let mut t = Tail::empty(send_s);
        if self.predicts() {
            for d in deadlines {
                t = self.step(t, now_s, d).0;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forecast() -> Forecast {
        // 1 ms per batch plus 1 ms per sample, batches of up to 4.
        Forecast {
            busy_until_s: 10.0,
            batch_s: Arc::from([0.002, 0.003, 0.004, 0.005]),
            margin_s: 0.0,
        }
    }

    fn late_at(r: Result<Tail, f64>, end: f64) -> bool {
        matches!(r, Err(e) if (e - end).abs() < 1e-9)
    }

    #[test]
    fn samples_join_the_last_batch_until_it_is_full() {
        let f = forecast();
        let t = f.empty_tail(Tail::default(), 9.0);
        // The running batch ends at 10.0: the first batch is sent then and grows to four.
        let t = f.place(t, 9.0, 4, 11.0, 0.0).unwrap();
        assert_eq!((t.send_s, t.size), (10.0, 4));
        // The fifth starts a batch sent when the first ends (10.005), and ends at 10.007.
        assert!(late_at(f.place(t, 9.0, 1, 10.006, 0.0), 10.007));
        let t = f.place(t, 9.0, 1, 10.0071, 0.0).unwrap();
        assert!((t.send_s - 10.005).abs() < 1e-9 && t.size == 1);
    }

    #[test]
    fn a_sample_that_would_make_the_batch_late_for_an_earlier_one_starts_the_next() {
        let f = forecast();
        // The first sample is due at 10.003: a batch of two (ends 10.003) still fits it.
        let t = f
            .place(f.empty_tail(Tail::default(), 9.0), 9.0, 1, 10.003, 0.0)
            .unwrap();
        let t = f.place(t, 9.0, 1, 11.0, 0.0).unwrap();
        assert_eq!(t.size, 2);
        // A third would end the batch at 10.004, late for the first: it goes next, at 10.003.
        let t = f.place(t, 9.0, 1, 11.0, 0.0).unwrap();
        assert_eq!((t.send_s, t.size, t.deadline_s), (10.003, 1, 11.0));
    }

    #[test]
    fn a_request_is_placed_whole_or_not_at_all_and_the_gpu_waiting_sends_now() {
        let f = forecast();
        // The GPU is free at 11.0: a batch sent now.
        let t = f.empty_tail(Tail::default(), 11.0);
        assert_eq!(t.send_s, 11.0);
        // Six samples due at 11.006: four end at 11.005, the fifth would at 11.007.
        assert!(late_at(f.place(t, 11.0, 6, 11.006, 0.0), 11.007));
        // Due at 11.0081 the last two end at 11.008.
        assert!(f.place(t, 11.0, 6, 11.0081, 0.0).is_ok());
    }

    #[test]
    fn the_schedule_of_the_queue_matches_placing_each_sample() {
        let f = forecast();
        let deadlines = [10.003, 11.0, 11.0, 11.0, 11.0, 11.0];
        let mut t = f.empty_tail(Tail::default(), 9.0);
        for &d in &deadlines {
            t = f.place(t, 9.0, 1, d, 0.0).unwrap();
        }
        assert_eq!(f.schedule(10.0, 9.0, deadlines.into_iter()), t);
    }

    #[test]
    fn a_batch_starter_is_refused_when_the_arrivals_before_the_send_would_make_it_late() {
        let f = forecast();
        // Sent at 10.0 (1 s from now): at 3 samples/s three more arrive, a full batch of four
        // ends at 10.005; due at 10.004 it is refused, though alone it would end at 10.002.
        let t = f.empty_tail(Tail::default(), 9.0);
        assert!(late_at(f.place(t, 9.0, 1, 10.004, 3.0), 10.005));
        assert!(f.place(t, 9.0, 1, 10.004, 0.0).is_ok());
        // Joining an open batch looks only at the batch as it stands.
        let t = f.place(t, 9.0, 1, 10.009, 3.0).unwrap();
        assert!(f.place(t, 9.0, 1, 10.003, 3.0).is_ok());
    }

    #[test]
    fn the_margin_is_kept_before_every_deadline_in_the_batch() {
        let f = Forecast {
            margin_s: 0.001,
            ..forecast()
        };
        let t = f.empty_tail(Tail::default(), 9.0);
        // Alone it ends at 10.002: due then, it is refused; due 1 ms later, placed.
        assert!(late_at(f.place(t, 9.0, 1, 10.002, 0.0), 10.002));
        let t = f.place(t, 9.0, 1, 10.003, 0.0).unwrap();
        // A second would end the batch at 10.003, inside the first one's margin: next batch.
        let t = f.place(t, 9.0, 1, 11.0, 0.0).unwrap();
        assert_eq!((t.send_s, t.size), (10.002, 1));
    }

    #[test]
    fn an_empty_queue_restarts_the_schedule_from_when_the_gpu_is_free() {
        let f = forecast();
        // A tail left by batches already taken: with nothing queued it does not hold.
        let stale = Tail {
            send_s: 9.5,
            size: 4,
            deadline_s: 9.6,
        };
        let t = f.admit(0, stale, 9.0, 1, 11.0, 0.0).unwrap();
        assert_eq!((t.send_s, t.size), (10.0, 1));
        // With samples queued it is where the request goes behind.
        let t = f.admit(4, stale, 9.0, 1, 11.0, 0.0).unwrap();
        assert!((t.send_s - 9.505).abs() < 1e-9 && t.size == 1);
    }

    #[test]
    fn without_predicted_times_everything_is_admitted() {
        let f = Forecast::default();
        let t = Tail::empty(5.0);
        assert_eq!(f.place(t, 0.0, 100, 0.0, 0.0), Ok(t));
    }
}
