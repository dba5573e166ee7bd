//! A [`ServiceSpec`] as a launchd property list (LaunchAgent for login,
//! LaunchDaemon with `UserName` for boot), written with the `plist` crate.
//!
//! - `RunAtLoad`: start when loaded (at login or boot).
//! - Keep-alive: `KeepAlive = {SuccessfulExit: false}`: relaunch only after a
//!   non-zero exit (a crash or a failed start); the host agent exits 0 after a
//!   requested stop or a guest power-off. `ThrottleInterval` spaces relaunches.
//! - `ExitTimeOut`: how long launchd waits after SIGTERM before SIGKILL,
//!   longer than the whole stop ladder.
//! - No `ProcessType`: `Background` would throttle the VM's CPU and I/O.

use plist::{Dictionary, Value};

use super::{Domain, ServiceSpec, service_name};

/// Render the plist as XML, with the vmkeep marker as a comment after the
/// XML header.
pub fn render(spec: &ServiceSpec) -> String {
    let mut bytes = Vec::new();
    Value::Dictionary(dictionary(spec))
        .to_writer_xml(&mut bytes)
        .expect("writing a plist to memory cannot fail");
    let xml = String::from_utf8(bytes).expect("the plist crate writes UTF-8");
    let comment = format!("<!-- {} -->", spec.marker.replace("--", "- -"));
    match xml.split_once('\n') {
        Some((header, rest)) => format!("{header}\n{comment}\n{rest}\n"),
        None => format!("{comment}\n{xml}\n"),
    }
}

/// The plist's top-level dictionary.
pub fn dictionary(spec: &ServiceSpec) -> Dictionary {
    let mut d = Dictionary::new();
    let label = service_name(spec.domain, &spec.user, spec.name.as_str());
    d.insert("Label".into(), label.into());
    d.insert(
        "ProgramArguments".into(),
        Value::Array(
            spec.program_arguments
                .iter()
                .map(|a| Value::from(a.as_str()))
                .collect(),
        ),
    );
    let mut env = Dictionary::new();
    for (key, value) in &spec.environment {
        env.insert(key.clone(), value.as_str().into());
    }
    d.insert("EnvironmentVariables".into(), Value::Dictionary(env));
    d.insert(
        "WorkingDirectory".into(),
        spec.working_directory.as_str().into(),
    );
    d.insert("StandardOutPath".into(), spec.log.as_str().into());
    d.insert("StandardErrorPath".into(), spec.log.as_str().into());
    d.insert("RunAtLoad".into(), true.into());
    if spec.options.keep_alive {
        let mut keep_alive = Dictionary::new();
        keep_alive.insert("SuccessfulExit".into(), false.into());
        d.insert("KeepAlive".into(), Value::Dictionary(keep_alive));
        d.insert(
            "ThrottleInterval".into(),
            Value::Integer(spec.throttle_interval.as_secs().into()),
        );
    } else {
        d.insert("KeepAlive".into(), false.into());
    }
    d.insert(
        "ExitTimeOut".into(),
        Value::Integer(spec.stop_timeout.as_secs().into()),
    );
    if spec.domain == Domain::LaunchDaemon {
        d.insert("UserName".into(), spec.user.as_str().into());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::super::tests::spec_for;
    use super::super::{Condition, Manager};
    use super::*;

    fn spec(condition: Condition, keep_alive: bool, stop: u64) -> ServiceSpec {
        spec_for(Manager::Launchd, condition, keep_alive, stop, "ann")
    }

    fn parsed(text: &str) -> Dictionary {
        Value::from_reader_xml(text.as_bytes())
            .expect("the rendered plist parses")
            .into_dictionary()
            .expect("a dictionary at the top")
    }

    fn strings(value: &Value) -> Vec<&str> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_string().unwrap())
            .collect()
    }

    #[test]
    fn login_with_keep_alive_parses_back() {
        let text = render(&spec(Condition::Login, true, 30));
        assert!(text.starts_with("<?xml"), "{text}");
        let d = parsed(&text);
        assert_eq!(d["Label"].as_string(), Some("io.vmkeep.dev"));
        assert_eq!(
            strings(&d["ProgramArguments"]),
            ["/opt/vmkeep/bin/vmkeep", "start", "dev", "--foreground"]
        );
        let env = d["EnvironmentVariables"].as_dictionary().unwrap();
        assert_eq!(env["VMKEEP_HOME"].as_string(), Some("/home/ann/.vmkeep"));
        assert!(
            env["PATH"]
                .as_string()
                .unwrap()
                .starts_with("/opt/homebrew/bin:")
        );
        assert_eq!(
            d["StandardOutPath"].as_string(),
            Some("/home/ann/.vmkeep/dev/autostart.log")
        );
        assert_eq!(d["StandardErrorPath"], d["StandardOutPath"]);
        assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
        let keep_alive = d["KeepAlive"].as_dictionary().unwrap();
        assert_eq!(keep_alive.len(), 1);
        assert_eq!(keep_alive["SuccessfulExit"].as_boolean(), Some(false));
        assert_eq!(d["ThrottleInterval"].as_unsigned_integer(), Some(30));
        assert_eq!(d["ExitTimeOut"].as_unsigned_integer(), Some(47));
        assert!(!d.contains_key("UserName"));
        assert!(!d.contains_key("ProcessType"));
    }

    #[test]
    fn without_keep_alive_launchd_never_relaunches() {
        let d = parsed(&render(&spec(Condition::Login, false, 30)));
        assert_eq!(d["KeepAlive"].as_boolean(), Some(false));
        assert!(!d.contains_key("ThrottleInterval"));
    }

    #[test]
    fn boot_is_a_daemon_running_as_the_user() {
        for keep_alive in [true, false] {
            let d = parsed(&render(&spec(Condition::Boot, keep_alive, 30)));
            assert_eq!(d["Label"].as_string(), Some("io.vmkeep.ann.dev"));
            assert_eq!(d["UserName"].as_string(), Some("ann"));
            assert_eq!(d["KeepAlive"].as_dictionary().is_some(), keep_alive);
        }
    }

    #[test]
    fn exit_timeout_follows_the_instance_deadline() {
        let d = parsed(&render(&spec(Condition::Login, true, 120)));
        assert_eq!(d["ExitTimeOut"].as_unsigned_integer(), Some(137));
    }

    #[test]
    fn special_characters_survive_the_round_trip() {
        let mut odd = spec(Condition::Login, true, 30);
        odd.environment[0].1 = "/Users/a <b> & \"c\"".into();
        let d = parsed(&render(&odd));
        assert_eq!(
            d["EnvironmentVariables"].as_dictionary().unwrap()["VMKEEP_HOME"].as_string(),
            Some("/Users/a <b> & \"c\"")
        );
    }
}
