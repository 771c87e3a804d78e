//! Wakeups between tasks of one core runtime: no atomics, no locks, no allocation per
//! notification (everything here is `!Send` and lives on one thread).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes one waiting task; a notification sent while nobody waits is kept for the next wait.
#[derive(Default)]
pub struct Notify {
    pending: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Resolves at the next notification (or at once if one is pending).
    pub fn wait(&self) -> Wait<'_> {
        Wait { notify: self }
    }
}

pub struct Wait<'a> {
    notify: &'a Notify,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.pending.replace(false) {
            return Poll::Ready(());
        }
        let w = match self.notify.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.notify.waker.set(Some(w));
        Poll::Pending
    }
}

/// A one-way latch: once set, every present and future waiter resolves. For the few
/// long-lived waiters of a core (accept loops, the drain), so the waker list stays small.
#[derive(Default)]
pub struct Latch {
    set: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Latch {
    pub fn set(&self) {
        self.set.set(true);
        for w in self.wakers.take() {
            w.wake();
        }
    }

    pub fn wait(&self) -> LatchWait<'_> {
        LatchWait { latch: self }
    }
}

pub struct LatchWait<'a> {
    latch: &'a Latch,
}

impl Future for LatchWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.latch.set.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.latch.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Gives other ready tasks of this runtime a turn.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false).await
}
