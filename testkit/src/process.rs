//! Child processes that never outlive their test.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process, killed (SIGKILL) and reaped on drop, even when its test panics. Its
/// standard output and error are read line by line on threads, so it never blocks on a full
/// pipe.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

fn lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Process {
    /// Spawns `command` with no standard input and both outputs piped.
    pub fn spawn(command: &mut Command) -> Process {
        let program = command.get_program().to_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.to_string_lossy()));
        let stdout = lines(child.stdout.take().expect("piped stdout"));
        let stderr = lines(child.stderr.take().expect("piped stderr"));
        Process {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// Spawns `program ARGS...` (see [`Process::spawn`]).
    pub fn start<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Process {
        Process::spawn(Command::new(program).args(args))
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the process is running")
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("the process is running").id()
    }

    /// Waits (at most `limit`) for a line of standard output that starts with `prefix`, and
    /// returns it; earlier lines are skipped. Panics with what the process wrote on standard
    /// error if none comes.
    pub fn line_starting_with(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => {
                    let status = self.child().try_wait().ok().flatten();
                    self.kill();
                    let log: Vec<String> = self.stderr.try_iter().collect();
                    panic!(
                        "no line starting with {prefix:?} within {limit:?} (exit: {status:?}); \
                         stderr:\n{}",
                        log.join("\n")
                    );
                }
            }
        }
    }

    /// Waits (at most `limit`) for the process to exit by itself; panics if it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child().try_wait().expect("wait for the child") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {limit:?}"
            );
            // A child's exit has no event to await here (std has no wait with a timeout).
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines the process writes on standard output, as they come (those not yet taken by
    /// [`Process::line_starting_with`]).
    pub fn stdout(&self) -> &mpsc::Receiver<String> {
        &self.stdout
    }

    /// Lines the process writes on standard error, as they come.
    pub fn stderr(&self) -> &mpsc::Receiver<String> {
        &self.stderr
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (at most `limit`) for the exit status; panics if it does not stop.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let status = self.signal_and_wait(limit);
        status.unwrap_or_else(|| panic!("process did not stop within {limit:?} of SIGTERM"))
    }

    /// SIGTERM and wait (at most `limit`); SIGKILL if it is still running then. Returns the
    /// exit status after SIGTERM, if it came in time.
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = self.signal_and_wait(limit);
        self.kill();
        status
    }

    fn signal_and_wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child();
        let pid = rustix::process::Pid::from_child(child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // A child's exit has no event to await here (std has no wait with a timeout).
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a command exists on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Waits (at most `limit`) until something accepts TCP connections on loopback `port`.
pub fn wait_listening(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after {limit:?}"
        );
        // Polled: a listener that comes up sends no event to a process outside it.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_found_and_the_process_is_killed_on_drop() {
        let mut p = Process::start("sh", &["-c", "echo one; echo ready 1; exec sleep 600"]);
        assert_eq!(
            p.line_starting_with("ready", Duration::from_secs(10)),
            "ready 1"
        );
        let pid = p.id();
        drop(p);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn terminate_returns_the_exit_status() {
        let mut p = Process::start(
            "sh",
            &[
                "-c",
                "trap 'exit 3' TERM; echo up; while :; do sleep 0.05; done",
            ],
        );
        p.line_starting_with("up", Duration::from_secs(10));
        assert_eq!(p.terminate(Duration::from_secs(10)).code(), Some(3));
    }
}
