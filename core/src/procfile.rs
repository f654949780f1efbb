//! Procfile parsing: `type: command` lines, as Heroku defines them.

use crate::release::ProcessTypes;

/// Why a Procfile was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcfileError {
    /// A line that is neither blank, a comment, nor `type: command`.
    #[error("Procfile line {line}: expected `type: command`, found {text:?}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
    },
    /// A process type outside `^[a-z][a-z0-9_-]{0,29}$`.
    #[error("Procfile line {line}: invalid process type {name:?}")]
    BadType {
        /// 1-based line number.
        line: usize,
        /// The offending type name.
        name: String,
    },
}

/// Whether `name` is a valid process type (`web`, `worker`, `release-tasks`).
pub fn is_process_type(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 30
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// Parses a Procfile. Blank lines and lines starting with `#` are skipped; a later line for the
/// same type wins, as with Heroku.
pub fn parse(text: &str) -> Result<ProcessTypes, ProcfileError> {
    let mut out = ProcessTypes::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, cmd)) = line.split_once(':') else {
            return Err(ProcfileError::Malformed {
                line: i + 1,
                text: raw.to_owned(),
            });
        };
        let (name, cmd) = (name.trim(), cmd.trim());
        if !is_process_type(name) {
            return Err(ProcfileError::BadType {
                line: i + 1,
                name: name.to_owned(),
            });
        }
        if cmd.is_empty() {
            return Err(ProcfileError::Malformed {
                line: i + 1,
                text: raw.to_owned(),
            });
        }
        out.insert(name.to_owned(), cmd.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types() {
        let p =
            parse("# comment\nweb: python3 app.py --port $PORT\n\nworker:  celery -A x\n").unwrap();
        assert_eq!(p["web"], "python3 app.py --port $PORT");
        assert_eq!(p["worker"], "celery -A x");
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            parse("web"),
            Err(ProcfileError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse("Web: x"),
            Err(ProcfileError::BadType { .. })
        ));
        assert!(matches!(
            parse("web:"),
            Err(ProcfileError::Malformed { .. })
        ));
    }
}
