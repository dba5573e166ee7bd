//! Lima's `mountInotify`, done: while the VM runs, a thread of the host
//! agent watches every directory of each writable share with inotify
//! (`os::inotify`), turns what it sees into changes by
//! `crate::mount_inotify`'s rules, and the agent sends them to the guest
//! agent, which touches each path in the guest so that the guest's own
//! watchers see it.
//!
//! Bounded: at most `MAX_WATCHES` directories (one log line when the cap,
//! or the host's own limit, is reached), pending changes coalesced and
//! capped per share, sent at most every `SEND_EVERY`; problems are logged
//! thinly in `ha.log`, nothing is journaled.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::instance::shares::SharedDir;
use crate::link::guest_link::{GuestLink, GuestLinkError};
use crate::mount_inotify::{MAX_WATCHES, Pending, SEND_EVERY, Seen, Watches, join};
use crate::os::inotify::{DirEvent, DirWatcher};

/// How long the guest gets to raise one share's changes.
const GUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the watching thread looks whether it should end.
const STOP_CHECK: Duration = Duration::from_millis(500);

/// A writable share's root on the host.
#[derive(Debug, Clone)]
struct Root {
    tag: String,
    path: PathBuf,
    dev: u64,
}

/// Ends the watching thread when the agent's task ends (dropped).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Watch the writable shares and tell the guest of their changes, for as
/// long as the agent runs.
pub async fn keep(shares: Vec<SharedDir>, guest: watch::Receiver<Option<GuestLink>>) {
    let roots: Vec<Root> = shares
        .iter()
        .filter(|s| s.writable && !s.mount_point.is_empty())
        .filter_map(|s| {
            let path = std::fs::canonicalize(&s.location).ok()?;
            let dev = std::fs::metadata(&path).ok()?.dev();
            Some(Root {
                tag: s.tag(),
                path,
                dev,
            })
        })
        .collect();
    if roots.is_empty() {
        tracing::info!(
            "mountInotify: no writable share to watch (the guest cannot be told of changes on a read-only one)"
        );
        return;
    }
    let pending = Arc::new(Mutex::new(Pending::default()));
    let changed = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(Arc::clone(&stop));
    {
        let (pending, changed, stop) = (
            Arc::clone(&pending),
            Arc::clone(&changed),
            Arc::clone(&stop),
        );
        let spawned = std::thread::Builder::new()
            .name("mount-inotify".into())
            .spawn(move || watch_shares(&roots, &pending, &changed, &stop));
        if let Err(e) = spawned {
            tracing::warn!("mountInotify: cannot start its thread: {e}");
            return;
        }
    }
    let mut failures = 0u64;
    loop {
        changed.notified().await;
        tokio::time::sleep(SEND_EVERY).await;
        let messages = pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        let link = guest.borrow().clone();
        let Some(link) = link else { continue };
        for message in messages {
            let tag = message.tag.clone();
            match link.raise_host_changes(message, GUEST_TIMEOUT).await {
                Ok(raised) if raised.failed == 0 => {}
                Ok(raised) => tracing::debug!(
                    "mountInotify: {tag}: {} change(s) raised in the guest, {} not",
                    raised.touched,
                    raised.failed
                ),
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        let older = matches!(&e, GuestLinkError::Refused { message, .. } if message.starts_with("invalid request"));
                        tracing::warn!(
                            "mountInotify: cannot tell the guest of {tag}'s changes ({failures} time(s)): {e}{}",
                            if older {
                                " (a guest agent older than mountInotify)"
                            } else {
                                ""
                            }
                        );
                    }
                }
            }
        }
    }
}

/// What the watching thread remembers between reads.
struct Watching<'a> {
    watcher: DirWatcher,
    watches: Watches,
    roots: &'a [Root],
    /// Directories moved out (by cookie), waiting one read for their
    /// `moved_to`; then their watches go.
    moved_out: BTreeMap<u32, (String, String, bool)>,
    said_cap: bool,
    said_unreadable: bool,
}

/// The thread: watch every directory of `roots`, record what is seen into
/// `pending`, wake the sender.
fn watch_shares(roots: &[Root], pending: &Mutex<Pending>, changed: &Notify, stop: &AtomicBool) {
    let watcher = match DirWatcher::new() {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::warn!("mountInotify: cannot watch the shares: {e}");
            return;
        }
    };
    let mut watching = Watching {
        watcher,
        watches: Watches::default(),
        roots,
        moved_out: BTreeMap::new(),
        said_cap: false,
        said_unreadable: false,
    };
    for root in roots {
        let before = watching.watches.len();
        watching.add_tree(root, "", None);
        tracing::info!(
            "mountInotify: watching {} director(y/ies) of {}",
            watching.watches.len() - before,
            root.path.display()
        );
    }
    let mut failed_reads = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let events = match watching.watcher.wait(STOP_CHECK) {
            Ok(events) => events,
            Err(e) => {
                failed_reads += 1;
                if failed_reads.is_power_of_two() {
                    tracing::warn!("mountInotify: cannot read the host's events: {e}");
                }
                std::thread::sleep(STOP_CHECK);
                continue;
            }
        };
        let expiring: Vec<u32> = watching.moved_out.keys().copied().collect();
        let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut any = false;
        for event in events {
            any |= watching.handle(&event, &mut pending);
        }
        drop(pending);
        // Moved out of the share (no `moved_to` came): stop watching them.
        for cookie in expiring {
            if let Some((tag, path, _)) = watching.moved_out.remove(&cookie) {
                for wd in watching.watches.under(&tag, &path) {
                    watching.watcher.unwatch(wd);
                    watching.watches.forget(wd);
                }
            }
        }
        if any {
            changed.notify_one();
        }
    }
}

impl Watching<'_> {
    /// Watch directory `dir` of `root` and every directory below it (not
    /// through symlinks, not into other file systems), within the cap. With
    /// `created`, everything found is recorded as created: it appeared
    /// before its directory's watch did.
    fn add_tree(&mut self, root: &Root, dir: &str, mut created: Option<&mut Pending>) {
        let mut stack = vec![dir.to_string()];
        while let Some(dir) = stack.pop() {
            if !self.watches.has_room() {
                self.say_cap(
                    root,
                    &dir,
                    &format!("the most vmkeep watches for one VM ({MAX_WATCHES})"),
                );
                return;
            }
            let path = root.path.join(&dir);
            match self.watcher.watch(&path) {
                Ok(wd) => {
                    let _ = self.watches.insert(wd, &root.tag, &dir);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    self.say_cap(
                        root,
                        &dir,
                        "the host's limit of inotify watches (raise fs.inotify.max_user_watches)",
                    );
                    return;
                }
                Err(_) => continue,
            }
            let Ok(entries) = std::fs::read_dir(&path) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    self.say_unreadable(&entry.path());
                    continue;
                };
                let child = join(&dir, &name);
                if let Some(pending) = created.as_deref_mut() {
                    pending.record(&root.tag, &child, Seen::Created);
                }
                let same_fs_dir = entry.file_type().is_ok_and(|t| t.is_dir())
                    && entry.metadata().is_ok_and(|m| m.dev() == root.dev);
                if same_fs_dir {
                    stack.push(child);
                }
            }
        }
    }

    /// Record one event; whether there is something to send.
    fn handle(&mut self, event: &DirEvent, pending: &mut Pending) -> bool {
        let flags = event.flags;
        if flags.overflow {
            let tags: BTreeSet<String> = self.roots.iter().map(|r| r.tag.clone()).collect();
            pending.overflow(&tags);
            // Directories made meanwhile are found again.
            for root in self.roots {
                self.add_tree(root, "", None);
            }
            return true;
        }
        let Some((tag, dir)) = self
            .watches
            .get(event.wd)
            .map(|(t, d)| (t.to_string(), d.to_string()))
        else {
            return false;
        };
        if flags.ignored {
            self.watches.forget(event.wd);
            return false;
        }
        let Some(name) = &event.name else {
            // The directory itself: its attributes, or it went (its parent
            // says so).
            if flags.attrib && !dir.is_empty() {
                pending.record(&tag, &dir, Seen::Modified);
                return true;
            }
            return false;
        };
        let Some(name) = name.to_str() else {
            let path = self.root_of(&tag).map(|r| r.path.join(&dir).join(name));
            if let Some(path) = path {
                self.say_unreadable(&path);
            }
            return false;
        };
        let path = join(&dir, name);
        if flags.created || flags.moved_to {
            pending.record(&tag, &path, Seen::Created);
            if flags.is_dir {
                match self.moved_out.remove(&event.cookie) {
                    Some((from_tag, from, true)) if flags.moved_to && from_tag == tag => {
                        self.watches.moved(&tag, &from, &path);
                    }
                    _ => {
                        if let Some(root) = self.root_of(&tag).cloned() {
                            self.add_tree(&root, &path, Some(pending));
                        }
                    }
                }
            }
        } else if flags.deleted || flags.moved_from {
            pending.record(&tag, &path, Seen::Removed);
            if flags.moved_from {
                self.moved_out
                    .insert(event.cookie, (tag.clone(), path, flags.is_dir));
            }
        } else if flags.written || flags.attrib {
            pending.record(&tag, &path, Seen::Modified);
        } else {
            return false;
        }
        true
    }

    fn root_of(&self, tag: &str) -> Option<&Root> {
        self.roots.iter().find(|r| r.tag == tag)
    }

    fn say_cap(&mut self, root: &Root, dir: &str, what: &str) {
        if !std::mem::replace(&mut self.said_cap, true) {
            tracing::warn!(
                "mountInotify: watching {} directories, {what}: changes in the others (the first: {}) are not raised in the guest",
                self.watches.len(),
                root.path.join(dir).display()
            );
        }
    }

    fn say_unreadable(&mut self, path: &std::path::Path) {
        if !std::mem::replace(&mut self.said_unreadable, true) {
            tracing::info!(
                "mountInotify: names that are not UTF-8 are not raised in the guest (the first: {})",
                path.display()
            );
        }
    }
}
