//! The start report: one line a stage1 writes to stage0 on the pipe named by
//! [`crate::ENV_READY_FD`] once the pod's app (or, for a service pod, every
//! requested unit) has started — or could not start.
//!
//! Wire format (one line, UTF-8, `\n`-terminated; nothing else is written):
//!
//! ```text
//! ok
//! error <code> <message>
//! ```
//!
//! `<code>` is the exit code `berth` returns (125 set-up failure, 126 not
//! executable, 127 not found, or a unit failure's code); `<message>` is one
//! line naming what failed. A stage1 that exits without writing a line (it
//! was killed) is reported by stage0 from its exit status.

use crate::EXIT_BERTH_FAILED;
use std::io::{BufRead, Write};

/// What a stage1 tells stage0 about the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartReport {
    /// The app runs (service pods: every requested unit is active).
    Started,
    /// It did not start; `berth` exits with `code` after printing `message`.
    Failed { code: i32, message: String },
}

/// A line that is not a start report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed start report {0:?}")]
pub struct ReportError(pub String);

impl StartReport {
    /// A set-up failure of berth itself (exit code 125).
    pub fn setup_failed(message: impl Into<String>) -> StartReport {
        StartReport::Failed {
            code: EXIT_BERTH_FAILED,
            message: message.into(),
        }
    }

    /// The line on the wire, with its `\n`. A message's own line breaks are
    /// folded into spaces, so a report is always one line.
    pub fn encode(&self) -> String {
        match self {
            StartReport::Started => "ok\n".to_string(),
            StartReport::Failed { code, message } => {
                let one_line: String = message
                    .chars()
                    .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
                    .collect();
                format!("error {code} {one_line}\n")
            }
        }
    }

    /// Parse one line (with or without its `\n`).
    pub fn decode(line: &str) -> Result<StartReport, ReportError> {
        let l = line.strip_suffix('\n').unwrap_or(line);
        if l == "ok" {
            return Ok(StartReport::Started);
        }
        let bad = || ReportError(l.to_string());
        let rest = l.strip_prefix("error ").ok_or_else(bad)?;
        let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: i32 = code.parse().map_err(|_| bad())?;
        if !(1..=255).contains(&code) {
            return Err(bad());
        }
        Ok(StartReport::Failed {
            code,
            message: message.to_string(),
        })
    }

    /// Write the report (one line) and flush.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(self.encode().as_bytes())?;
        w.flush()
    }

    /// Read one report; `Ok(None)` when the writer closed without one.
    pub fn read_from(r: &mut impl BufRead) -> Result<Option<StartReport>, ReportError> {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => StartReport::decode(&line).map(Some),
            Err(e) => Err(ReportError(format!("unreadable: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for r in [
            StartReport::Started,
            StartReport::Failed {
                code: 127,
                message: "exec \"nope\": command not found".into(),
            },
            StartReport::Failed {
                code: 125,
                message: String::new(),
            },
            StartReport::setup_failed("unit nginx.service failed: exit-code"),
        ] {
            assert_eq!(StartReport::decode(&r.encode()), Ok(r.clone()));
            let mut buf = Vec::new();
            r.write_to(&mut buf).unwrap();
            let got = StartReport::read_from(&mut std::io::Cursor::new(buf)).unwrap();
            assert_eq!(got, Some(r));
        }
    }

    #[test]
    fn messages_stay_on_one_line() {
        let r = StartReport::setup_failed("a\nb\r\nc");
        assert_eq!(r.encode(), "error 125 a b  c\n");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "okay",
            "error",
            "error x msg",
            "error 0 m",
            "error 300 m",
            "OK",
        ] {
            assert!(StartReport::decode(bad).is_err(), "{bad:?}");
        }
        let mut empty = std::io::Cursor::new(Vec::new());
        assert_eq!(StartReport::read_from(&mut empty), Ok(None));
    }
}
