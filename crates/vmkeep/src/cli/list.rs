//! `vmkeep list [--json | --format json|yaml|table|GO-TEMPLATE | -q] [NAME...]`:
//! status from locks, files and journals, never waiting on a socket,
//! inspected in parallel.
//!
//! `--json` is vmkeep's JSON array (its own keys). `--format json` is Lima's
//! shape: one object per line, Lima's keys where they exist (`hostAgentPID`,
//! `sshLocalPort`, ...), memory and disk in bytes. A name that does not exist
//! is an error and gets no row. What a row says comes from the engine's
//! inspection: an instance's `Status`, or what a directory that is none is
//! (`NotInstance`: one vmkeep did not make is `Foreign`, never Broken).

use serde::Serialize;

use super::{CliError, ListArgs};
use crate::engine::inspect::{Inspected, inspect, inspect_all};
use crate::instance::vars;
use crate::instance::{Config, Home, InstanceDir, InstanceName, Status};
use crate::text::gotmpl::{self, Value};

#[derive(Debug, Clone, Serialize)]
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
    /// The QEMU binary it runs was replaced on disk since it started (its
    /// path): the VM runs on the old code until `vmkeep upgrade --qemu NAME`.
    qemu_replaced: Option<String>,
    dir: String,
    #[serde(skip)]
    config: Option<Config>,
    #[serde(skip)]
    ssh_config: String,
}

#[derive(Debug, Clone, Serialize)]
struct Reason {
    code: &'static str,
    message: String,
    hint: String,
    repairable: bool,
}

/// Lima's `limactl list --json` shape (the keys it has), plus vmkeep's reason.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LimaRow {
    name: String,
    status: &'static str,
    dir: String,
    vm_type: &'static str,
    arch: &'static str,
    cpus: u32,
    memory: u64,
    disk: u64,
    ssh_local_port: u16,
    ssh_config_file: String,
    #[serde(rename = "hostAgentPID")]
    host_agent_pid: u32,
    #[serde(rename = "driverPID")]
    driver_pid: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    errors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Reason>,
}

/// How to print.
#[derive(Debug, Clone, PartialEq)]
enum Format {
    Table,
    VmkeepJson,
    Json,
    Yaml,
    Names,
    Template(String),
}

fn format_of(args: &ListArgs) -> Result<Format, CliError> {
    if args.json {
        return Ok(Format::VmkeepJson);
    }
    if args.quiet {
        return Ok(Format::Names);
    }
    Ok(match args.format.as_deref() {
        None | Some("table") => Format::Table,
        Some("json") => Format::Json,
        Some("yaml") => Format::Yaml,
        Some(text) if text.contains("{{") => {
            gotmpl::check(text).map_err(|e| CliError::Usage(e.to_string()))?;
            Format::Template(text.to_string())
        }
        Some(other) => {
            return Err(CliError::Usage(format!(
                "--format {other:?}: use table, json, yaml or a Go template such as '{{{{.Name}}}}'"
            )));
        }
    })
}

pub fn run(args: ListArgs) -> Result<i32, CliError> {
    let format = format_of(&args)?;
    let home = Home::from_env()?;
    let names = if args.names.is_empty() {
        home.instance_names()
    } else {
        args.names.clone()
    };
    let rows: Vec<Row> = inspect_all(&home, &names)
        .into_iter()
        .map(|(name, inspected)| row(&home, &name, inspected))
        .collect();
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !rows.iter().any(|r| r.name == n.as_str()))
        .map(ToString::to_string)
        .collect();
    let root = &home.root;
    match &format {
        Format::VmkeepJson => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Json => {
            for row in &rows {
                println!("{}", serde_json::to_string(&lima_row(row))?);
            }
        }
        Format::Yaml => {
            for row in &rows {
                print!("---\n{}", serde_yaml_ng::to_string(&lima_row(row))?);
            }
        }
        Format::Names => {
            for row in &rows {
                println!("{}", row.name);
            }
        }
        Format::Template(template) => {
            for row in &rows {
                println!("{}", gotmpl::render(template, &template_values(row, root))?);
            }
        }
        Format::Table if rows.is_empty() && missing.is_empty() => {
            eprintln!("no instances; `vmkeep start` creates and boots \"default\"");
        }
        Format::Table => {
            if !rows.is_empty() {
                print_table(&rows);
            }
        }
    }
    if matches!(format, Format::Table) && args.names.is_empty() {
        print_importable(&home);
    }
    if !missing.is_empty() {
        return Err(CliError::Missing { names: missing });
    }
    Ok(0)
}

/// A note naming the Lima instances vmkeep could import (never among the
/// rows: a machine reading `list` sees only vmkeep's instances).
fn print_importable(home: &Home) {
    let found = crate::engine::import::importable(home);
    let Some(first) = found.first() else {
        return;
    };
    let lima_home = first
        .dir
        .parent()
        .unwrap_or(&first.dir)
        .display()
        .to_string();
    let names: Vec<String> = found
        .iter()
        .map(|l| match l.running {
            true => format!("{} (running: stop it in Lima first)", l.name),
            false => l.name.clone(),
        })
        .collect();
    eprintln!(
        "note: Lima instances in {lima_home} that vmkeep can import: {} (`vmkeep import NAME`)",
        names.join(", ")
    );
}

/// The row of an inspected name: what [`Status`] says of an instance, or
/// [`NotInstance`](crate::instance::not_instance::NotInstance) of a
/// directory that is none.
fn row(home: &Home, name: &InstanceName, inspected: Inspected) -> Row {
    let mut row = Row {
        name: name.to_string(),
        status: "",
        reason: None,
        agent_pid: None,
        qemu_pid: None,
        cpus: None,
        memory: None,
        disk: None,
        ssh_port: None,
        qemu_replaced: None,
        dir: String::new(),
        config: None,
        ssh_config: String::new(),
    };
    let dir = match &inspected {
        Inspected::Instance(found) => Some(&found.dir),
        Inspected::NotInstance { dir, .. } => dir.as_ref(),
    };
    if let Some(dir) = dir {
        row.dir = dir.dir().display().to_string();
        row.ssh_config = dir.ssh_config().display().to_string();
    }
    let found = match inspected {
        Inspected::NotInstance { what, .. } => {
            row.status = what.word();
            row.reason = Some(Reason {
                code: what.code(),
                message: what.message(),
                hint: what.hint(&home.root),
                repairable: false,
            });
            return row;
        }
        Inspected::Instance(found) => found,
    };
    row.status = found.status.word();
    row.agent_pid = found.agent_pid;
    row.qemu_pid = found.qemu_pid;
    row.ssh_port = found.ssh_port;
    row.qemu_replaced = found
        .qemu_replaced
        .as_ref()
        .map(|path| path.display().to_string());
    match &found.status {
        Status::Broken(broken) => {
            row.reason = Some(Reason {
                code: broken.code(),
                message: broken.message(),
                hint: broken.hint().replace("NAME", name.as_str()),
                repairable: broken.repairable(),
            });
        }
        Status::Paused(reason) => {
            row.reason = Some(Reason {
                code: reason.code(),
                message: reason.message(),
                hint: reason.hint().replace("NAME", name.as_str()),
                repairable: false,
            });
        }
        _ => {}
    }
    if let Some(config) = found.config {
        row.cpus = Some(config.cpus.0);
        row.memory = Some(config.memory.0.to_string());
        row.disk = Some(config.disk.0.to_string());
        row.config = Some(config);
    }
    row
}

fn lima_row(row: &Row) -> LimaRow {
    let config = row.config.as_ref();
    LimaRow {
        name: row.name.clone(),
        status: row.status,
        dir: row.dir.clone(),
        vm_type: "qemu",
        arch: "x86_64",
        cpus: row.cpus.unwrap_or(0),
        memory: config.map(|c| c.memory.0.0).unwrap_or(0),
        disk: config.map(|c| c.disk.0.0).unwrap_or(0),
        ssh_local_port: row.ssh_port.unwrap_or(0),
        ssh_config_file: row.ssh_config.clone(),
        host_agent_pid: row.agent_pid.unwrap_or(0),
        driver_pid: row.qemu_pid.unwrap_or(0),
        message: message_of(row),
        errors: row.reason.iter().map(|r| r.message.clone()).collect(),
        reason: row.reason.clone(),
    }
}

/// The values a `--format` template (and a config's `message:`) sees.
fn template_values(row: &Row, root: &std::path::Path) -> Value {
    let lima = lima_row(row);
    let params = row
        .config
        .as_ref()
        .map(|c| c.raw.params())
        .unwrap_or_default();
    gotmpl::map([
        ("Name", Value::from(lima.name)),
        ("Status", Value::from(lima.status)),
        ("Dir", Value::from(lima.dir)),
        ("VMType", Value::from(lima.vm_type)),
        ("Arch", Value::from(lima.arch)),
        ("CPUs", Value::Int(lima.cpus.into())),
        ("Memory", Value::Int(lima.memory as i64)),
        ("Disk", Value::Int(lima.disk as i64)),
        ("SSHLocalPort", Value::Int(lima.ssh_local_port.into())),
        ("SSHConfigFile", Value::from(lima.ssh_config_file)),
        ("HostAgentPID", Value::Int(lima.host_agent_pid.into())),
        ("DriverPID", Value::Int(lima.driver_pid.into())),
        ("Message", Value::from(lima.message)),
        ("HostOS", Value::from(std::env::consts::OS)),
        ("HostArch", Value::from(vars::go_arch())),
        ("VMkeepHome", Value::from(root.display().to_string())),
        ("LimaHome", Value::from(root.display().to_string())),
        (
            "Param",
            gotmpl::map(params.into_iter().map(|(k, v)| (k, Value::Str(v)))),
        ),
    ])
}

/// A config's `message:` with its template expanded (empty when it has none
/// or it does not expand).
fn message_of(row: &Row) -> String {
    let Some(message) = row.config.as_ref().and_then(|c| c.raw.message.clone()) else {
        return String::new();
    };
    let mut plain = row.clone();
    // The message itself is not among the values it can use.
    if let Some(config) = &mut plain.config {
        config.raw.message = None;
    }
    let root = std::path::Path::new(&row.dir)
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    gotmpl::render(&message, &template_values(&plain, &root)).unwrap_or(message)
}

/// The `message:` of a running instance, for `start` to show (Lima shows it
/// after `limactl start`).
pub fn start_message(dir: &InstanceDir) -> Option<String> {
    let home = Home::at(dir.dir().parent()?);
    let row = row(&home, dir.name(), inspect(&home, dir.name())?);
    let text = message_of(&row);
    (!text.trim().is_empty()).then_some(text)
}

/// What the table says of a VM whose QEMU binary was replaced on disk.
const QEMU_REPLACED: &str = "was replaced on disk since this QEMU started";

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
        if let Some(path) = &row.qemu_replaced {
            println!(
                "{:width$}  note:   {} {QEMU_REPLACED}: run `vmkeep upgrade --qemu {}`",
                "", path, row.name
            );
        }
        if let Some(reason) = &row.reason {
            println!("{:width$}  reason: {}", "", reason.message);
            if !reason.hint.is_empty() {
                println!("{:width$}  hint:   {}", "", reason.hint);
            }
        }
    }
}
