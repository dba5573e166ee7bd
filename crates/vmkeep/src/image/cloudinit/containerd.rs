//! Lima's `containerd.system` and `containerd.user`, made with the guest
//! distribution's own packages (Lima installs its own nerdctl-full archive
//! instead; vmkeep ships none): `containerd`, and `nerdctl` where the
//! release has it (Debian 12 does not; Debian 13 and Ubuntu do). What the
//! distribution lacks is said in one line on the console, never a failed
//! boot.
//!
//! `system`: containerd as a system service. `user`: rootless containerd for
//! the guest user through nerdctl's `containerd-rootless-setuptool.sh`
//! where the distribution ships it, else the system service (said so).

use super::shell_quote;

/// The first-boot script (run as root, before the provision scripts) for
/// `system`/`user`, or `None` when neither is on.
pub fn script(system: bool, user: bool, user_name: &str) -> Option<String> {
    if !system && !user {
        return None;
    }
    let user_name = shell_quote(user_name);
    let mut script = String::from(
        "#!/bin/sh\n\
         # vmkeep: Lima's containerd, from the distribution's own packages.\n\
         say() { echo \"vmkeep: containerd: $*\" | tee /dev/console; }\n\
         if command -v apt-get >/dev/null 2>&1; then\n\
         \x20 export DEBIAN_FRONTEND=noninteractive\n\
         \x20 apt-get update -q >/dev/null 2>&1 || say 'apt-get update failed'\n\
         \x20 has() { apt-cache show \"$1\" >/dev/null 2>&1; }\n\
         \x20 add() { apt-get install -y -q --no-install-recommends \"$@\"; }\n\
         elif command -v dnf >/dev/null 2>&1; then\n\
         \x20 has() { dnf -q info \"$1\" >/dev/null 2>&1; }\n\
         \x20 add() { dnf install -y -q \"$@\"; }\n\
         elif command -v zypper >/dev/null 2>&1; then\n\
         \x20 has() { zypper -q info \"$1\" 2>/dev/null | grep -q '^Name'; }\n\
         \x20 add() { zypper -q -n install \"$@\"; }\n\
         elif command -v apk >/dev/null 2>&1; then\n\
         \x20 has() { apk info -e \"$1\" >/dev/null 2>&1 || apk search -q -x \"$1\" | grep -q .; }\n\
         \x20 add() { apk add -q \"$@\"; }\n\
         else\n\
         \x20 say 'no package manager vmkeep knows (apt-get, dnf, zypper, apk): not installed'; exit 0\n\
         fi\n\
         has containerd || { say 'the distribution has no containerd package: not installed'; exit 0; }\n\
         packages=containerd\n\
         if has nerdctl; then packages=\"$packages nerdctl\"; else say 'the distribution has no nerdctl package: use ctr (sudo ctr ...)'; fi\n",
    );
    if user {
        script.push_str(
            "for p in rootlesskit uidmap slirp4netns dbus-user-session; do has \"$p\" && packages=\"$packages $p\"; done\n",
        );
    }
    script.push_str(
        "add $packages || { say \"installing $packages failed\"; exit 0; }\n\
         system() { systemctl enable --now containerd || say 'the containerd service did not start'; }\n",
    );
    if system {
        script.push_str("system\n");
    }
    if user {
        script.push_str(&format!(
            "if command -v containerd-rootless-setuptool.sh >/dev/null 2>&1; then\n\
             \x20 loginctl enable-linger {user_name}\n\
             \x20 runuser -l {user_name} -c 'containerd-rootless-setuptool.sh install' || say 'rootless containerd did not start'\n\
             else\n\
             \x20 say 'rootless containerd needs containerd-rootless-setuptool.sh (nerdctl'\"'\"'s), which the distribution does not ship: the system containerd runs instead'\n\
             \x20 system\n\
             fi\n"
        ));
    }
    script.push_str("exit 0\n");
    Some(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_unless_asked_and_each_mode_does_its_part() {
        assert_eq!(script(false, false, "u"), None);
        let system = script(true, false, "u").unwrap();
        assert!(system.contains("packages=containerd") && system.contains("\nsystem\n"));
        assert!(!system.contains("rootless"), "{system}");
        let user = script(false, true, "o'neil").unwrap();
        assert!(
            user.contains("containerd-rootless-setuptool.sh install")
                && user.contains(r"'o'\''neil'")
                && user.contains("rootlesskit"),
            "{user}"
        );
        assert!(!user.contains("\nsystem\n"), "only as the fallback: {user}");
    }

    #[test]
    fn the_script_is_valid_shell() {
        for (system, user) in [(true, false), (false, true), (true, true)] {
            let text = script(system, user, "bob").unwrap();
            let status = std::process::Command::new("sh")
                .args(["-n", "-c", &text])
                .status()
                .unwrap();
            assert!(status.success(), "{text}");
        }
    }
}
