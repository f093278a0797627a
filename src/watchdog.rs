//! The query-timeout watchdog: ONE thread for the whole process.
//!
//! A statement with a timeout registers `(deadline, canceller)` before it runs
//! and deregisters when it ends. Each thread has a registration slot of its
//! own, which the watchdog's thread scans: a statement arms it with one
//! store and disarms it with one compare-and-swap, without the watchdog's
//! lock (the canceller is stored again only when it changes, so a loop on
//! one connection shares nothing with other threads). A registration made
//! while the thread's slot is in use (or on a second watchdog) goes to a slab
//! of timers under the lock. Statements usually end long before their
//! deadline, so the ordering is left to the thread, which scans when it
//! wakes. The thread is woken only when the new deadline comes before the
//! time it sleeps until. The thread sleeps until the earliest deadline; on
//! expiry it
//!
//! 1. marks the registration as fired and starts the backend's soft cancel
//!    (PostgreSQL cancel request, MySQL `KILL QUERY`, SQLite interrupt) on a
//!    short-lived thread of its own, so that a cancel sent to a hung server
//!    never delays another deadline;
//! 2. arms a second timer, [`ABORT_GRACE`] later: if the caller is still
//!    blocked then (the server does not answer at all), the connection's
//!    transport is cut ([`Canceller::abort`]) so the caller gets control back.
//!
//! Deregistration waits until a started cancel has finished (bounded by
//! [`CANCEL_WAIT`]), so a late cancel can never hit the next statement that
//! runs on the same connection.
//!
//! The same thread calls the registered [`Sweep`]ers (the pools' leak
//! detectors) every [`SWEEP_EVERY`] while any are registered.

use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::backend::Canceller;
use crate::error::{Error, ErrorKind, Result};

/// How long after a fired deadline the transport is cut if the caller is
/// still blocked (the soft cancel did not reach a working server).
pub(crate) const ABORT_GRACE: Duration = Duration::from_secs(1);

/// The longest a caller waits at deregistration for a started cancel to finish.
pub(crate) const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Soft cancels allowed to run at once; past that the transport is cut at once.
const MAX_CANCELS: usize = 64;

/// How often sweepers run.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Something the watchdog thread calls periodically (a pool's leak detector).
pub(crate) trait Sweep: Send + Sync + 'static {
    /// Looks around; called on the watchdog thread, must be quick.
    fn sweep(&self, now: Instant);
}

/// What a deregistration found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fired {
    /// The statement ended before its deadline.
    No,
    /// The deadline passed and the cancel finished.
    Cancelled,
    /// The deadline passed and the cancel had not finished within
    /// [`CANCEL_WAIT`], or the caller stayed blocked until its connection
    /// was cut: the server did not answer; the connection must be discarded.
    Unfinished,
}

/// A registration, returned by [`Watchdog::arm`]. [`disarm`](Armed::disarm)
/// it when the statement ends; dropped without that (a panic, an early
/// return) it deregisters all the same, so no deadline outlives its
/// statement and fires at whatever the connection runs next.
///
/// It stays on the thread that armed it (its slot is that thread's).
#[must_use = "dropping the registration deregisters the deadline at once"]
pub(crate) struct Armed<'w> {
    dog: &'w Watchdog,
    reg: Option<Reg>,
    /// Not `Send`: a registration in the thread's slot is disarmed there.
    _here: PhantomData<*const ()>,
}

/// Where a registration is.
#[derive(Debug)]
enum Reg {
    /// In the arming thread's slot, with this deadline value.
    Slot(Arc<Slot>, u64),
    /// In the slab.
    Slab(Key),
}

impl Armed<'_> {
    /// Deregisters the statement, which ended (well or not), and says whether
    /// its deadline fired. Waits for a started cancel to finish, at most
    /// [`CANCEL_WAIT`].
    pub(crate) fn disarm(mut self) -> Fired {
        match self.reg.take() {
            Some(reg) => self.dog.deregister(reg),
            None => Fired::No,
        }
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if let Some(reg) = self.reg.take() {
            self.dog.deregister(reg);
        }
    }
}

impl std::fmt::Debug for Armed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed").field("reg", &self.reg).finish()
    }
}

/// `Slot::state` of a slot with no statement registered.
const IDLE: u64 = 0;
/// `Slot::state` of a slot whose deadline fired: the statement's thread
/// settles it under the lock.
const FIRING: u64 = 1;

/// One thread's registration slot, scanned by the timer thread.
struct Slot {
    /// [`IDLE`], [`FIRING`], or the deadline: nanoseconds since the
    /// watchdog's epoch, plus 2.
    state: AtomicU64,
    /// The canceller of the statement registered; written by the slot's
    /// thread only while the slot is idle, read by the timer thread only
    /// after it claimed the slot ([`FIRING`]). Weak: a slot does not keep a
    /// closed connection's canceller alive.
    canceller: Mutex<Weak<dyn Canceller>>,
    /// The address of that canceller, to tell a new one cheaply.
    canceller_at: AtomicUsize,
    /// The registration number of the fired deadline (set with [`FIRING`],
    /// under the watchdog's lock).
    fired_id: AtomicU64,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

thread_local! {
    /// This thread's slot, and the number of the watchdog it belongs to.
    static SLOT: RefCell<Option<(u64, Arc<Slot>)>> = const { RefCell::new(None) };
}

/// The data address of a canceller.
fn address(c: &Arc<dyn Canceller>) -> usize {
    Arc::as_ptr(c).cast::<()>() as usize
}

enum Timer {
    /// A statement's deadline.
    Deadline(Arc<dyn Canceller>),
    /// The hard stop after a fired deadline, with the deadline's
    /// registration number.
    Abort(Arc<dyn Canceller>, u64),
}

struct Firing {
    /// The soft cancel has returned.
    done: bool,
    /// The transport was cut: the connection is lost, so a soft cancel still
    /// under way can no longer hit another statement and is not waited for.
    aborted: bool,
    /// Key of the abort timer, removed when the caller deregisters.
    abort_key: Key,
}

/// A timer's place in the slab and its registration number (which tells a
/// reused slot's new timer from the one a stale key meant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    slot: usize,
    id: u64,
}

/// One entry of the timer slab.
struct Entry {
    /// The registration using the slot; 0 when free.
    id: u64,
    at: Instant,
    timer: Option<Timer>,
}

/// The pending timers: a slab of slots with a free list. Adding and removing
/// are O(1) and allocate nothing once the slab has grown to the number of
/// statements running at once; the earliest is found by a scan, on the
/// timer thread only.
#[derive(Default)]
struct Timers {
    entries: Vec<Entry>,
    free: Vec<usize>,
    len: usize,
}

impl Timers {
    fn insert(&mut self, id: u64, at: Instant, timer: Timer) -> Key {
        let slot = match self.free.pop() {
            Some(i) => {
                self.entries[i] = Entry {
                    id,
                    at,
                    timer: Some(timer),
                };
                i
            }
            None => {
                self.entries.push(Entry {
                    id,
                    at,
                    timer: Some(timer),
                });
                self.entries.len() - 1
            }
        };
        self.len += 1;
        Key { slot, id }
    }

    fn remove(&mut self, key: Key) -> Option<Timer> {
        let s = self.entries.get_mut(key.slot)?;
        if s.id != key.id || key.id == 0 {
            return None;
        }
        s.id = 0;
        let timer = s.timer.take();
        self.free.push(key.slot);
        self.len -= 1;
        timer
    }

    /// Takes out every timer due at `now`, earliest first.
    fn take_due(&mut self, now: Instant) -> Vec<(Key, Instant, Timer)> {
        let mut due = Vec::new();
        for (i, s) in self.entries.iter_mut().enumerate() {
            if s.id != 0 && s.at <= now {
                if let Some(t) = s.timer.take() {
                    due.push((Key { slot: i, id: s.id }, s.at, t));
                }
                s.id = 0;
                self.free.push(i);
                self.len -= 1;
            }
        }
        due.sort_by_key(|(_, at, _)| *at);
        due
    }

    /// The earliest deadline pending.
    fn earliest(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|s| s.id != 0)
            .map(|s| s.at)
            .min()
    }
}

#[derive(Default)]
struct State {
    timers: Timers,
    firing: HashMap<u64, Firing>,
    next_id: u64,
    cancels_running: usize,
    sweepers: Vec<Weak<dyn Sweep>>,
    /// The threads' slots (one whose thread ended is dropped when idle).
    slots: Vec<Arc<Slot>>,
    /// Counters for tests and metrics.
    fired_total: u64,
    aborted_total: u64,
}

/// The process-wide watchdog.
pub(crate) struct Watchdog {
    /// Tells watchdogs apart in the threads' slots.
    number: u64,
    /// Deadlines in slots count from here.
    epoch: Instant,
    /// When the timer thread, parked, will wake by itself (as a slot's
    /// deadline); 0 while it runs (it reads the slots and the slab again
    /// before parking). Written under the lock.
    parked: AtomicU64,
    state: Mutex<State>,
    /// Wakes the timer thread (a new earliest deadline, a new sweeper).
    wake: Condvar,
    /// Wakes callers waiting for a cancel to finish.
    cancel_done: Condvar,
}

impl Watchdog {
    /// The watchdog of this process; its thread starts on first use.
    pub(crate) fn global() -> Result<&'static Arc<Watchdog>> {
        static GLOBAL: OnceLock<std::result::Result<Arc<Watchdog>, String>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Watchdog::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    format!("the query-timeout watchdog thread could not be started: {e}"),
                )
            })
    }

    /// A watchdog with its own thread (one per process in use; tests make more).
    pub(crate) fn start() -> std::io::Result<Arc<Watchdog>> {
        static NUMBER: AtomicU64 = AtomicU64::new(1);
        let dog = Arc::new(Watchdog {
            number: NUMBER.fetch_add(1, Ordering::Relaxed),
            epoch: Instant::now(),
            parked: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            cancel_done: Condvar::new(),
        });
        let weak = Arc::downgrade(&dog);
        std::thread::Builder::new()
            .name("dbmanager-watchdog".into())
            .spawn(move || run(weak))?;
        Ok(dog)
    }

    /// A deadline as a slot holds it.
    fn slot_value(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX - 2)
            .min(u64::MAX - 2)
            + 2
    }

    /// The instant a slot's deadline value stands for.
    fn slot_instant(&self, value: u64) -> Instant {
        self.epoch + Duration::from_nanos(value - 2)
    }

    /// Registers a statement that must end by `deadline`.
    pub(crate) fn arm(&self, deadline: Instant, canceller: &Arc<dyn Canceller>) -> Armed<'_> {
        let reg = match self.arm_slot(deadline, canceller) {
            Some(reg) => reg,
            None => Reg::Slab(self.arm_slab(deadline, canceller)),
        };
        Armed {
            dog: self,
            reg: Some(reg),
            _here: PhantomData,
        }
    }

    /// Registers in this thread's slot; `None` when it is in use (a
    /// registration inside another) or thread-locals are gone.
    fn arm_slot(&self, deadline: Instant, canceller: &Arc<dyn Canceller>) -> Option<Reg> {
        let slot = SLOT
            .try_with(|cell| {
                let mut cell = cell.try_borrow_mut().ok()?;
                match &*cell {
                    Some((n, slot)) if *n == self.number => {
                        return (slot.state.load(Ordering::Relaxed) == IDLE)
                            .then(|| Arc::clone(slot));
                    }
                    // Another watchdog's slot, in use: leave it.
                    Some((_, slot)) if slot.state.load(Ordering::Relaxed) != IDLE => {
                        return None;
                    }
                    _ => {}
                }
                let slot = Arc::new(Slot {
                    state: AtomicU64::new(IDLE),
                    canceller: Mutex::new(Weak::<NoCancel>::new()),
                    canceller_at: AtomicUsize::new(0),
                    fired_id: AtomicU64::new(0),
                });
                self.state.lock().slots.push(Arc::clone(&slot));
                *cell = Some((self.number, Arc::clone(&slot)));
                Some(slot)
            })
            .ok()
            .flatten()?;
        let at = address(canceller);
        if slot.canceller_at.load(Ordering::Relaxed) != at {
            *slot.canceller.lock() = Arc::downgrade(canceller);
            slot.canceller_at.store(at, Ordering::Relaxed);
        }
        let value = self.slot_value(deadline);
        slot.state.store(value, Ordering::SeqCst);
        // Wake the thread only if it would otherwise sleep past this
        // deadline: the usual statement (a limit of seconds, ended in
        // milliseconds) costs no system call and no context switch. (The
        // thread stores `parked` before it reads the slots: either it sees
        // this deadline, or this sees when it parks.)
        let parked = self.parked.load(Ordering::SeqCst);
        if parked != 0 && value < parked {
            self.wake_thread();
        }
        Some(Reg::Slot(slot, value))
    }

    /// Wakes the timer thread to read the deadlines again.
    #[cold]
    fn wake_thread(&self) {
        let st = self.state.lock();
        self.parked.store(0, Ordering::SeqCst);
        drop(st);
        self.wake.notify_one();
    }

    /// Registers in the slab, under the lock.
    fn arm_slab(&self, deadline: Instant, canceller: &Arc<dyn Canceller>) -> Key {
        let canceller = Arc::clone(canceller);
        let value = self.slot_value(deadline);
        let mut st = self.state.lock();
        let id = st.new_id();
        let key = st.timers.insert(id, deadline, Timer::Deadline(canceller));
        let parked = self.parked.load(Ordering::SeqCst);
        let wake = parked != 0 && value < parked;
        if wake {
            self.parked.store(0, Ordering::SeqCst);
        }
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        key
    }

    /// See [`Armed::disarm`].
    fn deregister(&self, reg: Reg) -> Fired {
        match reg {
            Reg::Slot(slot, value) => {
                if slot
                    .state
                    .compare_exchange(value, IDLE, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Fired::No;
                }
                // The timer thread claimed it: its deadline fired.
                let st = self.state.lock();
                let id = slot.fired_id.load(Ordering::Relaxed);
                let fired = self.settle_fired(st, id);
                slot.state.store(IDLE, Ordering::SeqCst);
                fired
            }
            Reg::Slab(key) => {
                let mut st = self.state.lock();
                if let Some(timer) = st.timers.remove(key) {
                    // The canceller is dropped after the lock is let go.
                    drop(st);
                    drop(timer);
                    return Fired::No;
                }
                self.settle_fired(st, key.id)
            }
        }
    }

    /// The deregistration of a statement whose deadline (registration `id`)
    /// fired: waits for its cancel to finish, at most [`CANCEL_WAIT`].
    fn settle_fired(&self, mut st: parking_lot::MutexGuard<'_, State>, id: u64) -> Fired {
        let give_up = Instant::now() + CANCEL_WAIT;
        loop {
            let Some(f) = st.firing.get(&id) else {
                // Not ours any more: cannot happen, but never hang on it.
                return Fired::Cancelled;
            };
            if f.done || f.aborted {
                let (abort_key, aborted) = (f.abort_key, f.aborted);
                st.firing.remove(&id);
                st.timers.remove(abort_key);
                // Cut after the grace: the server did not answer the cancel
                // in time, whether or not the cancel request itself returned.
                return if aborted {
                    Fired::Unfinished
                } else {
                    Fired::Cancelled
                };
            }
            if self.cancel_done.wait_until(&mut st, give_up).timed_out() {
                if let Some(f) = st.firing.remove(&id) {
                    st.timers.remove(f.abort_key);
                }
                return Fired::Unfinished;
            }
        }
    }

    /// Adds a sweeper, called every [`SWEEP_EVERY`] while it lives.
    pub(crate) fn add_sweeper(&self, s: Weak<dyn Sweep>) {
        let mut st = self.state.lock();
        st.sweepers.push(s);
        self.parked.store(0, Ordering::SeqCst);
        drop(st);
        self.wake.notify_one();
    }

    /// Deadlines fired and transports cut since the watchdog started.
    #[cfg(test)]
    fn counts(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.fired_total, st.aborted_total)
    }

    /// Timers pending (deadlines and abort timers).
    #[cfg(test)]
    fn pending(&self) -> usize {
        let st = self.state.lock();
        let armed = st
            .slots
            .iter()
            .filter(|s| s.state.load(Ordering::SeqCst) != IDLE)
            .count();
        st.timers.len + armed
    }
}

impl State {
    /// A registration number, never 0 (which marks a free slot).
    fn new_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }
}

/// The timer thread. Holds the watchdog weakly so a test watchdog ends.
fn run(weak: Weak<Watchdog>) {
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    loop {
        // A panic in a turn (a backend's cut, a sweeper) must not end the
        // thread: every later deadline would silently never fire.
        match std::panic::catch_unwind(AssertUnwindSafe(|| turn(&weak, &mut next_sweep))) {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                tracing::error!("a watchdog turn panicked; the watchdog thread goes on");
            }
        }
    }
}

/// One turn of the timer thread: fires what is due, sweeps when it is
/// time, parks until the next deadline. False when the thread should end.
fn turn(weak: &Weak<Watchdog>, next_sweep: &mut Instant) -> bool {
    {
        let Some(dog) = weak.upgrade() else {
            return false;
        };
        if Arc::strong_count(&dog) == 1 {
            // Nobody else holds this watchdog (only tests drop theirs).
            return false;
        }
        let mut st = dog.state.lock();
        let now = Instant::now();
        fire_slots(&dog, &mut st, now);
        for (key, _, timer) in st.timers.take_due(now) {
            match timer {
                Timer::Deadline(c) => fire(&dog, &mut st, key.id, c, now),
                Timer::Abort(c, id) => {
                    // Still registered: the caller is still blocked.
                    if let Some(f) = st.firing.get_mut(&id) {
                        if c.abort() {
                            f.aborted = true;
                            st.aborted_total += 1;
                            dog.cancel_done.notify_all();
                        } else {
                            tracing::debug!(
                                "the backend cannot cut this connection; waiting for the server"
                            );
                        }
                    }
                }
            }
        }
        if now >= *next_sweep {
            st.sweepers.retain(|s| s.strong_count() > 0);
            let sweepers: Vec<Arc<dyn Sweep>> =
                st.sweepers.iter().filter_map(Weak::upgrade).collect();
            drop(st);
            for s in &sweepers {
                s.sweep(now);
            }
            *next_sweep = now + SWEEP_EVERY;
            st = dog.state.lock();
        }
        let next_timer = st.timers.earliest();
        let until = match (next_timer, st.sweepers.is_empty()) {
            (Some(t), true) => Some(t),
            (Some(t), false) => Some(t.min(*next_sweep)),
            (None, false) => Some(*next_sweep),
            (None, true) => None,
        };
        // Idle parks are capped so that a dropped (test) watchdog's thread ends.
        let until = until.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        // Said before the slots are read: a deadline stored after this read
        // sees it, and wakes the thread if it comes first.
        dog.parked.store(dog.slot_value(until), Ordering::SeqCst);
        let until = match earliest_slot(&dog, &st) {
            Some(t) if t < until => {
                dog.parked.store(dog.slot_value(t), Ordering::SeqCst);
                t
            }
            _ => until,
        };
        dog.wake.wait_until(&mut st, until);
        dog.parked.store(0, Ordering::SeqCst);
    }
    true
}

/// Claims every slot whose deadline passed and fires it; drops the slots
/// of threads that ended.
fn fire_slots(dog: &Arc<Watchdog>, st: &mut State, now: Instant) {
    let now_value = dog.slot_value(now);
    let mut i = 0;
    while i < st.slots.len() {
        let slot = Arc::clone(&st.slots[i]);
        i += 1;
        let value = slot.state.load(Ordering::SeqCst);
        if value < 2 || value > now_value {
            if value == IDLE && Arc::strong_count(&slot) == 2 {
                // Only the list and this loop hold it: its thread ended.
                i -= 1;
                st.slots.swap_remove(i);
            }
            continue;
        }
        if slot
            .state
            .compare_exchange(value, FIRING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Disarmed (or armed again) meanwhile.
            continue;
        }
        let id = st.new_id();
        slot.fired_id.store(id, Ordering::Relaxed);
        let canceller: Arc<dyn Canceller> = match slot.canceller.lock().upgrade() {
            Some(c) => c,
            // Cannot happen while the statement runs; never hang on it.
            None => Arc::new(NoCancel),
        };
        fire(dog, st, id, canceller, now);
    }
}

/// The earliest deadline in a slot.
fn earliest_slot(dog: &Watchdog, st: &State) -> Option<Instant> {
    st.slots
        .iter()
        .map(|s| s.state.load(Ordering::SeqCst))
        .filter(|v| *v >= 2)
        .min()
        .map(|v| dog.slot_instant(v))
}

/// A deadline passed: start the soft cancel off this thread, arm the abort.
fn fire(dog: &Arc<Watchdog>, st: &mut State, id: u64, c: Arc<dyn Canceller>, now: Instant) {
    st.fired_total += 1;
    let busy = st.cancels_running >= MAX_CANCELS;
    let abort_at = if busy { now } else { now + ABORT_GRACE };
    let abort_id = st.new_id();
    let abort_key = st
        .timers
        .insert(abort_id, abort_at, Timer::Abort(Arc::clone(&c), id));
    st.firing.insert(
        id,
        Firing {
            done: busy,
            aborted: false,
            abort_key,
        },
    );
    if busy {
        tracing::warn!("too many cancels in flight; cutting the connection instead");
        return;
    }
    st.cancels_running += 1;
    let weak = Arc::downgrade(dog);
    let spawned = std::thread::Builder::new()
        .name("dbmanager-cancel".into())
        .spawn(move || {
            if let Err(e) = c.cancel() {
                tracing::warn!(error = %e, "sending the cancel request failed");
            }
            if let Some(dog) = weak.upgrade() {
                let mut st = dog.state.lock();
                st.cancels_running -= 1;
                if let Some(f) = st.firing.get_mut(&id) {
                    f.done = true;
                }
                drop(st);
                dog.cancel_done.notify_all();
            }
        });
    if spawned.is_err() {
        st.cancels_running -= 1;
        if let Some(f) = st.firing.get_mut(&id) {
            f.done = true;
        }
        // Cut at once instead.
        st.timers.remove(abort_key);
        let abort_id = st.new_id();
        let key = st
            .timers
            .insert(abort_id, now, Timer::Abort(Arc::new(NoCancel), id));
        if let Some(f) = st.firing.get_mut(&id) {
            f.abort_key = key;
        }
    }
}

/// Stands in when no cancel could be started.
struct NoCancel;

impl Canceller for NoCancel {
    fn cancel(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// Records cancels and aborts; the "statement" is a flag it clears.
    #[derive(Default)]
    struct Probe {
        cancels: AtomicU32,
        aborts: AtomicU32,
        cancel_delay: Option<Duration>,
        cancelled_at: Mutex<Option<Instant>>,
        stuck: AtomicBool,
    }

    impl Canceller for Probe {
        fn cancel(&self) -> Result<()> {
            if let Some(d) = self.cancel_delay {
                std::thread::sleep(d);
            }
            *self.cancelled_at.lock() = Some(Instant::now());
            self.cancels.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn abort(&self) -> bool {
            self.aborts.fetch_add(1, Ordering::SeqCst);
            self.stuck.store(false, Ordering::SeqCst);
            true
        }
    }

    /// Waits (at most 10 s) until `p` has been cancelled, as a statement
    /// runs until its cancel stops it.
    fn until_cancelled(p: &Probe) {
        let waited = Instant::now();
        while p.cancels.load(Ordering::SeqCst) == 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "the deadline never fired"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn probe() -> (Arc<Probe>, Arc<dyn Canceller>) {
        let p = Arc::new(Probe::default());
        let c: Arc<dyn Canceller> = p.clone();
        (p, c)
    }

    #[test]
    fn a_statement_that_ends_in_time_is_never_cancelled() -> std::io::Result<()> {
        let dog = Watchdog::start()?;
        let (p, c) = probe();
        for _ in 0..1000 {
            let armed = dog.arm(Instant::now() + Duration::from_secs(10), &c);
            assert_eq!(armed.disarm(), Fired::No);
        }
        assert_eq!(p.cancels.load(Ordering::SeqCst), 0);
        assert_eq!(dog.pending(), 0);
        Ok(())
    }

    #[test]
    fn deadlines_fire_earliest_first_even_when_registered_last() -> std::io::Result<()> {
        let dog = Watchdog::start()?;
        let start = Instant::now();
        let late: Vec<_> = (0..5).map(|_| probe()).collect();
        let late_armed: Vec<_> = late
            .iter()
            .map(|(_, c)| dog.arm(start + Duration::from_secs(30), c))
            .collect();
        // Registered after the late ones: must still wake the thread early.
        let (early, c) = probe();
        let armed = dog.arm(start + Duration::from_millis(50), &c);
        let waited = Instant::now();
        while early.cancels.load(Ordering::SeqCst) == 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(5),
                "the early deadline never fired"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(armed.disarm(), Fired::Cancelled);
        let at = early.cancelled_at.lock().expect("cancelled");
        assert!(
            at >= start + Duration::from_millis(50),
            "fired before its deadline"
        );
        for ((p, _), a) in late.iter().zip(late_armed) {
            assert_eq!(a.disarm(), Fired::No);
            assert_eq!(p.cancels.load(Ordering::SeqCst), 0);
        }
        assert_eq!(dog.pending(), 0, "disarming removes the abort timer too");
        Ok(())
    }

    #[test]
    fn a_deadline_in_a_threads_slot_wakes_a_parked_thread() -> std::io::Result<()> {
        let dog = Watchdog::start()?;
        let (late, late_c) = probe();
        let (early, early_c) = probe();
        std::thread::scope(|s| {
            // Each on a thread of its own: both in their thread's slot.
            let held = s.spawn(|| {
                let armed = dog.arm(Instant::now() + Duration::from_secs(30), &late_c);
                std::thread::sleep(Duration::from_millis(300));
                armed.disarm()
            });
            std::thread::sleep(Duration::from_millis(50));
            let start = Instant::now();
            let armed = dog.arm(start + Duration::from_millis(50), &early_c);
            assert_eq!(dog.pending(), 2, "both registered");
            until_cancelled(&early);
            assert_eq!(armed.disarm(), Fired::Cancelled);
            let at = early.cancelled_at.lock().expect("cancelled");
            assert!(at >= start + Duration::from_millis(50), "fired early");
            assert_eq!(held.join().ok(), Some(Fired::No));
        });
        assert_eq!(late.cancels.load(Ordering::SeqCst), 0);
        assert_eq!(dog.pending(), 0);
        // The slot is free for the next statement, which fires again.
        let armed = dog.arm(Instant::now() + Duration::from_millis(10), &early_c);
        let waited = Instant::now();
        while early.cancels.load(Ordering::SeqCst) < 2 {
            assert!(waited.elapsed() < Duration::from_secs(10), "never fired");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(armed.disarm(), Fired::Cancelled);
        Ok(())
    }

    #[test]
    fn many_deadlines_fire_once_each_in_order() -> std::io::Result<()> {
        let dog = Watchdog::start()?;
        let start = Instant::now();
        let probes: Vec<_> = (0..50).map(|_| probe()).collect();
        // Registered in reverse order of their deadlines.
        let armed: Vec<_> = probes
            .iter()
            .enumerate()
            .rev()
            .map(|(i, (_, c))| dog.arm(start + Duration::from_millis(20 + 4 * i as u64), c))
            .collect();
        for ((p, _), a) in probes.iter().rev().zip(armed) {
            until_cancelled(p);
            assert_eq!(a.disarm(), Fired::Cancelled);
        }
        let times: Vec<Instant> = probes
            .iter()
            .map(|(p, _)| p.cancelled_at.lock().expect("every deadline fired"))
            .collect();
        for (i, (p, _)) in probes.iter().enumerate() {
            assert_eq!(p.cancels.load(Ordering::SeqCst), 1, "probe {i}");
            assert!(times[i] >= start + Duration::from_millis(20 + 4 * i as u64));
        }
        assert_eq!(dog.counts().0, 50);
        Ok(())
    }

    #[test]
    fn a_slow_cancel_does_not_delay_other_deadlines() -> std::io::Result<()> {
        let dog = Watchdog::start()?;
        let start = Instant::now();
        let slow = Arc::new(Probe {
            cancel_delay: Some(Duration::from_secs(2)),
            ..Probe::default()
        });
        let slow_c: Arc<dyn Canceller> = slow.clone();
        let slow_armed = dog.arm(start + Duration::from_millis(10), &slow_c);
        let (quick, c) = probe();
        let quick_armed = dog.arm(start + Duration::from_millis(100), &c);
        until_cancelled(&quick);
        assert_eq!(quick_armed.disarm(), Fired::Cancelled);
        let at = quick.cancelled_at.lock().expect("fired");
        assert!(
            at < start + Duration::from_millis(1500),
            "the second deadline waited for the first one's slow cancel"
        );
        // The slow one's statement "stayed blocked" past the grace: its
        // transport was cut, so its cancel (still under way) is not waited for.
        std::thread::sleep(ABORT_GRACE);
        assert_eq!(slow_armed.disarm(), Fired::Unfinished);
        assert_eq!(slow.aborts.load(Ordering::SeqCst), 1);
        Ok(())
    }

    #[test]
    fn a_caller_still_blocked_after_the_grace_is_cut_loose() -> std::io::Result<()> {
        let dog = Watchdog::start()?;
        let p = Arc::new(Probe::default());
        p.stuck.store(true, Ordering::SeqCst);
        let c: Arc<dyn Canceller> = p.clone();
        let armed = dog.arm(Instant::now() + Duration::from_millis(10), &c);
        // The "statement" ignores the soft cancel and stays stuck until aborted.
        let waited = Instant::now();
        while p.stuck.load(Ordering::SeqCst) {
            assert!(waited.elapsed() < Duration::from_secs(10), "never aborted");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            armed.disarm(),
            Fired::Unfinished,
            "cut loose: the server never answered"
        );
        assert_eq!(p.cancels.load(Ordering::SeqCst), 1);
        assert_eq!(p.aborts.load(Ordering::SeqCst), 1);
        // A caller that returned after the soft cancel is never aborted.
        let (q, c) = probe();
        let armed = dog.arm(Instant::now() + Duration::from_millis(10), &c);
        while q.cancels.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(armed.disarm(), Fired::Cancelled);
        std::thread::sleep(ABORT_GRACE + Duration::from_millis(200));
        assert_eq!(q.aborts.load(Ordering::SeqCst), 0);
        Ok(())
    }

    #[test]
    fn a_registration_dropped_unfinished_never_fires() -> std::io::Result<()> {
        let dog = Watchdog::start()?;
        let (p, c) = probe();
        let unwound = std::panic::catch_unwind(AssertUnwindSafe(|| {
            // Far enough ahead that a loaded machine unwinds before it.
            let _armed = dog.arm(Instant::now() + Duration::from_millis(500), &c);
            panic!("a statement panicked between arm and disarm");
        }));
        assert!(unwound.is_err());
        assert_eq!(dog.pending(), 0, "the unwinding removed the registration");
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(p.cancels.load(Ordering::SeqCst), 0, "no late cancel");
        Ok(())
    }

    /// A backend whose cut panics.
    struct Panicky;

    impl Canceller for Panicky {
        fn cancel(&self) -> Result<()> {
            Ok(())
        }

        fn abort(&self) -> bool {
            panic!("the cut panicked");
        }
    }

    #[test]
    fn a_panic_on_the_timer_thread_does_not_stop_later_deadlines() -> std::io::Result<()> {
        let dog = Watchdog::start()?;
        let bad: Arc<dyn Canceller> = Arc::new(Panicky);
        let armed = dog.arm(Instant::now() + Duration::from_millis(10), &bad);
        // The cut (after the grace) panics on the watchdog's thread.
        std::thread::sleep(ABORT_GRACE + Duration::from_millis(300));
        drop(armed);
        let (p, c) = probe();
        let armed = dog.arm(Instant::now() + Duration::from_millis(10), &c);
        until_cancelled(&p);
        assert_eq!(armed.disarm(), Fired::Cancelled);
        Ok(())
    }

    #[test]
    fn registration_from_many_threads_keeps_the_map_consistent() -> std::io::Result<()> {
        let dog = Watchdog::start()?;
        let (p, c) = probe();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let a = dog.arm(Instant::now() + Duration::from_secs(60), &c);
                        assert_eq!(a.disarm(), Fired::No);
                    }
                });
            }
        });
        assert_eq!(dog.pending(), 0);
        assert_eq!(p.cancels.load(Ordering::SeqCst), 0);
        Ok(())
    }
}
