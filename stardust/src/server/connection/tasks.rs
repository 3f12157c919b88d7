//! Calls that outlive the read loop's batch (handlers that did not finish at once, forwarded
//! calls waiting for their provider): registered so a `Cancel`, a drain or the connection's end
//! can reach them, and counted toward the in-flight cap while they run.

use super::*;

/// Decrements a connection's running-call count when a call that outlived its batch ends,
/// however it ends (finished, cancelled, aborted with its connection).
pub(super) struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a registered call is stopped: a task of its own is aborted; a forwarded call driven by
/// the connection's forwarding task is dropped at once, in place.
pub(super) enum Stop {
    Task(AbortHandle),
    Forwarded(Arc<forward::Slot>),
}

impl Stop {
    /// Call it without the connection's call table locked: dropping a forwarded call sends its
    /// `Cancel` upstream from here.
    pub(super) fn abort(&self) {
        match self {
            Stop::Task(t) => t.abort(),
            Stop::Forwarded(f) => f.cancel(),
        }
    }
}

/// A call's place in the connection's bookkeeping: its key in [`InFlight::tasks`] (what
/// [`ServerConn::call_done`] takes back), the number telling it from a later call that reuses
/// its id, and its share of the in-flight count.
pub(super) struct Registered {
    pub(super) key: (bool, u64),
    pub(super) task_id: u64,
    pub(super) running: Running,
}

impl ServerConn {
    /// Registers the call `h` starts and starts it with `start`, which returns how to stop it.
    /// All under the lock: the call's own removal ([`ServerConn::call_done`]) cannot race
    /// ahead of its registration. A client reusing the id of a call still running gets both
    /// answered, but only the newest can be cancelled.
    pub(super) fn register(&self, h: &Header, start: impl FnOnce(Registered) -> Stop) {
        let mut calls = self.calls.lock();
        let one_way = h.flags & FLAG_ONE_WAY != 0;
        let key = (one_way, if one_way { calls.next_task } else { h.id });
        let task_id = calls.next_task;
        calls.next_task += 1;
        self.running.fetch_add(1, Ordering::AcqRel);
        let stop = start(Registered {
            key,
            task_id,
            running: Running(self.running.clone()),
        });
        calls.tasks.insert(key, (task_id, stop));
    }

    /// Runs the future `make` builds as a task of its own, registered (for cancellation and
    /// drain) under the request's id. The future must report `call_done(key, task_id)` itself.
    pub(super) fn track<F>(&self, h: &Header, make: impl FnOnce((bool, u64), u64) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.register(h, |r| {
            let call = make(r.key, r.task_id);
            let running = r.running;
            let task = tokio::spawn(async move {
                let _running = running;
                call.await
            });
            Stop::Task(task.abort_handle())
        });
    }
}
