//! The node-wide budget of message bytes held in memory (DESIGN §1, invariant 3).
//!
//! Every SMTP session reserves the bytes of the message it is receiving before it
//! stores them, and the reservation travels with the message until delivery is
//! over. A full budget turns into a `452`/`451` for the client, never into an OOM.
//!
//! This module owns only the accounting: it never allocates message memory itself,
//! never blocks and never waits for bytes to become free (a client that does not
//! fit now is told to retry; the sender's queue is the queue).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of message data held in memory across all sessions, bounded (DESIGN invariant 3).
#[derive(Debug)]
pub struct InFlightBudget {
    /// Bytes currently held by live [`Reservation`]s; never above `limit`.
    used: AtomicUsize,
    /// The most bytes all reservations together may hold.
    limit: usize,
}

impl InFlightBudget {
    /// A budget of `limit` bytes, shared by every session of the node.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(InFlightBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes held right now (a snapshot: other sessions change it concurrently).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The configured bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes still free right now (a snapshot, like [`used`](Self::used)).
    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.used())
    }

    /// Reserve `bytes` now (None if that would exceed the limit).
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.try_reserve_within(None, bytes)
    }

    /// Reserve `bytes` now in this budget and, when given, in `client`'s too: the share one
    /// client address may hold (`smtp.max_in_flight_per_ip`). None, and nothing held, if
    /// either would pass its limit. Growing and releasing keep both in step.
    pub fn try_reserve_within(
        self: &Arc<Self>,
        client: Option<&Arc<InFlightBudget>>,
        bytes: usize,
    ) -> Option<Reservation> {
        let mut reservation = Reservation {
            budget: Arc::clone(self),
            client: client.cloned(),
            bytes: 0,
        };
        reservation.try_grow(bytes).then_some(reservation)
    }

    /// Adds `bytes` to `used` unless the sum would pass `limit`. The compare-and-swap
    /// loop makes check and add one step, so concurrent sessions can never overshoot.
    fn try_acquire(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Held bytes; released on drop.
///
/// Dropping is the only way to give bytes back, so a message's memory and its
/// accounting end together however the transaction ends (delivered, refused,
/// connection lost, task cancelled).
pub struct Reservation {
    /// Where the bytes are given back on drop.
    budget: Arc<InFlightBudget>,
    /// The client address's share, held in step with `budget` when there is one.
    client: Option<Arc<InFlightBudget>>,
    /// Bytes this reservation holds.
    bytes: usize,
}

impl Reservation {
    /// Hold `additional` more bytes; false (and nothing changed) if the budget is exhausted.
    pub fn try_grow(&mut self, additional: usize) -> bool {
        let Some(total) = self.bytes.checked_add(additional) else {
            return false;
        };
        // The client's share first: a client over its share never takes node-wide bytes,
        // not even for the instant before giving them back.
        if let Some(client) = &self.client
            && !client.try_acquire(additional)
        {
            return false;
        }
        if self.budget.try_acquire(additional) {
            self.bytes = total;
            true
        } else {
            if let Some(client) = &self.client {
                client.release(additional);
            }
            false
        }
    }

    /// Bytes held by this reservation.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The limit of the budget this reservation is part of: no reservation can grow past it.
    pub fn budget_limit(&self) -> usize {
        self.budget.limit
    }

    /// Gives back everything above `bytes` (nothing when it holds no more than that): for a
    /// buffer that grew with headroom and has since been trimmed to what it holds.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            if let Some(client) = &self.client {
                client.release(self.bytes - bytes);
            }
            self.bytes = bytes;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
        if let Some(client) = &self.client {
            client.release(self.bytes);
        }
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("bytes", &self.bytes)
            .field("budget_used", &self.budget.used())
            .field("budget_limit", &self.budget.limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a budget script: reserve, grow or drop, with the expected outcome.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        /// Reserve into slot n; expect success or not.
        Reserve(usize, usize, bool),
        /// Grow slot n by bytes; expect success or not.
        Grow(usize, usize, bool),
        /// Drop slot n.
        Drop(usize),
    }

    /// Runs `ops` against a budget of `limit` and checks `used` after every step
    /// against the sum of the live reservations' sizes.
    fn check(limit: usize, ops: &[Op], expect_used: &[usize]) {
        assert_eq!(ops.len(), expect_used.len(), "one expected value per op");
        let budget = InFlightBudget::new(limit);
        let mut slots: Vec<Option<Reservation>> = (0..4).map(|_| None).collect();
        for (step, (op, &want)) in ops.iter().zip(expect_used).enumerate() {
            match *op {
                Op::Reserve(slot, bytes, ok) => {
                    let got = budget.try_reserve(bytes);
                    assert_eq!(got.is_some(), ok, "step {step}: {op:?}");
                    if got.is_some() {
                        slots[slot] = got;
                    }
                }
                Op::Grow(slot, bytes, ok) => {
                    let r = slots[slot].as_mut().expect("test script grows a live slot");
                    let before = r.bytes();
                    assert_eq!(r.try_grow(bytes), ok, "step {step}: {op:?}");
                    let after = if ok { before + bytes } else { before };
                    assert_eq!(r.bytes(), after, "step {step}: {op:?}");
                }
                Op::Drop(slot) => slots[slot] = None,
            }
            assert_eq!(budget.used(), want, "step {step}: {op:?}");
            assert!(budget.used() <= budget.limit());
            let live: usize = slots.iter().flatten().map(Reservation::bytes).sum();
            assert_eq!(live, budget.used(), "step {step}: accounting");
        }
        drop(slots);
        assert_eq!(
            budget.used(),
            0,
            "every byte is released once all reservations are gone"
        );
    }

    #[test]
    fn reservations_are_bounded_by_the_limit_and_released_on_drop() {
        use Op::*;
        check(
            100,
            &[
                Reserve(0, 60, true),
                Reserve(1, 41, false),
                Reserve(1, 40, true),
                Grow(0, 1, false),
                Drop(1),
                Grow(0, 40, true),
                Grow(0, 1, false),
                Reserve(2, 0, true),
                Drop(0),
                Reserve(3, 100, true),
            ],
            &[60, 60, 100, 100, 60, 100, 100, 100, 0, 100],
        );
    }

    #[test]
    fn zero_limit_admits_only_empty_reservations() {
        use Op::*;
        check(
            0,
            &[Reserve(0, 0, true), Grow(0, 1, false), Reserve(1, 1, false)],
            &[0, 0, 0],
        );
    }

    #[test]
    fn overflowing_sizes_are_refused_not_wrapped() {
        use Op::*;
        check(
            usize::MAX,
            &[
                Reserve(0, usize::MAX - 1, true),
                Grow(0, 2, false),
                Reserve(1, 2, false),
                Grow(0, usize::MAX, false),
                Grow(0, 1, true),
            ],
            &[
                usize::MAX - 1,
                usize::MAX - 1,
                usize::MAX - 1,
                usize::MAX - 1,
                usize::MAX,
            ],
        );
    }

    #[test]
    fn concurrent_sessions_never_exceed_the_limit() {
        const LIMIT: usize = 1000;
        let budget = InFlightBudget::new(LIMIT);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || {
                    let mut granted = 0usize;
                    for i in 0..5000 {
                        let bytes = (i * 7 + t * 13) % 300;
                        if let Some(mut r) = budget.try_reserve(bytes) {
                            granted += 1;
                            let _ = r.try_grow(i % 50);
                            assert!(budget.used() <= LIMIT);
                        }
                    }
                    granted
                })
            })
            .collect();
        let granted: usize = threads
            .into_iter()
            .map(|t| t.join().expect("worker thread does not panic"))
            .sum();
        assert!(granted > 0);
        assert_eq!(budget.used(), 0);
    }

    /// Issue 16 (budget pinning): one client address holds at most its share, whatever
    /// the node-wide budget has free, and both are given back together.
    #[test]
    fn a_client_address_holds_at_most_its_share_of_the_budget() {
        let node = InFlightBudget::new(100);
        let client = InFlightBudget::new(30);
        let other = InFlightBudget::new(30);
        let mut a = node.try_reserve_within(Some(&client), 20).expect("fits");
        assert!(node.try_reserve_within(Some(&client), 11).is_none());
        assert!(!a.try_grow(11), "the client's share is exhausted");
        assert_eq!(
            (node.used(), client.used()),
            (20, 20),
            "a refusal holds nothing"
        );
        let b = node
            .try_reserve_within(Some(&other), 30)
            .expect("another client fits");
        let c = node
            .try_reserve_within(None, 50)
            .expect("unshared bytes fit");
        // The node is full now: the client's free share cannot be taken either.
        assert!(!a.try_grow(1));
        assert_eq!((node.used(), client.used()), (100, 20));
        drop(c);
        assert!(a.try_grow(10));
        a.shrink_to(5);
        assert_eq!((node.used(), client.used(), other.used()), (35, 5, 30));
        drop((a, b));
        assert_eq!((node.used(), client.used(), other.used()), (0, 0, 0));
    }

    #[test]
    fn shrinking_a_reservation_returns_the_excess_to_the_budget() {
        let budget = InFlightBudget::new(100);
        let mut r = budget.try_reserve(80).expect("80 of 100 bytes fit");
        r.shrink_to(30);
        assert_eq!((r.bytes(), budget.used()), (30, 30));
        r.shrink_to(50);
        assert_eq!(
            (r.bytes(), budget.used()),
            (30, 30),
            "shrinking never grows"
        );
        assert!(
            budget.try_reserve(70).is_some(),
            "the excess is available again"
        );
        drop(r);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn reservation_debug_shows_sizes_only() {
        let budget = InFlightBudget::new(10);
        let r = budget.try_reserve(3).expect("3 of 10 bytes fit");
        assert_eq!(
            format!("{r:?}"),
            "Reservation { bytes: 3, budget_used: 3, budget_limit: 10 }"
        );
        assert_eq!(budget.available(), 7);
    }
}
