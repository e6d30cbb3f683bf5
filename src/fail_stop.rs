//! Fail-stop: what the server does when it finds its own state wrong (a
//! broken invariant in a snapshot's copy) or finds that it may no longer be
//! the database's only writer (its writer lock was taken by another server).
//! Serving on would spread the damage, so the process logs one line naming
//! the cause and exits non-zero; the next start recovers from the journal,
//! which only ever holds committed, checked events.
//!
//! The action is a value ([`FailStop`]) handed to the tasks that may need
//! it, so tests can watch it fire instead of losing their process.

use std::sync::Arc;

/// The exit code of a fail-stop (`EX_SOFTWARE` of sysexits.h: an internal
/// software error), distinct from a start-up refusal (1).
pub const FAIL_STOP_EXIT_CODE: i32 = 70;

/// Called with the reason; in production it does not return.
pub type FailStop = Arc<dyn Fn(&str) + Send + Sync>;

/// Logs `reason` as an error and exits the process with [`FAIL_STOP_EXIT_CODE`].
pub fn exit_process() -> FailStop {
    Arc::new(|reason: &str| {
        tracing::error!(exit_code = FAIL_STOP_EXIT_CODE, "fail-stop: {reason}");
        // The log line above may sit in a buffer of the subscriber's writer;
        // stderr gets the reason too, unbuffered, so it is never lost.
        eprintln!("fail-stop: {reason}");
        std::process::exit(FAIL_STOP_EXIT_CODE);
    })
}

/// The message of a caught panic (`assert!`/`panic!` payloads are a `&str`
/// or a `String`).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => (*message).to_owned(),
        (_, Some(message)) => message.clone(),
        _ => "a check panicked without a message".to_owned(),
    }
}
