//! The signals with which `halt`, `poweroff` and `reboot` ask init to end
//! the machine. Without `-f`, busybox's commands do not call reboot(2)
//! themselves: they send PID 1 SIGUSR1 (halt), SIGUSR2 (poweroff) or SIGTERM
//! (reboot), and the kernel drops signals to PID 1 that it has no handler
//! for. So init blocks them in every thread and one thread takes them with
//! sigwait(2); commands the agent starts get an empty mask back before exec.

use std::io;

use crate::agent::Ending;
use crate::log::log;

/// The signals init takes, and how each asks the machine to end. `halt`
/// powers off too: a halted CPU in a VM nobody looks at is a machine that
/// still holds its memory.
const SIGNALS: [(libc::c_int, Ending); 3] = [
    (libc::SIGUSR1, Ending::PowerOff),
    (libc::SIGUSR2, Ending::PowerOff),
    (libc::SIGTERM, Ending::Reboot),
];

/// How a received signal asks the machine to end; `None` for one init
/// does not take.
pub fn ending_for(signal: libc::c_int) -> Option<Ending> {
    SIGNALS
        .iter()
        .find(|(known, _)| *known == signal)
        .map(|(_, request)| *request)
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for (signal, _) in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Block the signals in the calling thread, and so in every thread it
/// starts afterwards. Call before the first thread is started.
pub fn block() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: set is initialised; the old mask is not wanted.
    let result = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(result))
    }
}

/// Start the thread that takes the signals and calls `on_request`.
pub fn watch(on_request: impl Fn(Ending) + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name("init-signals".into())
        .spawn(move || {
            let set = signal_set();
            loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: set is initialised and signal is writable.
                let result = unsafe { libc::sigwait(&set, &mut signal) };
                if result != 0 {
                    log!(
                        "sigwait failed: {}; halt, poweroff and reboot without -f stop working",
                        io::Error::from_raw_os_error(result)
                    );
                    return;
                }
                match ending_for(signal) {
                    Some(ending) => on_request(ending),
                    None => log!("ignoring unexpected signal {signal}"),
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_signals_map_to_what_the_user_asked_for() {
        assert_eq!(ending_for(libc::SIGUSR1), Some(Ending::PowerOff));
        assert_eq!(ending_for(libc::SIGUSR2), Some(Ending::PowerOff));
        assert_eq!(ending_for(libc::SIGTERM), Some(Ending::Reboot));
        assert_eq!(ending_for(libc::SIGHUP), None);
        assert_eq!(ending_for(libc::SIGINT), None);
    }
}
