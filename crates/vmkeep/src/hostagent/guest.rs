//! The guest link the agent keeps: published for the API and the keepers,
//! reconnected when it drops (a guest reboot, a channel reset), a new boot
//! told apart from an untrusted claim of one.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::api::GuestInfo;
use crate::link::guest_link::{self, GuestLink};
use crate::link::repeats;

/// The guest link the agent publishes, once one is open (the current one
/// if it still is); `None` once the agent is gone.
pub(crate) async fn open_link(guest: &mut watch::Receiver<Option<GuestLink>>) -> Option<GuestLink> {
    let open = |link: &Option<GuestLink>| link.as_ref().is_some_and(|l| !l.is_closed());
    guest
        .wait_for(open)
        .await
        .ok()
        .and_then(|link| link.clone())
}

/// Until the published link is closed or withdrawn (or the agent is gone).
pub(crate) async fn link_gone(guest: &mut watch::Receiver<Option<GuestLink>>) {
    let gone = |link: &Option<GuestLink>| link.as_ref().is_none_or(|l| l.is_closed());
    let _ = guest.wait_for(gone).await;
}

/// Keep a guest-agent connection available: when it drops (guest reboot,
/// channel reset), reconnect and publish the new one. `on_reboot` hears of
/// each new boot of the guest: a new boot id after QEMU reset the machine
/// (`reset` is set on QMP's RESET). A guest that claims new boots without a
/// reset is untrusted talk: logged, thinly, never journaled.
pub(super) async fn keep_guest_link(
    socket: PathBuf,
    mut link: GuestLink,
    mut boot_id: String,
    publish: watch::Sender<Option<GuestLink>>,
    reset: Arc<AtomicBool>,
    mut on_reboot: impl FnMut(GuestInfo),
) {
    let mut claims = crate::link::untrusted::LogBudget::default();
    loop {
        link.closed().await;
        let _ = publish.send(None);
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        match guest_link::wait_ready(&socket, far).await {
            Ok((new_link, guest)) => {
                link = new_link;
                if guest.boot_id != boot_id {
                    if reset.swap(false, Ordering::SeqCst) {
                        if let Some(repeated) = repeats::allow("guest rebooted") {
                            tracing::info!(boot_id = %guest.boot_id, "the guest rebooted{repeated}");
                        }
                        boot_id = guest.boot_id.clone();
                        on_reboot(guest);
                    } else if let Some(seen) = claims.tick() {
                        tracing::warn!(
                            seen,
                            "the guest agent reports a new boot id ({}) though QEMU did not reset the machine; ignored",
                            crate::link::untrusted::shown(&guest.boot_id, 64)
                        );
                    }
                }
                let _ = publish.send(Some(link.clone()));
            }
            Err(e) => {
                if let Some(repeated) = repeats::allow("guest agent") {
                    tracing::warn!("guest agent: {e}{repeated}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::{Mutex, mpsc};

    use vmkeep_protocol::{FromGuest, Op, Reply, Request};

    use super::*;

    /// A guest agent on `listener` that answers each connection's hello
    /// with the next boot id (saying so on `answered`), and ends that
    /// connection when told on `next`.
    fn guest_with_boots(
        listener: UnixListener,
        boots: Vec<&'static str>,
        answered: tokio::sync::mpsc::UnboundedSender<&'static str>,
    ) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (next, told) = mpsc::channel::<()>();
        let guest = std::thread::spawn(move || {
            for boot in boots {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let hello: Request = vmkeep_protocol::decode_line(line.as_bytes()).unwrap();
                assert_eq!(hello.op, Op::Hello);
                let info = GuestInfo {
                    kernel: "6.1".into(),
                    boot_id: boot.into(),
                    uptime_secs: 1.0,
                    agent_version: "0.1".into(),
                    data_mount: None,
                    data_disk: None,
                };
                let reply = FromGuest::Reply {
                    id: hello.id,
                    body: Reply::Hello { ready: true, info },
                };
                writer
                    .write_all(&vmkeep_protocol::encode_line(&reply))
                    .unwrap();
                let _ = answered.send(boot);
                if told.recv().is_err() {
                    return;
                }
            }
        });
        (next, guest)
    }

    /// Only a new boot id after QEMU's reset is a reboot: a guest that
    /// reconnects claiming another boot, without one, is not journaled.
    #[tokio::test]
    async fn a_new_boot_id_is_a_reboot_only_after_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ga.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
        let (next, guest) =
            guest_with_boots(listener, vec!["first", "claimed", "real"], answered_tx);
        let far = Instant::now() + Duration::from_secs(10);
        let (link, info) = guest_link::wait_ready(&socket, far).await.unwrap();
        assert_eq!(answered.recv().await, Some("first"));
        let (publish, published) = watch::channel(Some(link.clone()));
        let reset = Arc::new(AtomicBool::new(false));
        let reboots = Arc::new(Mutex::new(Vec::new()));
        let heard = Arc::clone(&reboots);
        let keeper = tokio::spawn(keep_guest_link(
            socket.clone(),
            link,
            info.boot_id,
            publish,
            Arc::clone(&reset),
            move |guest: GuestInfo| heard.lock().unwrap().push(guest.boot_id),
        ));
        // The keeper has taken the hello the guest just answered: it
        // published the new link (the old one is closed by then).
        let taken = |published: &watch::Receiver<Option<GuestLink>>| {
            let mut published = published.clone();
            async move {
                let open = |link: &Option<GuestLink>| link.as_ref().is_some_and(|l| !l.is_closed());
                tokio::time::timeout(Duration::from_secs(10), published.wait_for(open))
                    .await
                    .expect("the keeper published the new link")
                    .unwrap();
            }
        };

        // The guest drops the link and comes back claiming another boot.
        next.send(()).unwrap();
        assert_eq!(answered.recv().await, Some("claimed"));
        taken(&published).await;
        assert!(reboots.lock().unwrap().is_empty(), "no reset, no reboot");

        // QEMU resets the machine; the guest comes back with a new boot.
        reset.store(true, Ordering::SeqCst);
        next.send(()).unwrap();
        assert_eq!(answered.recv().await, Some("real"));
        taken(&published).await;
        assert_eq!(*reboots.lock().unwrap(), ["real"]);
        assert!(
            !reset.load(Ordering::SeqCst),
            "one reset counts for one boot"
        );

        keeper.abort();
        drop(next);
        guest.join().unwrap();
    }
}
