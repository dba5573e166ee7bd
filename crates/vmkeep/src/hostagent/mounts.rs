//! The host agent's part in shared directories (`mounts:`): a virtiofsd per
//! directory started before QEMU boots, found again when a dead agent's
//! QEMU is adopted, ended when nothing uses it; each directory mounted in
//! the guest before the start reports ready (and again after a guest
//! reboot); a virtiofsd that dies while QEMU runs is journaled
//! (`shared-dir-lost`) and shown by `list` (its lock is free).
//!
//! virtiofsd outlives a killed host agent exactly as QEMU does: its own
//! process group and, under systemd, a scope of its own ordered before the
//! agent's unit. It exits by itself when QEMU closes its connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vmkeep_protocol::MountRequest;

use super::error::MountsError;
use crate::driver::qemu::args::ShareDevice;
use crate::driver::qemu::capabilities::Capabilities;
use crate::driver::qemu::virtiofs;
use crate::instance::journal::{Event, Journal};
use crate::instance::share_owner::Ids;
use crate::instance::shares::{self, GuestSide, HostSide, SharedDir};
use crate::instance::{Config, InstanceDir};
use crate::link::guest_link::GuestLink;
use crate::link::repeats;
use crate::os::cgroup;
use crate::os::process::ProcessHandle;

/// How long one mount in the guest may take.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long virtiofsd gets to end by itself once QEMU is gone.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long QEMU gets to end after one of its virtiofsd ended, before the
/// loss counts as one (virtiofsd notices QEMU's exit a moment before QEMU
/// has exited).
const QEMU_EXIT_GRACE: Duration = Duration::from_millis(1500);

/// One running virtiofsd.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub share: SharedDir,
    pub process: Arc<ProcessHandle>,
}

/// The shared directories of a run and their daemons.
#[derive(Debug, Clone, Default)]
pub struct Shares {
    pub daemons: Vec<Daemon>,
    /// Tags of shares whose virtiofsd was found gone at adoption: the
    /// guest is told, so that its power-off leaves them alone.
    pub lost: Vec<String>,
}

impl Shares {
    pub fn is_empty(&self) -> bool {
        self.daemons.is_empty() && self.lost.is_empty()
    }
}

/// The guest side of the shares: its user comes from the cloud image's
/// record; the tiny image's is root.
fn guest_side(dir: &InstanceDir, config: &Config) -> Result<GuestSide, MountsError> {
    if !config.is_cloud() {
        return Ok(GuestSide::tiny());
    }
    let user = crate::image::cloud::ImageRecord::load(dir)?.guest_user();
    Ok(GuestSide {
        user: user.name,
        uid: user.uid,
        home: user.home,
        cloud: true,
    })
}

/// The config's shares for this instance.
pub fn resolve(dir: &InstanceDir, config: &Config) -> Result<Vec<SharedDir>, MountsError> {
    if config.raw.mounts.as_ref().is_none_or(|m| m.is_empty()) {
        return Ok(Vec::new());
    }
    resolve_for(dir, config, &guest_side(dir, config)?)
}

fn resolve_for(
    dir: &InstanceDir,
    config: &Config,
    guest: &GuestSide,
) -> Result<Vec<SharedDir>, MountsError> {
    shares::resolve(
        config,
        dir.name().as_str(),
        dir.dir(),
        &HostSide::current(),
        guest,
    )
    .map_err(|source| MountsError::Shares {
        config: dir.config(),
        source,
    })
}

/// Start a virtiofsd for each share, before QEMU (which connects to their
/// sockets as it starts). On failure, what was started is ended.
pub fn start(
    dir: &InstanceDir,
    config: &Config,
    qemu: Capabilities,
) -> Result<(Shares, Vec<ShareDevice>), MountsError> {
    if config.raw.mounts.as_ref().is_none_or(|m| m.is_empty()) {
        return Ok((Shares::default(), Vec::new()));
    }
    let guest = guest_side(dir, config)?;
    let wanted = resolve_for(dir, config, &guest)?;
    // The guest user's primary group has the uid's number (cloud-init makes
    // it with the user, as useradd does on a fresh image).
    let guest_ids = Ids {
        uid: guest.uid,
        gid: guest.uid,
    };
    let plans = virtiofs::preflight(
        &wanted,
        &dir.config(),
        config.raw.mount_owner.as_ref(),
        guest_ids,
        qemu,
    )?;
    let shim = super::binary::shim_path().map_err(MountsError::Shim)?;
    let placement = cgroup::placement().ok();
    let mut shares = Shares::default();
    let mut devices = Vec::new();
    for plan in plans {
        let share = plan.share.clone();
        let name = dir.name().as_str();
        let pid = std::process::id().to_string();
        let index = format!("fs{}", share.index);
        let scope = cgroup::Scope::named(
            &["vmkeep", name, &index, &pid],
            format!("virtiofsd of vmkeep instance {name}: {}", share.describe()),
        );
        let started = virtiofs::start(&plan, dir, placement.as_ref().map(|p| (p, &scope)), &shim)
            .or_else(|e| match (&placement, &e) {
                // As for QEMU: without a scope it runs, and will not outlive
                // this agent's unit.
                (Some(_), virtiofs::VirtiofsError::Exited { log_tail, .. })
                    if cgroup::scope_failure(log_tail).is_some() =>
                {
                    tracing::warn!("{e}; virtiofsd runs in the host agent's cgroup");
                    virtiofs::start(&plan, dir, None, &shim)
                }
                _ => Err(e),
            });
        match started {
            Ok(process) => {
                tracing::info!(
                    "virtiofsd pid {} shares {}",
                    process.pid(),
                    share.describe()
                );
                devices.push(ShareDevice {
                    tag: share.tag(),
                    socket: dir.share_socket(share.index),
                });
                shares.daemons.push(Daemon {
                    share,
                    process: Arc::new(process),
                });
            }
            Err(e) => {
                end_now(&shares);
                return Err(e.into());
            }
        }
    }
    Ok((shares, devices))
}

/// The virtiofsds of an adopted QEMU, found by their locks (the config
/// tells each one's mount point; a directory no longer in it is kept
/// running, unmounted by nobody), and a `shared-dir-lost` event for each
/// one that ended while no agent watched.
pub fn adopt(dir: &InstanceDir, config: &Config) -> (Shares, Vec<Event>) {
    let known = resolve(dir, config).unwrap_or_default();
    let mut shares = Shares::default();
    let mut lost = Vec::new();
    for (index, _) in dir.share_locks() {
        match virtiofs::find_running(dir, index) {
            Ok(Some(process)) => {
                let share = known
                    .iter()
                    .find(|s| s.index == index)
                    .cloned()
                    .unwrap_or_else(|| SharedDir {
                        index,
                        location: Default::default(),
                        mount_point: String::new(),
                        writable: false,
                    });
                tracing::info!(
                    "adopted virtiofsd pid {} ({})",
                    process.pid(),
                    share.describe()
                );
                shares.daemons.push(Daemon {
                    share,
                    process: Arc::new(process),
                });
            }
            Ok(None) => {
                let share = known
                    .iter()
                    .find(|s| s.index == index)
                    .map(SharedDir::describe)
                    .unwrap_or_else(|| format!("mounts[{index}]"));
                tracing::warn!(
                    "the virtiofsd of {share} is gone; the guest's mount of it fails until the VM restarts"
                );
                shares.lost.push(shares::tag(index));
                lost.push(Event::SharedDirLost {
                    index,
                    share,
                    exit: "ended while no host agent ran".into(),
                });
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    (shares, lost)
}

/// With no QEMU running: end the virtiofsds left by a dead agent (one that
/// never got its QEMU waits for it forever). Returns what was ended.
pub fn end_leftovers(dir: &InstanceDir) -> Vec<String> {
    let mut ended = Vec::new();
    for (index, _) in dir.share_locks() {
        if let Ok(Some(process)) = virtiofs::find_running(dir, index) {
            let _ = process.kill();
            process.wait_timeout(Duration::from_secs(5));
            ended.push(format!(
                "virtiofsd pid {} of mounts[{index}]",
                process.pid()
            ));
        }
    }
    ended
}

/// End every virtiofsd at once (QEMU never came up to use them).
pub fn abandon(shares: &Shares) {
    end_now(shares);
}

fn end_now(shares: &Shares) {
    for daemon in &shares.daemons {
        let _ = daemon.process.kill();
        daemon.process.wait_timeout(Duration::from_secs(5));
        daemon.process.reap();
    }
}

/// The mount requests for the guest.
fn requests(shares: &Shares) -> Vec<MountRequest> {
    shares
        .daemons
        .iter()
        .filter(|d| !d.share.mount_point.is_empty())
        .map(|d| MountRequest {
            tag: d.share.tag(),
            mount_point: d.share.mount_point.clone(),
            read_only: !d.share.writable,
        })
        .collect()
}

/// Mount every share in the guest (before the start reports ready). A share
/// the guest cannot mount fails the start: never a silent no-mount.
pub async fn mount_all(link: &GuestLink, shares: &Shares) -> Result<(), MountsError> {
    for request in requests(shares) {
        let describe = shares
            .daemons
            .iter()
            .find(|d| d.share.tag() == request.tag)
            .map(|d| d.share.describe())
            .unwrap_or_default();
        link.mount(request, MOUNT_TIMEOUT)
            .await
            .map_err(|source| MountsError::Mount {
                share: describe,
                source,
            })?;
    }
    Ok(())
}

/// Whether a failed mount fails the start: for a guest this agent booted,
/// yes (never a silent no-mount); an adopted guest runs on, and the
/// problem is logged.
pub fn must_stop<E: std::fmt::Display + ?Sized>(booted_here: bool, error: &E) -> bool {
    if !booted_here {
        tracing::warn!("{error}");
    }
    booted_here
}

/// While the VM runs: mount the shares again on every new guest-agent
/// connection (a guest reboot unmounted them; on a mere reconnect the guest
/// says they are mounted already), and journal a virtiofsd that ends while
/// QEMU still runs.
pub async fn keep(shares: Shares, mut guest: watch::Receiver<Option<GuestLink>>, dir: InstanceDir) {
    if shares.is_empty() {
        return;
    }
    // Dropped (and so aborted) with this task.
    let mut watchers = tokio::task::JoinSet::new();
    for daemon in shares.daemons.clone() {
        let dir = dir.clone();
        let guest = guest.clone();
        watchers.spawn(async move {
            let exit = daemon.process.exited().await;
            let qemu = dir.qemu_pid();
            let gone = async {
                while crate::os::lock::holder(&qemu).ok().flatten().is_some() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            if tokio::time::timeout(QEMU_EXIT_GRACE, gone).await.is_ok() {
                return; // it ended with QEMU
            }
            let share = daemon.share.describe();
            tracing::error!(
                "the virtiofsd of {share} ended ({exit}) while QEMU runs: the guest's mount of it fails until the VM restarts"
            );
            let event = Event::SharedDirLost {
                index: daemon.share.index,
                share,
                exit: exit.to_string(),
            };
            if let Err(e) = Journal::open(&dir.journal()).and_then(|mut j| j.record(event)) {
                tracing::warn!("cannot write the journal: {e}");
            }
            // So that the guest's power-off does not wait on it.
            let link = guest.borrow().clone();
            if let Some(link) = link
                && let Err(e) = link.share_lost(&daemon.share.tag(), MOUNT_TIMEOUT).await
            {
                tracing::warn!("cannot tell the guest: {e}");
            }
        });
    }
    // The link the start mounted on is the first one published.
    let mut first = true;
    loop {
        let Some(link) = super::open_link(&mut guest).await else {
            return;
        };
        if !first
            && let Err(e) = mount_all(&link, &shares).await
            && let Some(repeated) = repeats::allow("mount shares")
        {
            tracing::warn!("{e}{repeated}");
        }
        first = false;
        for tag in &shares.lost {
            if let Err(e) = link.share_lost(tag, MOUNT_TIMEOUT).await
                && let Some(repeated) = repeats::allow("share lost")
            {
                tracing::warn!("cannot tell the guest that {tag} is gone: {e}{repeated}");
            }
        }
        link.closed().await;
    }
}

/// At the end of a run: QEMU is gone, so each virtiofsd ends by itself;
/// one that does not within [`EXIT_GRACE`] is killed (through its pidfd).
pub async fn stop(shares: &Shares) {
    for daemon in &shares.daemons {
        let ended = tokio::time::timeout(EXIT_GRACE, daemon.process.exited()).await;
        if ended.is_err() {
            tracing::warn!(
                "virtiofsd pid {} did not end with QEMU; killing it",
                daemon.process.pid()
            );
            let _ = daemon.process.kill();
            let _ = tokio::time::timeout(EXIT_GRACE, daemon.process.exited()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(index: usize, mount_point: &str, writable: bool) -> Daemon {
        // Any process of ours stands for the daemon: only its share is read.
        let program = crate::os::process::Program::new(std::path::Path::new("/bin/true"), &[""; 0]);
        let log = tempfile::tempfile().unwrap();
        let process = crate::os::process::spawn_in_own_group(&program, log).unwrap();
        Daemon {
            share: SharedDir {
                index,
                location: "/src".into(),
                mount_point: mount_point.into(),
                writable,
            },
            process: Arc::new(process),
        }
    }

    #[test]
    fn each_share_is_asked_for_with_its_tag_and_mode_and_an_unknown_one_is_left_alone() {
        let shares = Shares {
            daemons: vec![
                daemon(0, "/src", true),
                // Adopted, no longer in the config: nobody mounts it.
                daemon(1, "", false),
                daemon(2, "/home/u", false),
            ],
            lost: vec![],
        };
        let asked = requests(&shares);
        assert_eq!(
            asked,
            [
                MountRequest {
                    tag: "fs0".into(),
                    mount_point: "/src".into(),
                    read_only: false,
                },
                MountRequest {
                    tag: "fs2".into(),
                    mount_point: "/home/u".into(),
                    read_only: true,
                },
            ]
        );
        for daemon in &shares.daemons {
            daemon.process.reap();
        }
    }

    #[test]
    fn a_failed_mount_fails_only_a_start_this_agent_booted() {
        assert!(must_stop(true, "cannot mount"));
        assert!(!must_stop(false, "cannot mount"));
    }
}
