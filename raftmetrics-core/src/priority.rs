//! Scheduling priority of the threads that do bulk work nobody waits for at the moment:
//! applying committed entries to the store (writes are acknowledged at commit, ADR 014) and
//! checkpointing it. They run at a lower priority (a higher nice value) than the raft loop
//! and the network tasks, so that on a busy machine an acknowledgement does not queue behind
//! them; they still get every cycle those leave idle, and the applier's bounded backlog
//! makes the writers wait when it falls too far behind (ADR 015).

/// The nice value of background threads (0 is the default, 19 the lowest priority).
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread to [`BACKGROUND_NICE`]. On Linux the nice value belongs to the
/// thread; elsewhere, and where the system refuses, this changes nothing (logged at debug).
pub fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE) {
            tracing::debug!(error = %e, "could not lower a background thread's priority");
        }
    }
}
