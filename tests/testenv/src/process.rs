//! Child processes that are killed when dropped, with their output in log files.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::Context;

/// A running control-plane process. Dropping it kills the process (SIGKILL) and reaps
/// it, also while a test unwinds from a panic.
///
/// Its stdout and stderr go to `<name>.stdout.log` and `<name>.stderr.log` in the
/// control plane's temporary directory.
#[derive(Debug)]
pub struct ProcessGuard {
    name: String,
    child: Option<Child>,
    pid: u32,
    port: Option<u16>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl ProcessGuard {
    /// Starts `program` with `args`, sending its output to log files named after `name`
    /// in `log_dir` (truncated if they exist). `port` is the port it serves on, if any.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
        port: Option<u16>,
    ) -> anyhow::Result<ProcessGuard> {
        let stdout_path = log_dir.join(format!("{name}.stdout.log"));
        let stderr_path = log_dir.join(format!("{name}.stderr.log"));
        let stdout = File::create(&stdout_path)
            .with_context(|| format!("{name}: creating {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("{name}: creating {}", stderr_path.display()))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("{name}: starting {}", program.display()))?;
        tracing::debug!(name, pid = child.id(), program = %program.display(), ?args, "started");
        Ok(ProcessGuard {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            port,
            stdout_path,
            stderr_path,
            exited: None,
        })
    }

    /// The name given at start (`etcd`, `kube-apiserver`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The loopback port the process serves on, if it has one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The file holding the process's stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// The file holding the process's stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The exit status if the process has ended (it is then reaped), or `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exited = Some(status);
        }
        self.exited
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// Fails, with the tail of the process's logs, if it has ended.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.exit_status() {
            None if self.child.is_some() => Ok(()),
            status => anyhow::bail!(
                "{} (pid {}) is not running ({}); last output:\n{}",
                self.name,
                self.pid,
                status.map_or_else(|| "killed".to_string(), |s| s.to_string()),
                self.log_tail(40)
            ),
        }
    }

    /// The last `lines` lines of the process's stderr and stdout.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (what, path) in [("stderr", &self.stderr_path), ("stdout", &self.stdout_path)] {
            let tail = tail_of_file(path, lines);
            if !tail.trim().is_empty() {
                out.push_str(&format!(
                    "--- {} {what} ({}) ---\n{tail}",
                    self.name,
                    path.display()
                ));
                if !tail.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        if out.is_empty() {
            out = format!("--- {}: no output ---\n", self.name);
        }
        out
    }

    /// Kills the process (SIGKILL) and reaps it. Does nothing if that was done already.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exited.is_none() {
                let _ = child.kill();
            }
            match child.wait() {
                Ok(status) => self.exited = self.exited.or(Some(status)),
                Err(e) => tracing::warn!(
                    name = self.name,
                    pid = self.pid,
                    "waiting for the killed process: {e}"
                ),
            }
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then released). Another
/// process may take it before it is used; callers retry on "address already in use".
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Whether a process's log says it could not bind its port.
pub(crate) fn port_collision(log: &str) -> bool {
    log.contains("address already in use") || log.contains("bind: address")
}

/// The last `lines` lines of a file (reads at most its last 256 KiB).
pub(crate) fn tail_of_file(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}
