//! The server under test as a child process: a free port, the drill's
//! environment (nothing inherited from `CONCERT_*`), one log file per start,
//! readiness, `kill -9` and SIGTERM. Dropping a [`ServerProcess`] kills it, so
//! no server outlives a round, whatever happens.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::client::{Api, ADMIN_KEY};

const READY_POLL: Duration = Duration::from_millis(50);
const EXIT_POLL: Duration = Duration::from_millis(50);
/// A restart may find the port briefly taken; it is retried this many times.
const START_ATTEMPTS: u32 = 3;
const START_RETRY_PAUSE: Duration = Duration::from_millis(300);
const LOG_TAIL_LINES: usize = 12;
const LOG_TAIL_LINE_CHARS: usize = 300;

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub binary: PathBuf,
    pub port: u16,
    pub database_url: String,
    pub hold_timeout: Duration,
    /// Applied last, over the drill's settings.
    pub extra_env: Vec<(String, String)>,
}

/// A port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|err| format!("cannot bind 127.0.0.1:0: {err}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|err| format!("cannot read the bound port: {err}"))
}

pub struct ServerProcess {
    /// `None` once it has exited and been reaped.
    child: Option<Child>,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts the server and waits until `GET /ready` is 200; retries when
    /// it exits early (e.g. the port was not free yet).
    pub async fn start(spec: &ServerSpec, log: &Path, api: &Api, ready_timeout: Duration) -> Result<Self, String> {
        let mut attempt = 1;
        loop {
            let mut server = Self::spawn(spec, log)?;
            match server.wait_ready(api, ready_timeout).await {
                Ok(()) => return Ok(server),
                Err(Start::Exited(_)) if attempt < START_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(START_RETRY_PAUSE).await;
                }
                Err(Start::Exited(why) | Start::NotReady(why)) => return Err(why),
            }
        }
    }

    fn spawn(spec: &ServerSpec, log: &Path) -> Result<Self, String> {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|err| format!("cannot open the server log {}: {err}", log.display()))
        };
        let mut command = server_command(spec, std::env::vars_os().map(|(name, _)| name));
        command.stdin(Stdio::null()).stdout(open()?).stderr(open()?);
        let child = command
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", spec.binary.display()))?;
        Ok(Self {
            child: Some(child),
            log: log.to_owned(),
        })
    }

    async fn wait_ready(&mut self, api: &Api, timeout: Duration) -> Result<(), Start> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited().map_err(Start::NotReady)? {
                return Err(Start::Exited(format!(
                    "the server exited ({status}) before GET /ready was 200; {}",
                    self.log_tail()
                )));
            }
            if api.ready().await == Some(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Start::NotReady(format!(
                    "GET /ready was not 200 within {timeout:?}; {}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// `Some(status)` once the process has exited (it is then reaped).
    fn exited(&mut self) -> Result<Option<ExitStatus>, String> {
        let Some(child) = self.child.as_mut() else {
            return Err("the server is not running".to_owned());
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Ok(Some(status))
            }
            Ok(None) => Ok(None),
            Err(err) => Err(format!("cannot check the server process: {err}")),
        }
    }

    /// `kill -9` and reap. An error if it had already died by itself.
    pub fn kill9(&mut self) -> Result<(), String> {
        if let Some(status) = self.exited()? {
            return Err(format!(
                "the server had already exited ({status}) before the drill killed it; {}",
                self.log_tail()
            ));
        }
        let Some(mut child) = self.child.take() else {
            return Err("the server is not running".to_owned());
        };
        // `Child::kill` sends SIGKILL on Unix.
        child.kill().map_err(|err| format!("kill -9 failed: {err}"))?;
        child
            .wait()
            .map_err(|err| format!("waiting for the killed server failed: {err}"))?;
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for the exit status (then kills).
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Some(status) = self.exited()? {
            return Err(format!(
                "the server had already exited ({status}) before SIGTERM; {}",
                self.log_tail()
            ));
        }
        let Some(child) = self.child.as_mut() else {
            return Err("the server is not running".to_owned());
        };
        send_sigterm(child)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = self.child.take() {
                    // Best effort: it is reported either way.
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(format!(
                    "the server did not exit within {timeout:?} of SIGTERM (killed)"
                ));
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// The path and the last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail: Vec<String> = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
            .iter()
            .map(|line| line.chars().take(LOG_TAIL_LINE_CHARS).collect())
            .collect();
        format!("log {} ends with:\n    {}", self.log.display(), tail.join("\n    "))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Nothing to report from a drop: the child must just not outlive us.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The command that starts the server of `spec`: every `CONCERT_*` and
/// `DATABASE_URL` variable among `inherited` (the drill's own environment)
/// removed, then the drill's settings, then `spec.extra_env`. Whoever runs
/// the drill (or `cargo test`) with, say, `CONCERT_DURABILITY=async` in their
/// shell must not change what the round tests.
fn server_command(spec: &ServerSpec, inherited: impl Iterator<Item = std::ffi::OsString>) -> Command {
    let mut command = Command::new(&spec.binary);
    for name in inherited {
        if name.to_str().is_some_and(is_server_setting) {
            command.env_remove(name);
        }
    }
    let hold_timeout = format!("{}ms", spec.hold_timeout.as_millis());
    command
        .env("CONCERT_ADDR", format!("127.0.0.1:{}", spec.port))
        .env("DATABASE_URL", &spec.database_url)
        .env("CONCERT_ADMIN_KEY", ADMIN_KEY)
        .env("CONCERT_DURABILITY", "sync")
        .env("CONCERT_DEMO_DATA", "false")
        .env("CONCERT_HOLD_TIMEOUT", hold_timeout)
        .env("CONCERT_EXPIRY_TICK", "100ms")
        .env("CONCERT_QUEUE_TICK", "100ms")
        .env("CONCERT_QUEUE_ADMIT_PER_TICK", "1000")
        .env("CONCERT_QUEUE_MAX_ACTIVE", "100000")
        .env("CONCERT_SNAPSHOT_INTERVAL", "1s")
        .env("CONCERT_LOG_FORMAT", "json")
        .envs(spec.extra_env.iter().map(|(k, v)| (k, v)));
    command
}

/// A variable the server reads as a setting (`src/settings.rs`).
fn is_server_setting(name: &str) -> bool {
    name.starts_with("CONCERT_") || name == "DATABASE_URL"
}

enum Start {
    /// The process exited: worth another try.
    Exited(String),
    NotReady(String),
}

#[cfg(unix)]
fn send_sigterm(child: &mut Child) -> Result<(), String> {
    let pid = libc::pid_t::try_from(child.id()).map_err(|_| format!("pid {} out of range", child.id()))?;
    // SAFETY: kill(2) has no memory-safety preconditions. `pid` is our own
    // child, not yet reaped (we hold its `Child` and `try_wait` said it is
    // running), so it cannot name another process.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("SIGTERM failed: {}", std::io::Error::last_os_error()))
    }
}

#[cfg(not(unix))]
fn send_sigterm(child: &mut Child) -> Result<(), String> {
    child.kill().map_err(|err| format!("cannot stop the server: {err}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::ffi::{OsStr, OsString};

    use super::*;

    fn spec() -> ServerSpec {
        ServerSpec {
            binary: PathBuf::from("/nonexistent/concert-server"),
            port: 4321,
            database_url: "sqlite:///tmp/round/concert.db".to_owned(),
            hold_timeout: Duration::from_secs(3),
            extra_env: vec![("CONCERT_FLUSH_INTERVAL".to_owned(), "500ms".to_owned())],
        }
    }

    /// What the command does to each variable it touches: `None` removed,
    /// `Some(value)` set; a variable it does not name is inherited as is.
    fn envs(command: &Command) -> HashMap<String, Option<String>> {
        command
            .get_envs()
            .map(|(name, value)| {
                let text = |s: &OsStr| s.to_string_lossy().into_owned();
                (text(name), value.map(text))
            })
            .collect()
    }

    #[test]
    fn the_callers_server_settings_are_not_inherited() {
        let inherited = [
            "CONCERT_MAX_BODY_BYTES",
            "CONCERT_DURABILITY",
            "CONCERT_TIMEZONE",
            "DATABASE_URL",
            "PATH",
            "RUST_LOG",
        ]
        .map(OsString::from);
        let command = server_command(&spec(), inherited.into_iter());
        let envs = envs(&command);
        let set = |name: &str| envs.get(name).cloned().flatten();
        assert_eq!(envs.get("CONCERT_MAX_BODY_BYTES"), Some(&None), "removed: {envs:?}");
        assert_eq!(envs.get("CONCERT_TIMEZONE"), Some(&None), "removed: {envs:?}");
        assert_eq!(set("CONCERT_DURABILITY").as_deref(), Some("sync"), "the drill's own");
        assert_eq!(
            set("DATABASE_URL").as_deref(),
            Some("sqlite:///tmp/round/concert.db"),
            "the round's database"
        );
        assert_eq!(set("CONCERT_ADDR").as_deref(), Some("127.0.0.1:4321"));
        assert_eq!(set("CONCERT_HOLD_TIMEOUT").as_deref(), Some("3000ms"));
        assert_eq!(
            set("CONCERT_FLUSH_INTERVAL").as_deref(),
            Some("500ms"),
            "--server-env applies"
        );
        assert!(!envs.contains_key("PATH"), "other variables are inherited untouched");
        assert!(
            !envs.contains_key("RUST_LOG"),
            "other variables are inherited untouched"
        );
    }

    #[test]
    fn server_env_overrides_the_drills_settings() {
        let mut spec = spec();
        spec.extra_env = vec![("CONCERT_DURABILITY".to_owned(), "async".to_owned())];
        let command = server_command(&spec, std::iter::empty());
        assert_eq!(
            envs(&command).get("CONCERT_DURABILITY"),
            Some(&Some("async".to_owned())),
            "--server-env is applied last (the negative control)"
        );
    }
}
