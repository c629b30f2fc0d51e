//! Deadlines for socket operations, one per connection: a per-core table of small slots, one
//! min-heap of their next wake-up times, and one driver task with one runtime timer per core.
//!
//! Why not a runtime timer per operation: monoio's `Sleep` is 640 bytes and 128-byte aligned, and
//! every future that holds one inherits that alignment. An idle connection waiting for its next
//! request would carry it in its task state, and every timed read or write would register and
//! deregister a timer in the runtime's wheel.
//!
//! How it works:
//! - A connection task runs inside [`scope`], which gives it a slot for its lifetime. A timed
//!   operation ([`timeout_at`]) arms the task's slot with its deadline and disarms it when it
//!   ends; a second timed operation running at the same time in the same task (a `select!`), or
//!   one outside any scope, takes a slot of its own for its duration.
//! - The heap holds each armed slot once, keyed by the time it was queued for. Arming a slot
//!   whose key is already at or before the new deadline touches nothing but the slot: when the
//!   key comes due, the driver re-queues the slot at its current deadline (or drops it from the
//!   heap when it is disarmed). A keep-alive connection whose deadlines only move forward costs
//!   one heap operation per timeout period, not one per socket operation.
//! - The driver sleeps until the earliest key. An arm that queues a key earlier than that wakes
//!   the driver to sleep less.
//!
//! Everything is thread-local: a core's tasks and its driver share one table and nothing else.
//! Deadlines fire within the runtime timer's granularity (1 ms) of their time.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// A timed operation did not finish before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline passed")]
pub struct Elapsed;

/// Index of a slot; `NONE` for no slot.
type SlotId = u32;
const NONE: SlotId = u32::MAX;

/// A time as nanoseconds since the table's base instant (slots stay small: an idle
/// connection keeps one).
type Ticks = u64;
/// `Slot::armed` of a disarmed slot.
const DISARMED: Ticks = Ticks::MAX;

/// One deadline: the operation waiting on it, and its place in the heap.
struct Slot {
    /// The deadline of the operation that armed the slot; `DISARMED` while disarmed.
    armed: Ticks,
    /// The heap key while queued: at or before `armed` when armed.
    key: Ticks,
    /// Position in the heap, or `NONE`.
    heap_pos: u32,
    /// The task to wake when the deadline passes.
    waker: Option<Waker>,
    /// The deadline passed while armed.
    fired: bool,
}

/// The per-core table.
struct Table {
    /// The instant `Ticks` count from (set on first use).
    base: Option<Instant>,
    slots: Vec<Slot>,
    free: Vec<SlotId>,
    /// Slot ids ordered by `slots[id].key` (a binary min-heap).
    heap: Vec<SlotId>,
    /// The time the driver sleeps until (`None`: no driver, or it waits for a first key).
    driver_at: Option<Ticks>,
    driver_waker: Option<Waker>,
    /// The driver task exists on this thread's runtime.
    driver_running: bool,
    /// The heap's minimum moved earlier than `driver_at`: the driver must re-plan.
    replan: bool,
}

thread_local! {
    static TABLE: RefCell<Table> = const {
        RefCell::new(Table {
            base: None,
            slots: Vec::new(),
            free: Vec::new(),
            heap: Vec::new(),
            driver_at: None,
            driver_waker: None,
            driver_running: false,
            replan: false,
        })
    };
    /// The slot of the [`scope`] being polled on this thread.
    static CURRENT_SCOPE: Cell<SlotId> = const { Cell::new(NONE) };
}

impl Table {
    fn ticks(&mut self, at: Instant) -> Ticks {
        let base = *self.base.get_or_insert_with(Instant::now);
        // Saturates after 584 years; an instant before the base counts as the base.
        at.saturating_duration_since(base)
            .as_nanos()
            .min(u128::from(DISARMED - 1)) as Ticks
    }

    fn instant(&self, ticks: Ticks) -> Instant {
        let base = self.base.expect("ticks come from a based table");
        base + std::time::Duration::from_nanos(ticks)
    }

    fn allocate(&mut self) -> SlotId {
        if let Some(id) = self.free.pop() {
            return id;
        }
        self.slots.push(Slot {
            armed: DISARMED,
            key: 0,
            heap_pos: NONE,
            waker: None,
            fired: false,
        });
        (self.slots.len() - 1) as SlotId
    }

    fn release(&mut self, id: SlotId) {
        self.disarm(id);
        let pos = self.slots[id as usize].heap_pos;
        if pos != NONE {
            self.heap_remove(pos as usize);
        }
        self.free.push(id);
    }

    /// Arms `id` for `at`. Returns true when the driver must be woken to re-plan.
    fn arm(&mut self, id: SlotId, at: Instant, waker: &Waker) -> bool {
        let at = self.ticks(at);
        let slot = &mut self.slots[id as usize];
        slot.armed = at;
        slot.fired = false;
        slot.waker = Some(waker.clone());
        if slot.heap_pos == NONE {
            slot.key = at;
            self.heap_push(id);
        } else if at < slot.key {
            slot.key = at;
            let pos = slot.heap_pos as usize;
            self.sift_up(pos);
        } else {
            return false;
        }
        let earliest = self.heap_min_key();
        let wake = self
            .driver_at
            .is_none_or(|planned| earliest.is_some_and(|e| e < planned));
        if wake {
            self.replan = true;
        }
        wake
    }

    fn disarm(&mut self, id: SlotId) {
        let slot = &mut self.slots[id as usize];
        slot.armed = DISARMED;
        slot.fired = false;
        slot.waker = None;
    }

    fn heap_min_key(&self) -> Option<Ticks> {
        self.heap.first().map(|&id| self.slots[id as usize].key)
    }

    /// Fires every armed slot whose deadline is at or before `now` (their wakers go into
    /// `wake`), re-queues slots whose deadline moved later, drops disarmed ones. Returns the
    /// earliest key left.
    fn fire_due(&mut self, now: Instant, wake: &mut Vec<Waker>) -> Option<Instant> {
        let now = self.ticks(now);
        while let Some(&id) = self.heap.first() {
            let slot = &mut self.slots[id as usize];
            if slot.key > now {
                break;
            }
            if slot.armed == DISARMED {
                self.heap_remove(0);
            } else if slot.armed <= now {
                slot.fired = true;
                wake.extend(slot.waker.take());
                self.heap_remove(0);
            } else {
                slot.key = slot.armed;
                self.sift_down(0);
            }
        }
        self.heap_min_key().map(|key| self.instant(key))
    }

    fn key_of(&self, pos: usize) -> Ticks {
        self.slots[self.heap[pos] as usize].key
    }

    fn place(&mut self, pos: usize, id: SlotId) {
        self.heap[pos] = id;
        self.slots[id as usize].heap_pos = pos as u32;
    }

    fn heap_push(&mut self, id: SlotId) {
        self.heap.push(id);
        let pos = self.heap.len() - 1;
        self.slots[id as usize].heap_pos = pos as u32;
        self.sift_up(pos);
    }

    fn heap_remove(&mut self, pos: usize) {
        let removed = self.heap[pos];
        self.slots[removed as usize].heap_pos = NONE;
        let last = self.heap.pop().expect("removing from a non-empty heap");
        if pos < self.heap.len() {
            self.place(pos, last);
            self.sift_down(pos);
            self.sift_up(pos);
        }
    }

    fn sift_up(&mut self, mut pos: usize) {
        let id = self.heap[pos];
        let key = self.slots[id as usize].key;
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.key_of(parent) <= key {
                break;
            }
            let moved = self.heap[parent];
            self.place(pos, moved);
            pos = parent;
        }
        self.place(pos, id);
    }

    fn sift_down(&mut self, mut pos: usize) {
        let id = self.heap[pos];
        let key = self.slots[id as usize].key;
        let len = self.heap.len();
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && self.key_of(right) < self.key_of(left) {
                right
            } else {
                left
            };
            if key <= self.key_of(child) {
                break;
            }
            let moved = self.heap[child];
            self.place(pos, moved);
            pos = child;
        }
        self.place(pos, id);
    }
}

fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    TABLE.with(|table| f(&mut table.borrow_mut()))
}

/// For drops: does nothing when the table is gone (thread exit) or busy (a drop nested in
/// the table's own work), rather than panic.
fn with_table_if_free(f: impl FnOnce(&mut Table)) {
    let _ = TABLE.try_with(|table| {
        if let Ok(mut table) = table.try_borrow_mut() {
            f(&mut table);
        }
    });
}

/// Runs `task` with a deadline slot of its own for its whole life (a connection task): its
/// timed operations then reuse that slot instead of each taking one.
pub fn scope<F: Future>(task: F) -> Scope<F> {
    Scope {
        task,
        slot: Cell::new(NONE),
    }
}

pin_project_lite::pin_project! {
    /// Future returned by [`scope`].
    pub struct Scope<F> {
        #[pin]
        task: F,
        slot: Cell<SlotId>,
    }

    impl<F> PinnedDrop for Scope<F> {
        fn drop(this: Pin<&mut Self>) {
            let slot = this.slot.get();
            if slot != NONE {
                with_table_if_free(|table| table.release(slot));
            }
        }
    }
}

impl<F: Future> Future for Scope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut slot = this.slot.get();
        if slot == NONE {
            slot = with_table(Table::allocate);
            this.slot.set(slot);
        }
        let outer = CURRENT_SCOPE.replace(slot);
        let result = this.task.poll(cx);
        CURRENT_SCOPE.set(outer);
        result
    }
}

/// Runs `operation` until it finishes or `deadline` passes, whichever comes first. On
/// [`Elapsed`] the operation has been dropped (an io_uring operation is then cancelled).
pub fn timeout_at<F: Future>(deadline: Instant, operation: F) -> Timeout<F> {
    Timeout {
        operation,
        deadline,
        slot: NONE,
        own_slot: false,
    }
}

/// Waits until `deadline`.
pub async fn sleep_until(deadline: Instant) {
    let _ = timeout_at(deadline, std::future::pending::<()>()).await;
}

pin_project_lite::pin_project! {
    /// Future returned by [`timeout_at`].
    pub struct Timeout<F> {
        #[pin]
        operation: F,
        deadline: Instant,
        slot: SlotId,
        own_slot: bool,
    }

    impl<F> PinnedDrop for Timeout<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            end(*this.slot, *this.own_slot);
        }
    }
}

/// Gives a timed operation's slot back: disarmed when it was the scope's, freed when its own.
/// Also called from drops, so a busy or gone table is skipped rather than a panic.
fn end(slot: SlotId, own: bool) {
    if slot == NONE {
        return;
    }
    with_table_if_free(|table| {
        if own {
            table.release(slot)
        } else {
            table.disarm(slot)
        }
    });
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.operation.poll(cx) {
            end(*this.slot, *this.own_slot);
            *this.slot = NONE;
            return Poll::Ready(Ok(output));
        }
        let deadline = *this.deadline;
        let (elapsed, wake_driver, start_driver) = with_table(|table| {
            if *this.slot == NONE {
                let scope = CURRENT_SCOPE.get();
                let (slot, own) = if scope != NONE && table.slots[scope as usize].armed == DISARMED
                {
                    (scope, false)
                } else {
                    (table.allocate(), true)
                };
                *this.slot = slot;
                *this.own_slot = own;
                let wake = table.arm(slot, deadline, cx.waker());
                let start = !table.driver_running;
                table.driver_running = true;
                return (
                    false,
                    wake.then(|| table.driver_waker.take()).flatten(),
                    start,
                );
            }
            let slot = &mut table.slots[*this.slot as usize];
            if slot.fired {
                return (true, None, false);
            }
            match &slot.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => slot.waker = Some(cx.waker().clone()),
            }
            (false, None, false)
        });
        if start_driver {
            monoio::spawn(drive());
        }
        if let Some(driver) = wake_driver {
            driver.wake();
        }
        if elapsed {
            end(*this.slot, *this.own_slot);
            *this.slot = NONE;
            return Poll::Ready(Err(Elapsed));
        }
        Poll::Pending
    }
}

/// Starts this thread's driver in the current runtime. Dropping the guard (when the runtime's
/// main future ends) forgets the driver and every armed deadline, so that a later runtime on the
/// same thread starts afresh: monoio does not drop the tasks of a finished runtime, so the
/// driver cannot notice by itself. Without a call, the first timed operation on a thread starts
/// the driver, which then serves that thread's one runtime.
pub fn start() -> DriverGuard {
    let start = with_table(|table| !std::mem::replace(&mut table.driver_running, true));
    if start {
        monoio::spawn(drive());
    }
    DriverGuard(())
}

/// Returned by [`start`].
pub struct DriverGuard(());

impl Drop for DriverGuard {
    fn drop(&mut self) {
        // Wakers are dropped after the table's borrow ends: dropping the last one of a task
        // drops its future, whose timed operations give their slots back to this table.
        let mut wakers = Vec::new();
        let _ = TABLE.try_with(|table| {
            if let Ok(mut table) = table.try_borrow_mut() {
                let table = &mut *table;
                table.driver_running = false;
                table.driver_at = None;
                wakers.extend(table.driver_waker.take());
                table.replan = false;
                for id in std::mem::take(&mut table.heap) {
                    table.slots[id as usize].heap_pos = NONE;
                }
                for slot in &mut table.slots {
                    slot.armed = DISARMED;
                    wakers.extend(slot.waker.take());
                }
            }
        });
        drop(wakers);
    }
}

/// The core's driver: fires due deadlines, then sleeps until the next one (or until an earlier
/// one is queued).
async fn drive() {
    let mut wake = Vec::new();
    loop {
        let next = with_table(|table| {
            table.replan = false;
            let next = table.fire_due(Instant::now(), &mut wake);
            table.driver_at = next.map(|at| table.ticks(at));
            next
        });
        for waker in wake.drain(..) {
            waker.wake();
        }
        let replan = std::future::poll_fn(|cx| {
            with_table(|table| {
                if table.replan {
                    Poll::Ready(())
                } else {
                    table.driver_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        });
        match next {
            Some(at) => {
                monoio::select! {
                    _ = monoio::time::sleep_until(monoio::time::Instant::from_std(at)) => {},
                    _ = replan => {},
                }
            }
            None => replan.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    /// Runs `test` in a fresh runtime with its own driver.
    fn run<F: Future>(test: F) -> F::Output {
        runtime().block_on(async {
            let _timers = start();
            test.await
        })
    }

    #[test]
    fn a_pending_operation_times_out_near_its_deadline() {
        run(async {
            let start = Instant::now();
            let result = timeout_at(
                start + Duration::from_millis(30),
                std::future::pending::<()>(),
            )
            .await;
            let took = start.elapsed();
            assert_eq!(result, Err(Elapsed));
            assert!(took >= Duration::from_millis(30), "{took:?}");
            assert!(took < Duration::from_millis(500), "{took:?}");
        });
    }

    #[test]
    fn a_finished_operation_returns_its_output() {
        run(async {
            let result = timeout_at(Instant::now() + Duration::from_millis(50), async {
                monoio::time::sleep(Duration::from_millis(5)).await;
                7
            })
            .await;
            assert_eq!(result, Ok(7));
        });
    }

    #[test]
    fn a_past_deadline_fires_at_once() {
        run(async {
            let start = Instant::now();
            let result = timeout_at(start, std::future::pending::<()>()).await;
            assert_eq!(result, Err(Elapsed));
            assert!(start.elapsed() < Duration::from_millis(200));
        });
    }

    #[test]
    fn a_scope_reuses_its_slot_and_deadlines_may_move_either_way() {
        run(scope(async {
            let start = Instant::now();
            // Later deadlines than the queued key, then an earlier one.
            for ms in [200u64, 300, 400] {
                let r = timeout_at(start + Duration::from_millis(ms), async {
                    monoio::time::sleep(Duration::from_millis(2)).await;
                })
                .await;
                assert_eq!(r, Ok(()));
            }
            let r = timeout_at(
                Instant::now() + Duration::from_millis(20),
                std::future::pending::<()>(),
            )
            .await;
            assert_eq!(r, Err(Elapsed));
            assert!(start.elapsed() < Duration::from_millis(150));
            // The old, later key must not fire a later operation early.
            let before = Instant::now();
            let r = timeout_at(
                before + Duration::from_millis(60),
                monoio::time::sleep(Duration::from_millis(30)),
            )
            .await;
            assert_eq!(r, Ok(()));
            let slots = with_table(|t| t.slots.len());
            assert!(slots <= 2, "{slots} slots for one scope");
        }));
    }

    #[test]
    fn concurrent_operations_in_one_scope_each_keep_their_deadline() {
        run(scope(async {
            let start = Instant::now();
            let short = timeout_at(
                start + Duration::from_millis(20),
                std::future::pending::<()>(),
            );
            let long = timeout_at(
                start + Duration::from_millis(80),
                std::future::pending::<()>(),
            );
            let first = monoio::select! {
                r = short => ("short", r),
                r = long => ("long", r),
            };
            assert_eq!(first, ("short", Err(Elapsed)));
            let took = start.elapsed();
            assert!(took < Duration::from_millis(70), "{took:?}");
        }));
    }

    #[test]
    fn many_deadlines_fire_in_order() {
        run(async {
            let start = Instant::now();
            let order = std::rc::Rc::new(RefCell::new(Vec::new()));
            let mut handles = Vec::new();
            for i in (0..20u64).rev() {
                let order = order.clone();
                handles.push(monoio::spawn(scope(async move {
                    let _ = timeout_at(
                        start + Duration::from_millis(5 * i + 5),
                        std::future::pending::<()>(),
                    )
                    .await;
                    order.borrow_mut().push(i);
                })));
            }
            for handle in handles {
                handle.await;
            }
            let order = order.borrow();
            assert_eq!(*order, (0..20).collect::<Vec<_>>());
        });
    }

    #[test]
    fn each_runtime_on_a_thread_gets_its_own_driver() {
        for _ in 0..2 {
            run(async {
                let r = timeout_at(
                    Instant::now() + Duration::from_millis(10),
                    std::future::pending::<()>(),
                )
                .await;
                assert_eq!(r, Err(Elapsed));
            });
        }
    }
}
