//! Wakeups between tasks of one core runtime: no atomics, no locks, no allocation per
//! notification (everything here is `!Send` and lives on one thread); and busy-polling,
//! which keeps a core's runtime from parking for a while after its last read.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

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

/// Gives other ready tasks of this runtime a turn, those woken by IO included.
///
/// A monoio task that wakes itself inside its own poll is put back at the *front* of the run
/// queue (monoio 0.2 `Harness::poll` → `yield_now` → `push_front`), so it runs again before
/// any other task and, with IO polled only every few turns, starves them: a lane's chunked
/// job kept a victim's reader from running until the job was done. So the yielding task is
/// woken by another one, this thread's yielder, which is queued at the back (behind every
/// task already ready) and wakes it from there, to the back again. No allocation per yield:
/// the waker list keeps its capacity.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            YIELDED.with(|y| y.borrow_mut().push(cx.waker().clone()));
            match YIELDER.with(|w| w.take()) {
                Some(w) => w.wake(),
                None if !YIELDER_SPAWNED.with(|s| s.replace(true)) => {
                    drop(monoio::spawn(yielder()));
                }
                // Already woken: it is in the run queue and takes this one too.
                None => {}
            }
            Poll::Pending
        }
    }
    YieldNow(false).await
}

thread_local! {
    /// Tasks that yielded since the yielder last ran.
    static YIELDED: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    /// The yielder's waker while it waits for work.
    static YIELDER: Cell<Option<Waker>> = const { Cell::new(None) };
    static YIELDER_SPAWNED: Cell<bool> = const { Cell::new(false) };
}

/// This thread's yielder: wakes the tasks that yielded, then waits to be woken again.
async fn yielder() {
    std::future::poll_fn(|cx| {
        // Waking only queues a task (at the back, as it is not the one running).
        YIELDED.with(|y| y.borrow_mut().drain(..).for_each(Waker::wake));
        YIELDER.with(|w| w.set(Some(cx.waker().clone())));
        Poll::<()>::Pending
    })
    .await
}

/// Drops the wakers of tasks that yielded and were not resumed, while their runtime still
/// runs (a core calls it when it is done, before its runtime goes).
pub fn forget_yielded() {
    let left: Vec<Waker> = YIELDED.with(|y| y.borrow_mut().drain(..).collect());
    drop(left);
    drop(YIELDER.with(|w| w.take()));
    YIELDER_SPAWNED.with(|s| s.set(false));
}

/// Longest one busy-polling episode runs before the core parks once: monoio runs its timers
/// (the ticker, batch delays) only when it parks, and their wheel counts in milliseconds.
const BUSY_EPISODE_CAP: Duration = Duration::from_millis(1);

/// Busy-polling on one core (`server.busy_poll_us`). The read loops count their reads; the
/// core's spinner task, woken by the first read after it stopped, stays ready for `window`
/// after the last read, so the runtime polls its driver without waiting (`epoll_wait` with a
/// zero timeout, or an io_uring submit and completion reap) between turns instead of putting
/// the thread to sleep: a request that arrives meanwhile costs no wake-up of a sleeping
/// thread. Off (window zero), reads count nothing and no spinner runs.
pub struct BusyPoll {
    window: Duration,
    reads: Cell<u64>,
    spinning: Cell<bool>,
    wake: Notify,
}

impl BusyPoll {
    pub fn new(window: Duration) -> BusyPoll {
        BusyPoll {
            window,
            reads: Cell::new(0),
            spinning: Cell::new(false),
            wake: Notify::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// A read took bytes from a connection.
    #[inline]
    pub fn note_read(&self) {
        if self.enabled() {
            self.reads.set(self.reads.get().wrapping_add(1));
            if !self.spinning.get() {
                self.wake.notify();
            }
        }
    }

    /// The spinner (spawned once per core when enabled). Each episode ends `window` after
    /// the last read it saw, and at most [`BUSY_EPISODE_CAP`] after it began, so that the
    /// runtime parks (and runs its timers) at least that often under steady load.
    pub async fn spin(&self) {
        loop {
            self.wake.wait().await;
            self.spinning.set(true);
            let begun = Instant::now();
            let cap = begun + BUSY_EPISODE_CAP.max(self.window);
            let mut seen = self.reads.get();
            let mut until = begun + self.window;
            loop {
                // To the back of the run queue: the runtime polls the driver between turns.
                yield_now().await;
                let now = Instant::now();
                let n = self.reads.get();
                if n != seen {
                    seen = n;
                    until = (now + self.window).min(cap);
                }
                if now >= until {
                    break;
                }
            }
            self.spinning.set(false);
        }
    }
}
