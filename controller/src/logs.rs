//! App logs: every line an app's containers write, its builds' output and the platform's own
//! notices, kept per app across deploys, restarts and crashes, and streamed to followers.
//!
//! Each app has a file `DATA/logs/<app>.log` that rolls over to `<app>.log.1` at a size cap, so
//! history is bounded (two files) but outlives any container. Lines are
//! `<RFC 3339 UTC, nanoseconds> <app>[<source>]: <text>`; the fixed-width timestamp makes text
//! order time order.
//!
//! Invariant: names used as paths are [`AppName`]s, validated on parse; nothing else reaches a
//! path.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use slipway_core::AppName;
use tokio::sync::broadcast;

/// A file rolls over at this size; an app keeps at most two.
pub const DEFAULT_CAP: u64 = 4 << 20;

/// Longer lines are cut here, so one runaway line cannot take the whole history.
const MAX_LINE: usize = 16 << 10;

/// How many lines a slow follower may fall behind before it skips ahead.
const FOLLOW_BACKLOG: usize = 1024;

/// The log store.
pub struct AppLogs {
    dir: PathBuf,
    cap: u64,
    apps: Mutex<HashMap<AppName, Sink>>,
}

struct Sink {
    file: Option<File>,
    len: u64,
    followers: broadcast::Sender<Arc<str>>,
    /// The newest timestamp written, to resume collecting after a restart without repeats.
    last: String,
}

/// The current time as the log writes it.
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// An engine timestamp (RFC 3339, any precision or offset) in the log's fixed form; `None` when
/// it does not parse.
pub fn normalize(timestamp: &str) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(timestamp).ok()?;
    Some(
        t.with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::Nanos, true),
    )
}

/// Seconds since the epoch of a log timestamp; 0 when it does not parse (or is empty).
pub fn unix_seconds(timestamp: &str) -> i64 {
    DateTime::parse_from_rfc3339(timestamp).map_or(0, |t| t.timestamp())
}

impl AppLogs {
    /// Opens the store under `dir`, creating it.
    pub fn open(dir: &Path, cap: u64) -> std::io::Result<AppLogs> {
        std::fs::create_dir_all(dir)?;
        Ok(AppLogs {
            dir: dir.to_owned(),
            cap,
            apps: Mutex::default(),
        })
    }

    fn path(&self, app: &AppName) -> PathBuf {
        self.dir.join(format!("{app}.log"))
    }

    fn rolled(&self, app: &AppName) -> PathBuf {
        self.dir.join(format!("{app}.log.1"))
    }

    fn with_sink<T>(&self, app: &AppName, f: impl FnOnce(&mut Sink) -> T) -> T {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let sink = apps.entry(app.clone()).or_insert_with(|| {
            let path = self.path(app);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let last = last_line(&path)
                .and_then(|l| l.split_once(' ').map(|(ts, _)| ts.to_owned()))
                .unwrap_or_default();
            Sink {
                file: None,
                len,
                followers: broadcast::channel(FOLLOW_BACKLOG).0,
                last,
            }
        });
        f(sink)
    }

    /// Appends `text` (one or more lines) from `source` (`web.1a2b3c4d`, `build`, `slipway`)
    /// at `timestamp` (now when `None`). Write failures are logged, never returned: an app's
    /// output must not stop a deploy.
    pub fn append(&self, app: &AppName, source: &str, timestamp: Option<&str>, text: &str) {
        let timestamp = timestamp.and_then(normalize).unwrap_or_else(now);
        let mut out = String::new();
        for line in text.lines() {
            let line = cut(line.trim_end_matches('\r'));
            out.push_str(&format!("{timestamp} {app}[{source}]: {line}\n"));
        }
        if out.is_empty() {
            return;
        }
        self.with_sink(app, |sink| {
            if let Err(e) = self.write(app, sink, &out) {
                tracing::warn!(app = %app, "logs: writing: {e}");
                sink.file = None;
            }
            if timestamp > sink.last {
                sink.last = timestamp.clone();
            }
            for line in out.lines() {
                // No followers is the usual case, not an error.
                let _ = sink.followers.send(Arc::from(line));
            }
        });
    }

    fn write(&self, app: &AppName, sink: &mut Sink, out: &str) -> std::io::Result<()> {
        if sink.len + out.len() as u64 > self.cap && sink.len > 0 {
            sink.file = None;
            std::fs::rename(self.path(app), self.rolled(app))?;
            sink.len = 0;
        }
        let file = match &mut sink.file {
            Some(f) => f,
            None => sink.file.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path(app))?,
            ),
        };
        file.write_all(out.as_bytes())?;
        sink.len += out.len() as u64;
        Ok(())
    }

    /// The newest timestamp in the app's log ("" when it has none).
    pub fn last_timestamp(&self, app: &AppName) -> String {
        self.with_sink(app, |sink| sink.last.clone())
    }

    /// The last `n` lines of the app's log, oldest first.
    pub fn tail(&self, app: &AppName, n: usize) -> Vec<String> {
        // Hold the app's lock so a rollover cannot happen between the two reads.
        self.with_sink(app, |_| {
            let mut lines = read_lines(&self.path(app));
            if lines.len() < n {
                let mut older = read_lines(&self.rolled(app));
                older.append(&mut lines);
                lines = older;
            }
            let skip = lines.len().saturating_sub(n);
            lines.split_off(skip)
        })
    }

    /// Every line appended from now on.
    pub fn follow(&self, app: &AppName) -> broadcast::Receiver<Arc<str>> {
        self.with_sink(app, |sink| sink.followers.subscribe())
    }

    /// Deletes the app's history (the app was destroyed).
    pub fn remove(&self, app: &AppName) {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.remove(app);
        for path in [self.path(app), self.rolled(app)] {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(app = %app, "logs: removing {}: {e}", path.display());
            }
        }
    }
}

fn cut(line: &str) -> &str {
    if line.len() <= MAX_LINE {
        return line;
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

fn read_lines(path: &Path) -> Vec<String> {
    match File::open(path) {
        Ok(f) => BufReader::new(f).lines().map_while(Result::ok).collect(),
        Err(_) => Vec::new(),
    }
}

fn last_line(path: &Path) -> Option<String> {
    read_lines(path).pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppName {
        "web".parse().unwrap()
    }

    #[test]
    fn appends_tails_and_rolls_over() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AppLogs::open(dir.path(), 200).unwrap();
        logs.append(
            &app(),
            "build",
            Some("2026-11-22T10:00:00Z"),
            "one\ntwo\r\n",
        );
        assert_eq!(
            logs.tail(&app(), 10),
            vec![
                "2026-11-22T10:00:00.000000000Z web[build]: one",
                "2026-11-22T10:00:00.000000000Z web[build]: two"
            ]
        );
        for i in 0..10 {
            logs.append(&app(), "web.1", None, &format!("line {i}"));
        }
        // Rolled over at 200 bytes: both files together still hold the newest lines.
        assert!(dir.path().join("web.log.1").exists());
        let tail = logs.tail(&app(), 3);
        assert_eq!(tail.len(), 3);
        assert!(tail[2].ends_with("web[web.1]: line 9"), "{tail:?}");
        assert!(tail[0].ends_with("line 7"), "{tail:?}");
        assert!(std::fs::metadata(dir.path().join("web.log")).unwrap().len() <= 200);
    }

    #[test]
    fn history_survives_a_new_store_and_removal_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AppLogs::open(dir.path(), DEFAULT_CAP).unwrap();
        logs.append(&app(), "web.1", Some("2026-11-22T10:00:01.5+01:00"), "hi");
        drop(logs);
        let logs = AppLogs::open(dir.path(), DEFAULT_CAP).unwrap();
        assert_eq!(
            logs.last_timestamp(&app()),
            "2026-11-22T09:00:01.500000000Z"
        );
        logs.remove(&app());
        assert!(logs.tail(&app(), 10).is_empty());
        assert_eq!(logs.last_timestamp(&app()), "");
    }

    #[test]
    fn followers_see_new_lines_and_long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let logs = AppLogs::open(dir.path(), DEFAULT_CAP).unwrap();
        let mut rx = logs.follow(&app());
        logs.append(&app(), "slipway", None, &"x".repeat(MAX_LINE * 2));
        let line = rx.try_recv().unwrap();
        assert!(line.contains("web[slipway]: xxx"));
        assert!(line.len() < MAX_LINE + 100);
        assert!(normalize("not a time").is_none());
    }
}
