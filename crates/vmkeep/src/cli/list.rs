//! `vmkeep list [--json] [NAME...]`: status from locks, files and journals,
//! never waiting on a socket, inspected in parallel.

use serde::Serialize;

use super::ListArgs;
use crate::home;
use crate::instance::observe::observe_with_config;
use crate::instance::status::{self, Status};
use crate::instance::{InstanceDir, InstanceName};

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Reason>,
    agent_pid: Option<u32>,
    qemu_pid: Option<u32>,
    cpus: Option<u32>,
    memory: Option<String>,
    disk: Option<String>,
    /// Loopback port forwarded to the guest's ssh (running cloud images).
    ssh_port: Option<u16>,
    dir: String,
}

#[derive(Debug, Serialize)]
struct Reason {
    code: &'static str,
    message: String,
    hint: String,
    repairable: bool,
}

pub fn run(args: ListArgs) -> anyhow::Result<i32> {
    let root = home::instances_root()?;
    let names = if args.names.is_empty() {
        crate::instance::layout::instance_names(&root)
    } else {
        args.names.clone()
    };
    let rows: Vec<Row> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .chunks(names.len().div_ceil(8).max(1))
            .map(|chunk| scope.spawn(|| chunk.iter().map(|n| row(&root, n)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let missing: Vec<_> = rows
        .iter()
        .filter(|r| r.status == "Missing")
        .map(|r| r.name.clone())
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        eprintln!("no instances; `vmkeep start` creates and boots \"default\"");
    } else {
        print_table(&rows);
    }
    if !missing.is_empty() {
        anyhow::bail!("no such instance: {}", missing.join(", "));
    }
    Ok(0)
}

fn row(root: &std::path::Path, name: &InstanceName) -> Row {
    let mut row = Row {
        name: name.to_string(),
        status: "Missing",
        reason: None,
        agent_pid: None,
        qemu_pid: None,
        cpus: None,
        memory: None,
        disk: None,
        ssh_port: None,
        dir: String::new(),
    };
    let dir = match InstanceDir::new(root, name.clone()) {
        Ok(dir) => dir,
        Err(e) => {
            row.status = "Broken";
            row.reason = Some(Reason {
                code: "socket-path-too-long",
                message: e.to_string(),
                hint: String::new(),
                repairable: false,
            });
            return row;
        }
    };
    row.dir = dir.dir().display().to_string();
    if !dir.dir().is_dir() {
        return row;
    }
    let (seen, config) = match observe_with_config(&dir) {
        Ok(seen) => seen,
        Err(e) => {
            row.status = "Broken";
            row.reason = Some(Reason {
                code: "unreadable",
                message: e.to_string(),
                hint: "check the directory's permissions".into(),
                repairable: false,
            });
            return row;
        }
    };
    let status = status::derive(&seen);
    row.status = status.word();
    row.agent_pid = seen.agent_pid;
    row.qemu_pid = seen.qemu_pid;
    if status == Status::Running {
        row.ssh_port = crate::image::cloud::ssh_port(&dir);
    }
    if let Status::Broken(broken) = &status {
        row.reason = Some(Reason {
            code: broken.code(),
            message: broken.message(),
            hint: broken.hint().replace("NAME", name.as_str()),
            repairable: broken.repairable(),
        });
    }
    if let Some(config) = config {
        row.cpus = Some(config.cpus.0);
        row.memory = Some(config.memory.0.to_string());
        row.disk = Some(config.disk.0.to_string());
    }
    row
}

fn print_table(rows: &[Row]) {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    println!(
        "{:width$}  {:9} {:>4}  {:>7}  {:>7}  {:>8}  {:>5}",
        "NAME", "STATUS", "CPUS", "MEMORY", "DISK", "PID", "SSH"
    );
    for row in rows {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        println!(
            "{:width$}  {:9} {:>4}  {:>7}  {:>7}  {:>8}  {:>5}",
            row.name,
            row.status,
            row.cpus
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            opt(&row.memory),
            opt(&row.disk),
            row.agent_pid
                .or(row.qemu_pid)
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            row.ssh_port
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
        );
        if let Some(reason) = &row.reason {
            println!("{:width$}  reason: {}", "", reason.message);
            if !reason.hint.is_empty() {
                println!("{:width$}  hint:   {}", "", reason.hint);
            }
        }
    }
}
