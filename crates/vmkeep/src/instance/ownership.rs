//! Whether a directory in `$VMKEEP_HOME` is a vmkeep instance at all.
//!
//! Users who come from Lima may point `VMKEEP_HOME` at (or copy into it) a
//! directory vmkeep did not make: a Lima instance with its `lima.yaml` and
//! `diffdisk`, say. Such a directory must never be taken for a broken vmkeep
//! instance: not listed as Broken with a hint to delete it, not "repaired",
//! not deleted without `--force`. Liveness files are named alike by both
//! (`ha.pid`, `qemu.pid`, `serial.log`), so the decision rests on files only
//! vmkeep writes, and on Lima's own.

use std::io;
use std::path::Path;

/// Files only vmkeep writes in an instance directory: one of them makes the
/// directory vmkeep's (a vmkeep instance whose config went missing still has
/// its disk or journal, and stays a Broken vmkeep instance).
pub const VMKEEP_MARKERS: [&str; 5] = [
    "vmkeep.yaml",
    "disk.qcow2",
    "events.jsonl",
    "image.json",
    "desired-state",
];

/// Files of a Lima instance; any of them makes the directory foreign.
pub const LIMA_MARKERS: [&str; 6] = [
    "lima.yaml",
    "diffdisk",
    "basedisk",
    "lima-version",
    "ha.stdout.log",
    "cidata.iso",
];

/// Who a directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    Vmkeep,
    Foreign(Foreign),
}

/// A directory vmkeep did not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    /// Its entries, sorted (at most a few are named in messages).
    pub found: Vec<String>,
    /// It holds Lima's files.
    pub lima: bool,
    /// Pid files whose lock a live process holds: (file, pid).
    pub live: Vec<(String, u32)>,
}

impl Foreign {
    /// What was found, for messages: "a Lima instance (lima.yaml, diffdisk,
    /// and 9 more)" or "an empty directory".
    pub fn describe(&self) -> String {
        if self.found.is_empty() {
            return "an empty directory".into();
        }
        let shown: Vec<&str> = self.found.iter().take(4).map(String::as_str).collect();
        let more = match self.found.len().saturating_sub(shown.len()) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        let what = if self.lima {
            "a Lima instance"
        } else {
            "a directory vmkeep did not make"
        };
        format!("{what} ({}{more})", shown.join(", "))
    }
}

/// Classify a directory by the names of its entries (pure).
pub fn classify(names: &[String]) -> Ownership {
    let has = |list: &[&str]| names.iter().any(|n| list.contains(&n.as_str()));
    if has(&VMKEEP_MARKERS) && !has(&LIMA_MARKERS) {
        return Ownership::Vmkeep;
    }
    let mut found = names.to_vec();
    found.sort();
    // Lima's own files first (lima.yaml, then its disks), so that the
    // message shows what matters.
    found.sort_by_key(|n| {
        LIMA_MARKERS
            .iter()
            .position(|m| m == n)
            .unwrap_or(LIMA_MARKERS.len())
    });
    Ownership::Foreign(Foreign {
        found,
        lima: has(&LIMA_MARKERS),
        live: Vec::new(),
    })
}

/// Classify the directory `dir`, with the live holders of its pid-file locks.
pub fn inspect(dir: &Path) -> io::Result<Ownership> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    let mut ownership = classify(&names);
    if let Ownership::Foreign(foreign) = &mut ownership {
        for name in names.iter().filter(|n| n.ends_with(".pid")) {
            if let Ok(Some(pid)) = crate::os::lock::holder(&dir.join(name)) {
                foreign
                    .live
                    .push((name.clone(), pid.as_raw_nonzero().get() as u32));
            }
        }
    }
    Ok(ownership)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn vmkeep_instances_are_recognised_by_files_only_vmkeep_writes() {
        for list in [
            &["vmkeep.yaml", "disk.qcow2"][..],
            &["disk.qcow2", "events.jsonl", "serial.log"],
            &["events.jsonl"],
            &["vmkeep.yaml", "ha.pid", "qmp.sock"],
        ] {
            assert_eq!(classify(&names(list)), Ownership::Vmkeep, "{list:?}");
        }
    }

    #[test]
    fn a_lima_instance_or_anything_else_is_foreign() {
        let lima = [
            "lima.yaml",
            "diffdisk",
            "basedisk",
            "ha.pid",
            "ha.sock",
            "serial.log",
            "ssh.config",
            "cidata.iso",
        ];
        let Ownership::Foreign(foreign) = classify(&names(&lima)) else {
            panic!("a Lima instance is not vmkeep's");
        };
        assert!(foreign.lima);
        let text = foreign.describe();
        assert!(
            text.starts_with("a Lima instance (")
                && text.contains("lima.yaml")
                && text.contains("diffdisk"),
            "{text}"
        );
        assert!(text.contains("and 4 more"), "{text}");
        for list in [
            &["notes.txt"][..],
            &[],
            &["lima.yaml", "vmkeep.yaml"],
            &["ha.pid", "serial.log"],
        ] {
            assert!(
                matches!(classify(&names(list)), Ownership::Foreign(_)),
                "{list:?}"
            );
        }
        let Ownership::Foreign(empty) = classify(&[]) else {
            panic!()
        };
        assert_eq!(empty.describe(), "an empty directory");
    }
}
