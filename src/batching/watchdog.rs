//! Stops an ONNX Runtime call in progress when nobody waits for its result any more.
//!
//! A worker arms the watchdog with the requests in each call it makes. Its thread looks every few milliseconds
//! and, once every one of them has been cancelled (its client went away) or has passed its deadline, sets the
//! terminate flag on the pipeline's run options: ONNX Runtime then ends the run at its next node instead of
//! finishing a step (or a decode) whose output would be thrown away. A call shared with a request that still
//! waits is never stopped; that request's neighbours leave at the next step boundary instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ort::session::RunOptions;

/// How often an armed watchdog looks.
const POLL: Duration = Duration::from_millis(5);

/// One request in the call being watched.
#[derive(Clone)]
pub(super) struct Member {
    pub cancel: Arc<AtomicBool>,
    pub deadline: Option<Instant>,
}

impl Member {
    fn ended(&self, now: Instant) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.deadline.is_some_and(|deadline| now >= deadline)
    }
}

struct Watch {
    options: Arc<RunOptions>,
    members: Vec<Member>,
    terminated: bool,
}

#[derive(Default)]
struct State {
    watch: Option<Watch>,
    stop: bool,
}

pub(super) struct Watchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent whatever a panicking holder did: every field is written whole.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watchdog {
    pub(super) fn start(name: String) -> std::io::Result<Self> {
        let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let watched = shared.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let (mutex, wake) = &*watched;
            let mut state = lock(mutex);
            while !state.stop {
                let now = Instant::now();
                let mut armed = false;
                if let Some(watch) = state.watch.as_mut() {
                    armed = !watch.terminated;
                    if armed && !watch.members.is_empty() && watch.members.iter().all(|member| member.ended(now)) {
                        match watch.options.terminate() {
                            Ok(()) => watch.terminated = true,
                            Err(err) => tracing::warn!(error = %err, "cannot stop an ONNX Runtime run"),
                        }
                        armed = false;
                    }
                }
                state = if armed {
                    wake.wait_timeout(state, POLL)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0)
                } else {
                    wake.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner())
                };
            }
        })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Watches the call about to run with `options` on behalf of `members`.
    pub(super) fn arm(&self, options: Arc<RunOptions>, members: Vec<Member>) {
        let (mutex, wake) = &*self.shared;
        lock(mutex).watch = Some(Watch {
            options,
            members,
            terminated: false,
        });
        wake.notify_one();
    }

    /// Ends the watch after the call returned; true when the watchdog stopped it.
    pub(super) fn disarm(&self) -> bool {
        let (mutex, _) = &*self.shared;
        lock(mutex).watch.take().is_some_and(|watch| watch.terminated)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (mutex, wake) = &*self.shared;
        lock(mutex).stop = true;
        wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(cancelled: bool, deadline: Option<Instant>) -> Member {
        Member {
            cancel: Arc::new(AtomicBool::new(cancelled)),
            deadline,
        }
    }

    #[test]
    fn a_member_ends_when_cancelled_or_past_its_deadline() {
        let now = Instant::now();
        assert!(!member(false, None).ended(now));
        assert!(member(true, None).ended(now));
        assert!(member(false, Some(now)).ended(now));
        assert!(!member(false, Some(now + Duration::from_secs(5))).ended(now));
    }
}
