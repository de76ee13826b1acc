//! Rendering: a command's report as text or as one JSON document, and the exit codes.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

/// The exit code of a command, for scripts and probes (a Kubernetes exec probe fails on any
/// non-zero code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Exit {
    /// 0: done, and nothing is wrong.
    Ok = 0,
    /// 1: the command ran and found something not ok: health degraded or down, an audit chain
    /// broken, migrations pending (`migrate status`), indexes out of line (`indexes plan`),
    /// parked outbox events (`outbox status`), dead letters (`queue status`), an event id that
    /// was not parked (`outbox redrive`).
    Findings = 1,
    /// 2: the arguments are wrong (clap's usage errors, an undeclared `--entity`).
    Usage = 2,
    /// 3: the command could not run: invalid configuration, no connection, a server error.
    Failed = 3,
}

impl Exit {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

/// Why a command did not run to the end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The arguments name something that is not declared, or contradict each other.
    #[error("{message}")]
    Usage {
        /// What is wrong.
        message: String,
    },
    /// The configuration is invalid or the servers could not be reached.
    #[error("could not connect: {source}")]
    Connect {
        /// The runtime's error.
        source: Box<crate::Error>,
    },
    /// A runtime call failed.
    #[error("{operation} failed: {source}")]
    Storage {
        /// What the command was doing, e.g. `outbox lag of caas_messaging`.
        operation: String,
        /// The runtime's error.
        source: Box<crate::Error>,
    },
}

impl CliError {
    /// The exit code it ends the command with.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage { .. } => Exit::Usage,
            CliError::Connect { .. } | CliError::Storage { .. } => Exit::Failed,
        }
    }
}

/// `.context("...")` on a runtime result: a [`CliError::Storage`] naming the operation.
pub(crate) trait Context<T> {
    fn context(self, operation: impl FnOnce() -> String) -> Result<T, CliError>;
}

impl<T> Context<T> for crate::Result<T> {
    fn context(self, operation: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|source| CliError::Storage {
            operation: operation(),
            source: Box::new(source),
        })
    }
}

/// What a command produced: the JSON document, the text for people, and the exit code.
pub(crate) struct Report {
    pub(crate) json: serde_json::Value,
    pub(crate) text: String,
    pub(crate) exit: Exit,
}

impl Report {
    /// A report of `value` (serialized for `--json`) with `text` for people.
    pub(crate) fn new(value: &impl Serialize, text: String, exit: Exit) -> Self {
        let json = serde_json::to_value(value)
            .unwrap_or_else(|e| serde_json::json!({ "error": format!("not serializable: {e}") }));
        Report { json, text, exit }
    }

    /// Writes the report and returns its exit code.
    pub(crate) fn render(self, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
        let written = if json {
            serde_json::to_writer_pretty(&mut *out, &self.json)
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(out))
        } else {
            write!(out, "{}", self.text)
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            let _ = writeln!(err, "error: could not write the output: {e}");
            return Exit::Failed;
        }
        self.exit
    }
}

/// Reports `error` (on `err`, and with `--json` also as `{"error": ...}` on `out`) and returns
/// its exit code.
pub(crate) fn failed(
    error: &CliError,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    let _ = writeln!(err, "error: {error}");
    if json {
        let kind = match error {
            CliError::Usage { .. } => "usage",
            CliError::Connect { .. } => "connect",
            CliError::Storage { .. } => "storage",
        };
        let doc = serde_json::json!({
            "error": { "kind": kind, "message": error.to_string(), "exit": error.exit().code() }
        });
        let _ = serde_json::to_writer_pretty(&mut *out, &doc);
        let _ = writeln!(out);
    }
    let _ = out.flush();
    error.exit()
}
