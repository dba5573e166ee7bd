//! Running host tools (apt-get, dpkg-deb, qemu-img, systemctl, ...) to
//! completion, with errors that say which tool failed and what it printed.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not installed (or not in PATH).
    #[error("`{program}` was not found; {hint}")]
    Missing { program: String, hint: String },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// A host tool invocation. `hint` tells the user how to get the tool.
pub struct Tool {
    command: Command,
    program: String,
    hint: String,
}

impl Tool {
    pub fn new(program: impl AsRef<OsStr>, hint: impl Into<String>) -> Self {
        let program_ref = program.as_ref();
        Tool {
            program: program_ref.to_string_lossy().into_owned(),
            command: Command::new(program_ref),
            hint: hint.into(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.command.args(args);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    fn describe(&self) -> String {
        let mut text = self.program.clone();
        for arg in self.command.get_args() {
            text.push(' ');
            text.push_str(&arg.to_string_lossy());
        }
        text
    }

    /// Run to completion; stdout on success.
    pub fn output(mut self) -> Result<Vec<u8>, ToolError> {
        let command = self.describe();
        let output = self
            .command
            .stdin(Stdio::null())
            .output()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => ToolError::Missing {
                    program: self.program.clone(),
                    hint: self.hint.clone(),
                },
                _ => ToolError::Spawn {
                    command: command.clone(),
                    source,
                },
            })?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            Err(ToolError::Failed {
                command,
                status: output.status.to_string(),
                stderr,
            })
        }
    }

    /// Run to completion; stdout as text whatever the exit status (for
    /// commands whose status is part of the answer, such as
    /// `systemctl is-system-running`).
    pub fn answer_text(mut self) -> Result<String, ToolError> {
        let command = self.describe();
        let output = self
            .command
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => ToolError::Missing {
                    program: self.program.clone(),
                    hint: self.hint.clone(),
                },
                _ => ToolError::Spawn { command, source },
            })?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Run to completion; stdout as text on success.
    pub fn output_text(self) -> Result<String, ToolError> {
        self.output()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_program_and_the_hint() {
        let err = Tool::new("vmkeep-no-such-tool", "install it with apt-get")
            .output()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("vmkeep-no-such-tool") && text.contains("apt-get"),
            "{text}"
        );
    }

    #[test]
    fn failing_tool_reports_its_stderr() {
        let err = Tool::new("sh", "")
            .args(["-c", "echo boom >&2; exit 3"])
            .output()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("boom") && text.contains('3'), "{text}");
    }
}
