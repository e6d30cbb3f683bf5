//! A private PostgreSQL instance for [`super::Fault::PgRestart`]: `initdb`
//! into a temp folder, `pg_ctl start` on a free loopback port with its socket
//! in that folder, `pg_ctl restart` as the fault, `pg_ctl stop` and delete at
//! the end (also on drop, so no instance outlives a round). The machine's
//! shared PostgreSQL is never touched: restarting it would break everyone
//! else's tests. `pg_ctl restart -m fast` is what `pg_ctlcluster <version>
//! <cluster> restart` does for a packaged cluster.
//!
//! `initdb` refuses to run as root, so as root every PostgreSQL tool runs as
//! the `postgres` OS user (`runuser -u postgres --`), which owns the folder.
//! The tools are blocking child processes, run on the blocking pool.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tempfile::TempDir;

use crate::server::free_port;

/// Where the PostgreSQL tools are looked for, before `PATH`.
const PG_BIN_DIRS: [&str; 1] = ["/usr/lib/postgresql/15/bin"];
/// Overrides the search: a folder holding `initdb` and `pg_ctl`.
const PG_BIN_ENV: &str = "DRILL_PG_BIN";
/// `pg_ctl -w -t`: seconds to wait for a start or a stop.
const PG_CTL_WAIT_S: &str = "60";
/// The OS user PostgreSQL runs as when the drill is root.
const PG_OS_USER: &str = "postgres";
const OUTPUT_TAIL_CHARS: usize = 1_500;

/// The folder of `initdb` and `pg_ctl`: `$DRILL_PG_BIN`, PostgreSQL 15's
/// packaged folder, or the folder of `initdb` on `PATH`.
pub fn postgres_binaries() -> Result<PathBuf, String> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        return if has_tools(&dir) {
            Ok(dir)
        } else {
            Err(format!("{PG_BIN_ENV}={} has no initdb and pg_ctl", dir.display()))
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    PG_BIN_DIRS
        .iter()
        .map(PathBuf::from)
        .chain(on_path)
        .find(|dir| has_tools(dir))
        .ok_or_else(|| format!("initdb and pg_ctl not found in {PG_BIN_DIRS:?} nor on PATH (set {PG_BIN_ENV})"))
}

pub struct PrivatePostgres {
    bin: PathBuf,
    /// Owned by the PostgreSQL OS user: the data folder, the socket, the logs.
    root: Option<TempDir>,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl PrivatePostgres {
    /// `initdb` and `pg_ctl start` (blocking work, on the blocking pool).
    pub async fn start() -> Result<Self, String> {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .map_err(|err| format!("the start task failed: {err}"))?
    }

    fn start_blocking() -> Result<Self, String> {
        let bin = postgres_binaries()?;
        let root = tempfile::Builder::new()
            .prefix("concert-drill-pg-")
            .tempdir()
            .map_err(|err| format!("cannot create a temp folder: {err}"))?;
        let as_postgres = is_root();
        let mut instance = Self {
            bin,
            root: Some(root),
            port: free_port()?,
            as_postgres,
            running: false,
        };
        let root = instance.root_path().to_owned();
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.arg(format!("{PG_OS_USER}:")).arg(&root);
            run(chown, &root.join("tools.log"))?;
        }
        let data = root.join("data");
        let mut initdb = instance.tool("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        run(initdb, &root.join("tools.log"))?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=100",
            instance.port,
            root.display()
        );
        let mut start = instance.pg_ctl("start");
        start.arg("-l").arg(root.join("postgres.log")).arg("-o").arg(options);
        run(start, &root.join("tools.log")).map_err(|err| format!("{err}; {}", instance.log_tail()))?;
        instance.running = true;
        Ok(instance)
    }

    /// The superuser URL of its `postgres` database (loopback, trust auth).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn describe(&self) -> String {
        format!(
            "private PostgreSQL on 127.0.0.1:{} in {}",
            self.port,
            self.root_path().display()
        )
    }

    /// `pg_ctl restart -m <mode>` (`fast`: clean shutdown, disconnecting
    /// clients; `immediate`: no shutdown checkpoint, crash recovery at start).
    pub async fn restart(&self, mode: &'static str) -> Result<String, String> {
        let mut restart = self.pg_ctl("restart");
        restart.args(["-m", mode]);
        let log = self.root_path().join("tools.log");
        let started = Instant::now();
        tokio::task::spawn_blocking(move || run(restart, &log))
            .await
            .map_err(|err| format!("the restart task failed: {err}"))?
            .map_err(|err| format!("{err}; {}", self.log_tail()))?;
        Ok(format!(
            "pg_ctl restart -m {mode} of the private instance took {:.2}s",
            started.elapsed().as_secs_f64()
        ))
    }

    /// `pg_ctl stop -m immediate`, copying its logs into `keep_logs_in`
    /// first when given; the folder goes when `self` is dropped.
    pub async fn stop(&mut self, keep_logs_in: Option<&Path>) -> Result<(), String> {
        if let Some(dir) = keep_logs_in {
            for name in ["postgres.log", "tools.log"] {
                // Best effort: the logs only help a reader.
                let _ = std::fs::copy(self.root_path().join(name), dir.join(format!("private-pg-{name}")));
            }
        }
        if !self.running {
            return Ok(());
        }
        let stop = self.stop_command();
        let log = self.root_path().join("tools.log");
        let stopped = tokio::task::spawn_blocking(move || run(stop, &log))
            .await
            .map_err(|err| format!("the stop task failed: {err}"))?;
        self.running = false;
        stopped
    }

    fn stop_command(&self) -> Command {
        let mut stop = self.pg_ctl("stop");
        stop.args(["-m", "immediate"]);
        stop
    }

    fn root_path(&self) -> &Path {
        self.root.as_ref().map_or(Path::new("/nonexistent"), TempDir::path)
    }

    /// `name` from the PostgreSQL folder, as the PostgreSQL OS user when we
    /// are root, run in the instance's folder (which that user can read).
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", PG_OS_USER, "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.current_dir(self.root_path());
        command
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut command = self.tool("pg_ctl");
        command
            .arg("-D")
            .arg(self.root_path().join("data"))
            .args(["-w", "-t", PG_CTL_WAIT_S, action]);
        command
    }

    fn log_tail(&self) -> String {
        let path = self.root_path().join("postgres.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        format!("{} ends with: {}", path.display(), tail(&text))
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let log = self.root_path().join("tools.log");
            // Nothing to report from a drop: the instance must just not outlive us.
            let _ = run(self.stop_command(), &log);
        }
    }
}

/// Runs `command` to its end, its output appended to `log` (a file, not a
/// pipe: a postmaster started by `pg_ctl` must not hold our pipe open).
fn run(mut command: Command, log: &Path) -> Result<(), String> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|err| format!("cannot open {}: {err}", log.display()))
    };
    let shown = format!("{command:?}");
    let status = command
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .status()
        .map_err(|err| format!("cannot run {shown}: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        Err(format!(
            "{shown} exited with {status}; its output ends with: {}",
            tail(&text)
        ))
    }
}

fn tail(text: &str) -> String {
    let start = text.len().saturating_sub(OUTPUT_TAIL_CHARS);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().replace('\n', " | ")
}

#[cfg(unix)]
fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}
