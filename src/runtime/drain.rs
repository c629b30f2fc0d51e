//! A core-local, one-shot "start draining" signal that any task on the core can await (accept
//! loops stop, idle keep-alive connections close). Single-threaded: no atomics, no locks.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// The signal; fired once by the core's control task.
#[derive(Default)]
pub struct DrainSignal {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Option<Waker>>>,
    free_slots: RefCell<Vec<usize>>,
}

impl DrainSignal {
    pub fn is_draining(&self) -> bool {
        self.fired.get()
    }

    /// Fires the signal and wakes every waiter.
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves once the signal has fired.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            signal: self,
            slot: None,
        }
    }
}

/// Future returned by [`DrainSignal::wait`]; frees its waiter slot when dropped.
pub struct DrainWait<'a> {
    signal: &'a DrainSignal,
    slot: Option<usize>,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.signal.waiters.borrow_mut();
        match self.slot {
            Some(slot) => waiters[slot] = Some(cx.waker().clone()),
            None => {
                let slot = match self.signal.free_slots.borrow_mut().pop() {
                    Some(slot) => {
                        waiters[slot] = Some(cx.waker().clone());
                        slot
                    }
                    None => {
                        waiters.push(Some(cx.waker().clone()));
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.signal.waiters.borrow_mut()[slot] = None;
            self.signal.free_slots.borrow_mut().push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_waiters_and_reuses_slots() {
        let signal = DrainSignal::default();
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            let mut wait = Box::pin(signal.wait());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            signal.waiters.borrow().len(),
            1,
            "dropped waiters free their slot"
        );
        let mut wait = Box::pin(signal.wait());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        signal.fire();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }
}
