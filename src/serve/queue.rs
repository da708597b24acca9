//! The bounded request queue of one model, shared by the protocol handlers (which submit) and the
//! model's worker task (which takes batches). One queue entry is one sample: a request with a
//! batch dimension N becomes N jobs whose results are collected back into one response.
//!
//! A submission wakes the worker through a [`Notify`] (an async task on the same runtime, no
//! thread hand-off), or, while the worker waits for a batch to fill with a precision the async
//! timer lacks, through a condition variable on the blocking pool.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{Notify, oneshot};

use super::admission::Tail;
use super::oip::OipError;
use crate::eali::controller::{RateConfig, RateEstimator};

/// What the worker reports for one finished sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleDone {
    /// The sample's output values, when the executor computes outputs.
    pub output: Option<Vec<f32>>,
    /// Size of the batch the sample ran in.
    pub batch: u32,
}

/// The result of a whole request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestDone {
    /// `N × output` values, when computed.
    pub outputs: Option<Vec<f32>>,
    /// Largest batch any of the request's samples ran in.
    pub batch: u32,
}

struct Collect {
    outputs: Vec<Option<Vec<f32>>>,
    computed: bool,
    remaining: usize,
    batch: u32,
    tx: Option<oneshot::Sender<Result<RequestDone, OipError>>>,
}

/// Where one sample's result goes.
pub struct Slot {
    collect: Arc<Mutex<Collect>>,
    index: usize,
}

impl Slot {
    /// `n` slots feeding one receiver.
    pub fn for_request(n: usize) -> (Vec<Slot>, oneshot::Receiver<Result<RequestDone, OipError>>) {
        let (tx, rx) = oneshot::channel();
        let collect = Arc::new(Mutex::new(Collect {
            outputs: vec![None; n],
            computed: true,
            remaining: n,
            batch: 0,
            tx: Some(tx),
        }));
        let slots = (0..n)
            .map(|index| Slot {
                collect: collect.clone(),
                index,
            })
            .collect();
        (slots, rx)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Collect) -> R) -> R {
        let mut c = self.collect.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c)
    }

    /// Delivers the sample's result; the request completes with its last sample.
    pub fn complete(self, done: SampleDone) {
        let index = self.index;
        self.with(|c| {
            c.batch = c.batch.max(done.batch);
            match done.output {
                Some(o) => c.outputs[index] = Some(o),
                None => c.computed = false,
            }
            c.remaining = c.remaining.saturating_sub(1);
            if c.remaining == 0
                && let Some(tx) = c.tx.take()
            {
                let outputs = c.computed.then(|| {
                    c.outputs
                        .iter_mut()
                        .flat_map(|o| o.take().unwrap_or_default())
                        .collect()
                });
                let _ = tx.send(Ok(RequestDone {
                    outputs,
                    batch: c.batch,
                }));
            }
        });
    }

    /// Fails the whole request (the first failure of any of its samples wins).
    pub fn fail(self, err: OipError) {
        self.with(|c| {
            if let Some(tx) = c.tx.take() {
                let _ = tx.send(Err(err));
            }
        });
    }
}

/// One queued sample.
pub struct Job {
    /// Device time of arrival (s).
    pub arrival_s: f64,
    /// Device time after which an answer is late (s).
    pub deadline_s: f64,
    /// The sample's values (empty when nothing computes outputs).
    pub input: Vec<f32>,
    pub slot: Slot,
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitError {
    /// The queue holds `queued` samples and cannot take the request's.
    Full { queued: usize },
    /// The server is shutting down.
    Draining,
    /// Predicted to be answered at `finish_s`, after the request's deadline, behind `queued`
    /// samples.
    Late { queued: usize, finish_s: f64 },
}

/// Queue state under the lock.
pub struct State {
    pub jobs: VecDeque<Job>,
    /// Jobs at the back not yet reported to the policy as arrivals.
    pub unreported: usize,
    /// The last batch the queued jobs are predicted to run in (admission's schedule, kept
    /// by [`Queue::submit_by`] and re-made by the worker when it takes jobs).
    pub tail: Tail,
    /// Samples reaching the door, admitted or not, for admission's expected arrivals.
    offered: RateEstimator,
    pub draining: bool,
    /// Threads in [`Queue::wait_until`] (submissions signal the condition variable only then).
    precise_waiters: usize,
    /// Requests admitted from their headers whose bodies are still coming ([`DoorPass`]):
    /// admission counts them as queued, or every request arriving while the admitted ones
    /// upload would find the queue empty and be admitted too.
    pub incoming: usize,
}

/// Window of the rate requests reach the door at (s): short, so a burst counts at once.
const OFFERED_RATE_WINDOW_S: f64 = 0.25;

impl State {
    /// Counts `n` samples reaching the door at `now_s`; the door's rate after them (per s).
    pub fn arrive(&mut self, now_s: f64, n: usize) -> f64 {
        for _ in 0..n {
            self.offered.on_arrival(now_s);
        }
        self.offered_rate(now_s)
    }

    /// The rate samples reached the door at lately (per s).
    pub fn offered_rate(&mut self, now_s: f64) -> f64 {
        self.offered.window_rate(now_s)
    }
}

/// A request admitted from its headers, counted as incoming while it lives.
pub struct DoorPass {
    queue: Arc<Queue>,
}

impl std::fmt::Debug for DoorPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DoorPass")
    }
}

impl Drop for DoorPass {
    fn drop(&mut self) {
        let mut s = self.queue.lock();
        s.incoming = s.incoming.saturating_sub(1);
    }
}

/// A bounded FIFO of samples the worker is woken on.
pub struct Queue {
    state: Mutex<State>,
    arrived: Notify,
    cv: Condvar,
    capacity: usize,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                unreported: 0,
                tail: Tail::default(),
                offered: RateEstimator::new(
                    RateConfig {
                        window_s: OFFERED_RATE_WINDOW_S,
                        ..RateConfig::default()
                    },
                    0.0,
                ),
                draining: false,
                precise_waiters: 0,
                incoming: 0,
            }),
            arrived: Notify::new(),
            cv: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Completes on the next submission or drain, or at once when one came since the last call
    /// (a stored permit), so a submission between looking at the queue and waiting is not lost.
    pub async fn arrival(&self) {
        self.arrived.notified().await;
    }

    /// Blocks until a submission not yet reported to the policy, a drain, or `deadline`.
    pub fn wait_until(&self, deadline: Instant) {
        let mut s = self.lock();
        loop {
            let now = Instant::now();
            if s.unreported > 0 || s.draining || now >= deadline {
                return;
            }
            s.precise_waiters += 1;
            s = match self.cv.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
            s.precise_waiters -= 1;
        }
    }

    fn wake(&self, precise: bool) {
        self.arrived.notify_one();
        if precise {
            self.cv.notify_all();
        }
    }

    /// Adds all of a request's samples, or none.
    pub fn submit(&self, jobs: Vec<Job>) -> Result<(), SubmitError> {
        let now = jobs.first().map_or(0.0, |j| j.arrival_s);
        self.submit_by(jobs, now, |_, tail, _| Ok(tail))
    }

    /// [`submit`](Self::submit) at `now_s` through admission: `place` gets the samples queued
    /// ahead, the schedule's tail and the rate samples reach the door at (per s), and returns
    /// the tail with the request's samples in it, or when the request would be answered
    /// (after its deadline) to refuse it. It runs under the queue's lock, so concurrent
    /// requests each see the ones admitted before them.
    pub fn submit_by(
        &self,
        jobs: Vec<Job>,
        now_s: f64,
        place: impl FnOnce(usize, Tail, f64) -> Result<Tail, f64>,
    ) -> Result<(), SubmitError> {
        let mut s = self.lock();
        let rate = s.arrive(now_s, jobs.len());
        if s.draining {
            return Err(SubmitError::Draining);
        }
        let queued = s.jobs.len();
        if queued + jobs.len() > self.capacity {
            return Err(SubmitError::Full { queued });
        }
        s.tail = place(queued, s.tail, rate)
            .map_err(|finish_s| SubmitError::Late { queued, finish_s })?;
        s.unreported += jobs.len();
        s.jobs.extend(jobs);
        let precise = s.precise_waiters > 0;
        drop(s);
        self.wake(precise);
        Ok(())
    }

    /// Counts one request admitted from its headers as [`incoming`](State::incoming) until
    /// the pass is dropped (when it is submitted, or fails before).
    pub fn pass(self: &Arc<Self>, s: &mut State) -> DoorPass {
        s.incoming += 1;
        DoorPass {
            queue: self.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses new submissions from now on; queued jobs still run.
    pub fn drain(&self) {
        self.lock().draining = true;
        self.wake(true);
    }

    /// Takes every queued job (for failing them when the worker is gone).
    pub fn take_all(&self) -> Vec<Job> {
        let mut s = self.lock();
        s.unreported = 0;
        s.jobs.drain(..).collect()
    }

    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_door_pass_counts_as_incoming_while_it_lives() {
        let q = Arc::new(Queue::new(4));
        let (a, b) = {
            let mut s = q.lock();
            (q.pass(&mut s), q.pass(&mut s))
        };
        assert_eq!(q.lock().incoming, 2);
        drop(a);
        assert_eq!(q.lock().incoming, 1);
        drop(b);
        assert_eq!(q.lock().incoming, 0);
    }

    use super::*;

    fn jobs(n: usize) -> (Vec<Job>, oneshot::Receiver<Result<RequestDone, OipError>>) {
        let (slots, rx) = Slot::for_request(n);
        let jobs = slots
            .into_iter()
            .map(|slot| Job {
                arrival_s: 0.0,
                deadline_s: 1.0,
                input: Vec::new(),
                slot,
            })
            .collect();
        (jobs, rx)
    }

    #[test]
    fn all_or_nothing_submission_and_drain() {
        let q = Queue::new(3);
        let (a, _ra) = jobs(2);
        q.submit(a).unwrap();
        let (b, _rb) = jobs(2);
        assert_eq!(q.submit(b), Err(SubmitError::Full { queued: 2 }));
        assert_eq!(q.len(), 2);
        assert_eq!(q.lock().unreported, 2);
        q.drain();
        let (c, _rc) = jobs(1);
        assert_eq!(q.submit(c), Err(SubmitError::Draining));
        assert!(q.is_draining());
    }

    #[test]
    fn a_request_predicted_late_is_refused_with_what_is_ahead_of_it() {
        let q = Queue::new(8);
        let (a, _ra) = jobs(2);
        // Admission sees what is queued and keeps the tail it returns.
        let placed = Tail::empty(1.0);
        q.submit_by(
            a,
            0.5,
            |queued, _, _| if queued == 0 { Ok(placed) } else { Err(0.0) },
        )
        .unwrap();
        assert_eq!(q.lock().tail, placed);
        let (b, _rb) = jobs(1);
        assert_eq!(
            q.submit_by(b, 0.5, |queued, tail, _| Err(tail.send_s + queued as f64)),
            Err(SubmitError::Late {
                queued: 2,
                finish_s: 3.0
            })
        );
        assert_eq!(q.len(), 2, "nothing of the refused request is queued");
        assert_eq!(q.lock().tail, placed, "nor is its place in the schedule");
    }

    #[test]
    fn submissions_wake_async_and_blocking_waiters() {
        let q = Arc::new(Queue::new(4));
        // A submission before the worker waits leaves a permit: the next wait completes at once.
        let (a, _ra) = jobs(1);
        q.submit(a).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(600), q.arrival()).await
        })
        .expect("the stored permit completes the wait");
        // Unreported arrivals end a blocking wait at once; a submission wakes one in progress.
        let far = Instant::now() + std::time::Duration::from_secs(600);
        q.wait_until(far);
        q.lock().unreported = 0;
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || {
                q.wait_until(far);
                Instant::now()
            })
        };
        while q.lock().precise_waiters == 0 {
            std::thread::yield_now();
        }
        let (b, _rb) = jobs(1);
        q.submit(b).unwrap();
        assert!(waiter.join().unwrap() < far, "woken by the submission");
        assert_eq!(q.take_all().len(), 2);
        assert!(q.is_empty());
    }

    #[test]
    fn samples_are_collected_in_order_and_failures_win() {
        let (js, mut rx) = jobs(2);
        let mut it = js.into_iter();
        let (first, second) = (it.next().unwrap(), it.next().unwrap());
        second.slot.complete(SampleDone {
            output: Some(vec![2.0]),
            batch: 4,
        });
        assert!(rx.try_recv().is_err());
        first.slot.complete(SampleDone {
            output: Some(vec![1.0]),
            batch: 2,
        });
        let done = rx.try_recv().unwrap().unwrap();
        assert_eq!(
            done,
            RequestDone {
                outputs: Some(vec![1.0, 2.0]),
                batch: 4
            }
        );

        let (js, mut rx) = jobs(2);
        let mut it = js.into_iter();
        it.next().unwrap().slot.fail(OipError::internal("boom"));
        it.next().unwrap().slot.complete(SampleDone {
            output: None,
            batch: 1,
        });
        assert_eq!(rx.try_recv().unwrap().unwrap_err().message, "boom");

        let (js, mut rx) = jobs(1);
        js.into_iter().next().unwrap().slot.complete(SampleDone {
            output: None,
            batch: 1,
        });
        assert_eq!(rx.try_recv().unwrap().unwrap().outputs, None);
    }
}
