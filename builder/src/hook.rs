//! The pre-receive hook and its channel back to the server.
//!
//! git's receive-pack runs the hook `DATA/hooks/pre-receive`, which execs `slipway hook
//! pre-receive` ([`run_client`]). The client reads the pushed refs, refuses anything but the
//! deploy branch, connects to the per-push Unix socket named in `SLIPWAY_HOOK_SOCKET`, and sends
//! one header line (`old new ref`) followed by `git archive` of the pushed commit. The server
//! ([`accept`]) answers with framed messages: output to print (which git relays to the pusher as
//! `remote:` lines) and finally the exit code, which accepts or rejects the push.
//!
//! Frames: one tag byte (`o` output, `x` exit), a big-endian u32 length, the payload.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use slipway_core::AppName;
use slipway_core::ports::Releases;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// The environment variable that carries the per-push socket path to the hook.
pub const SOCKET_ENV: &str = "SLIPWAY_HOOK_SOCKET";

/// The branches a push may deploy from.
pub const DEPLOY_REFS: &[&str] = &["refs/heads/main", "refs/heads/master"];

const ZERO: &str = "0000000000000000000000000000000000000000";

/// The hook script installed as `pre-receive`, which runs `program hook pre-receive`.
pub fn script(program: &Path) -> String {
    let quoted = program.display().to_string().replace('\'', r"'\''");
    format!("#!/bin/sh\nexec '{quoted}' hook pre-receive\n")
}

/// The hook process: runs inside git receive-pack, talks to the server, returns the exit code.
pub fn run_client() -> i32 {
    match client() {
        Ok(code) => code,
        Err(msg) => {
            println!("-----> {msg}");
            1
        }
    }
}

fn client() -> Result<i32, String> {
    let socket =
        std::env::var_os(SOCKET_ENV).ok_or("this hook runs only under slipway's git server")?;
    let mut refs = String::new();
    std::io::stdin()
        .read_to_string(&mut refs)
        .map_err(|e| format!("reading pushed refs: {e}"))?;
    let mut deploy = None;
    for line in refs.lines() {
        let mut f = line.split_whitespace();
        let (Some(old), Some(new), Some(name)) = (f.next(), f.next(), f.next()) else {
            return Err(format!("malformed ref update {line:?}"));
        };
        if !DEPLOY_REFS.contains(&name) {
            return Err(format!(
                "refusing to update {name}: push to main (or master) to deploy, e.g. `git push slipway HEAD:main`"
            ));
        }
        if new == ZERO {
            return Err(format!(
                "refusing to delete {name}: it is the deploy branch"
            ));
        }
        if deploy.is_some() {
            return Err("push main or master, not both".into());
        }
        deploy = Some((old.to_owned(), new.to_owned(), name.to_owned()));
    }
    let Some((old, new, name)) = deploy else {
        return Ok(0);
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .map_err(|e| format!("connecting to the build server: {e}"))?;
    stream
        .write_all(format!("{old} {new} {name}\n").as_bytes())
        .map_err(|e| format!("sending to the build server: {e}"))?;
    let mut archive = std::process::Command::new("git")
        .args(["archive", "--format=tar", &new])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running git archive: {e}"))?;
    let mut tar = archive.stdout.take().ok_or("git archive has no stdout")?;
    std::io::copy(&mut tar, &mut stream).map_err(|e| format!("sending the source: {e}"))?;
    let status = archive.wait().map_err(|e| format!("git archive: {e}"))?;
    if !status.success() {
        return Err(format!("git archive of {new} failed"));
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("sending the source: {e}"))?;

    let mut stdout = std::io::stdout();
    loop {
        let mut head = [0u8; 5];
        if stream.read_exact(&mut head).is_err() {
            return Err("the build server closed the connection; the push is rejected".into());
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut payload = vec![0; len];
        stream
            .read_exact(&mut payload)
            .map_err(|e| format!("reading from the build server: {e}"))?;
        match head[0] {
            b'o' => {
                let _ = stdout.write_all(&payload);
                let _ = stdout.flush();
            }
            b'x' => {
                let code = payload.first().copied().unwrap_or(1);
                return Ok(i32::from(code));
            }
            _ => return Err("garbled message from the build server".into()),
        }
    }
}

/// A push as the hook delivered it.
pub struct Push {
    /// The previous commit of the branch (all zeros for a first push).
    pub old: String,
    /// The pushed commit.
    pub new: String,
    /// The branch (`refs/heads/main`).
    pub refname: String,
    /// Where the source archive (tar) was saved.
    pub source: tempfile::NamedTempFile,
    /// Writes output back to the pusher.
    pub reporter: Reporter,
}

/// How much of the source archive is read from the hook at a time.
const SOURCE_BUFFER: usize = 256 * 1024;

/// Waits for the hook to connect, then streams its header and source archive into a temp file
/// in `scratch`.
pub async fn accept(listener: &UnixListener, scratch: &Path) -> std::io::Result<Push> {
    let (stream, _) = listener.accept().await?;
    let (read, write) = stream.into_split();
    // Large reads, so that a gigabyte of source is a few thousand writes to the file (each one a
    // trip to tokio's blocking pool), not a hundred thousand; never more than this in memory.
    let mut read = BufReader::with_capacity(SOURCE_BUFFER, read);
    let mut header = String::new();
    read.read_line(&mut header).await?;
    let mut f = header.split_whitespace();
    let (Some(old), Some(new), Some(refname)) = (f.next(), f.next(), f.next()) else {
        return Err(std::io::Error::other("malformed hook header"));
    };
    let source = tempfile::NamedTempFile::new_in(scratch)?;
    let mut file = tokio::fs::File::create(source.path()).await?;
    tokio::io::copy_buf(&mut read, &mut file).await?;
    file.flush().await?;
    Ok(Push {
        old: old.to_owned(),
        new: new.to_owned(),
        refname: refname.to_owned(),
        source,
        reporter: Reporter {
            log: None,
            partial: Vec::new(),
            stream: Some(write),
        },
    })
}

/// Sends output and the verdict to the hook. If dropped without [`finish`](Reporter::finish),
/// the hook sees the connection close and rejects the push.
pub struct Reporter {
    stream: Option<tokio::net::unix::OwnedWriteHalf>,
    /// Where every line also goes: the app's log, so `slipway logs` shows builds.
    log: Option<(Arc<dyn Releases>, AppName)>,
    /// The unfinished last line of the output so far, for the log.
    partial: Vec<u8>,
}

impl Reporter {
    /// Copies everything reported from now on to `app`'s log too.
    pub fn log_to(&mut self, releases: Arc<dyn Releases>, app: AppName) {
        self.log = Some((releases, app));
    }

    fn tee(&mut self, bytes: &[u8], flush: bool) {
        let Some((releases, app)) = &self.log else {
            return;
        };
        self.partial.extend_from_slice(bytes);
        let end = if flush {
            self.partial.len()
        } else {
            match self.partial.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => return,
            }
        };
        let done: Vec<u8> = self.partial.drain(..end).collect();
        if !done.is_empty() {
            releases.log_build(app, &String::from_utf8_lossy(&done));
        }
    }

    /// Sends bytes to print. Errors (the pusher hung up) are ignored: the build goes on.
    pub async fn output(&mut self, bytes: &[u8]) {
        self.tee(bytes, false);
        if let Some(s) = &mut self.stream {
            let mut frame = Vec::with_capacity(bytes.len() + 5);
            frame.push(b'o');
            frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            frame.extend_from_slice(bytes);
            if s.write_all(&frame).await.is_err() {
                self.stream = None;
            }
        }
    }

    /// Prints one line.
    pub async fn line(&mut self, line: &str) {
        self.output(format!("{line}\n").as_bytes()).await;
    }

    /// Sends the verdict: 0 accepts the push, anything else rejects it.
    pub async fn finish(mut self, code: u8) {
        self.tee(&[], true);
        if let Some(s) = &mut self.stream {
            let _ = s.write_all(&[b'x', 0, 0, 0, 1, code]).await;
            let _ = s.shutdown().await;
        }
    }
}

/// Binds a fresh socket for one push.
pub fn listen(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}
