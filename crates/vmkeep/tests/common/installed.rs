//! `vmkeep` and a host agent installed side by side in a directory of the
//! test's own, as a package or `scripts/install` puts them; a binary
//! replaced the way a package manager does it (a new file renamed over the
//! old: a running agent's `/proc/PID/exe` then says "(deleted)").

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{TestEnv, VMKEEP};

pub struct Installed {
    pub dir: tempfile::TempDir,
}

impl Installed {
    /// This build's two binaries.
    pub fn new() -> Installed {
        Installed::with_agent(&built("vmkeep-hostagent"))
    }

    /// This build's `vmkeep` and the host agent `agent`.
    pub fn with_agent(agent: &Path) -> Installed {
        let installed = Installed {
            dir: tempfile::tempdir().expect("install dir"),
        };
        installed.put(&built("vmkeep"), "vmkeep");
        installed.put(agent, "vmkeep-hostagent");
        installed
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Install `from` as `name`: copied beside it and renamed over it.
    pub fn put(&self, from: &Path, name: &str) {
        let temp = self.path(&format!(".{name}.new"));
        std::fs::copy(from, &temp).expect("copy the binary");
        std::fs::rename(&temp, self.path(name)).expect("install the binary");
    }

    /// `vmkeep` from this installation, in `env`'s home, to completion.
    pub fn vmkeep(&self, env: &TestEnv, args: &[&str]) -> std::process::Output {
        vmkeep_in(self.dir.path(), env, args)
            .output()
            .expect("run the installed vmkeep")
    }
}

/// The `vmkeep` of `bin` (a directory of binaries), in `env`'s home.
pub fn vmkeep_in(bin: &Path, env: &TestEnv, args: &[&str]) -> Command {
    env.command_of(&bin.join("vmkeep"), args)
}

/// A binary of this build (beside the test's `vmkeep`).
pub fn built(name: &str) -> PathBuf {
    Path::new(VMKEEP).with_file_name(name)
}

/// What a finished command said, for an assertion's message.
pub fn text(output: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
