//! Calls that run as tasks of their own: registered so a `Cancel`, a drain or the connection's
//! end can reach them, and counted toward the in-flight cap while they run.

use super::*;

/// Decrements a connection's running-call count when a spawned call's task ends, however it
/// ends (finished, cancelled, aborted with its connection).
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ServerConn {
    /// Runs the future `make` builds as a task of its own, registered (for cancellation and
    /// drain) under the request's id. The future must report `call_done(key, task_id)` itself.
    pub(super) fn track<F>(&self, h: &Header, make: impl FnOnce((bool, u64), u64) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Register before the task can run, under the lock, so its own removal cannot race ahead.
        let mut calls = self.calls.lock();
        let one_way = h.flags & FLAG_ONE_WAY != 0;
        let key = (one_way, if one_way { calls.next_task } else { h.id });
        let task_id = calls.next_task;
        calls.next_task += 1;
        self.running.fetch_add(1, Ordering::AcqRel);
        let running = Running(self.running.clone());
        let call = make(key, task_id);
        let task = tokio::spawn(async move {
            let _running = running;
            call.await
        });
        // A client reusing the id of a call still running gets both answered, but only the newest
        // can be cancelled.
        calls.tasks.insert(key, (task_id, task.abort_handle()));
    }
}
