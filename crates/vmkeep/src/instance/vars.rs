//! Lima's template variables in what runs in the guest: `{{.Name}}`,
//! `{{.Hostname}}`, `{{.User}}`, `{{.UID}}`, `{{.Home}}` (the guest user's
//! home), `{{.Dir}}` (the instance directory on the host), `{{.Param.Key}}`,
//! `{{.HostOS}}`, `{{.HostArch}}`. Expanded in provision scripts, data files
//! (path, content, owner), yq edits and probes when the seed is written, and
//! checked when the instance is created.

use std::collections::BTreeMap;
use std::path::Path;

use crate::instance::config::Config;
use crate::instance::provision::{self, ProvisionMode};
use crate::text::gotmpl::{self, Value};

/// The guest user an instance gets (decided at create, kept in `image.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestUser {
    pub name: String,
    pub uid: u32,
    pub home: String,
    pub shell: String,
    pub comment: Option<String>,
}

/// The user for `config` on this host: Lima's `user:` settings, else the
/// host user's name (or `vmkeep`) and uid (1000 for root or a system user),
/// home `/home/NAME` (Lima's `/home/NAME.linux` when a mount would hide
/// `/home/NAME`, as Lima's default home mount would), shell `/bin/bash`.
pub fn guest_user(config: &Config, instance: &str) -> Result<GuestUser, ExpandError> {
    let settings = config.raw.user();
    let name = settings.name.clone().unwrap_or_else(|| {
        crate::instance::identity::guest_user(crate::instance::identity::host_user().as_deref())
    });
    let host_uid = rustix::process::getuid().as_raw();
    let uid = settings
        .uid
        .unwrap_or(if host_uid >= 1000 { host_uid } else { 1000 });
    let home = match &settings.home {
        Some(template) => {
            let early = gotmpl::map([
                ("Name", Value::from(instance)),
                (
                    "Hostname",
                    Value::from(crate::instance::identity::hostname(instance)),
                ),
                ("User", Value::from(name.as_str())),
                ("UID", Value::Int(uid.into())),
                ("Param", params(config)),
            ]);
            gotmpl::render(template, &early).map_err(|error| ExpandError {
                field: "user.home".into(),
                error: error.to_string(),
            })?
        }
        None => {
            let home = format!("/home/{name}");
            let host = crate::instance::shares::HostSide::current();
            if crate::instance::shares::default_mount_hides(config, instance, &host, &home) {
                format!("{home}.linux")
            } else {
                home
            }
        }
    };
    Ok(GuestUser {
        name,
        uid,
        home,
        shell: settings.shell.clone().unwrap_or_else(|| "/bin/bash".into()),
        comment: settings.comment.clone(),
    })
}

/// `{{.Param.X}}`: the instance's `param:` values.
pub(crate) fn params(config: &Config) -> Value {
    gotmpl::map(
        config
            .raw
            .params()
            .into_iter()
            .map(|(k, v)| (k, Value::Str(v))),
    )
}

/// The values templates see for one instance.
pub fn guest_values(config: &Config, instance: &str, dir: &Path, user: &GuestUser) -> Value {
    gotmpl::map([
        ("Name", Value::from(instance)),
        (
            "Hostname",
            Value::from(crate::instance::identity::hostname(instance)),
        ),
        ("User", Value::from(user.name.as_str())),
        ("UID", Value::Int(user.uid.into())),
        ("Home", Value::from(user.home.as_str())),
        ("Dir", Value::from(dir.display().to_string())),
        ("HostOS", Value::from(std::env::consts::OS)),
        ("HostArch", Value::from(go_arch())),
        ("Param", params(config)),
    ])
}

/// The values a template of a host path sees (Lima's host templates: a
/// `hostSocket`, a `copyToHost` `host`): the host user's `{{.User}}`,
/// `{{.UID}}` and `{{.Home}}`, the instance's `{{.Name}}`, `{{.Hostname}}`
/// and `{{.Dir}}`, `{{.Param.Key}}`, `{{.HostOS}}`, `{{.HostArch}}`.
pub fn host_values(config: &Config, instance: &str, dir: &Path) -> Value {
    let host = crate::instance::shares::HostSide::current();
    let home = host
        .home
        .as_ref()
        .map(|h| h.display().to_string())
        .unwrap_or_default();
    gotmpl::map([
        ("Name", Value::from(instance)),
        (
            "Hostname",
            Value::from(crate::instance::identity::hostname(instance)),
        ),
        ("User", Value::from(host.user.as_str())),
        ("UID", Value::Int(host.uid.into())),
        ("Home", Value::from(home.as_str())),
        ("Dir", Value::from(dir.display().to_string())),
        ("HostOS", Value::from(std::env::consts::OS)),
        ("HostArch", Value::from(go_arch())),
        ("Param", params(config)),
    ])
}

/// The guest user of the tiny image: root.
pub fn tiny_guest_user() -> GuestUser {
    GuestUser {
        name: "root".into(),
        uid: 0,
        home: "/root".into(),
        shell: "/bin/sh".into(),
        comment: None,
    }
}

/// The host architecture as Go names it (Lima's `{{.HostArch}}`).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A template that does not expand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {error}")]
pub struct ExpandError {
    pub field: String,
    pub error: String,
}

/// `config` with the template variables of its provision steps and probes
/// expanded, and each yq expression checked.
pub fn expand(config: &Config, values: &Value) -> Result<Config, ExpandError> {
    let mut out = config.clone();
    let render = |field: String, text: &str| -> Result<String, ExpandError> {
        gotmpl::render(text, values).map_err(|e| ExpandError {
            field,
            error: e.to_string(),
        })
    };
    for (i, step) in out.provision.iter_mut().enumerate() {
        step.script = render(format!("provision[{i}].script"), &step.script)?;
        if let Some(data) = &mut step.data {
            data.path = render(format!("provision[{i}].path"), &data.path)?;
            data.content = render(format!("provision[{i}].content"), &data.content)?;
            data.owner = render(format!("provision[{i}].owner"), &data.owner)?;
        }
        if let Some(yq) = &mut step.yq {
            yq.path = render(format!("provision[{i}].path"), &yq.path)?;
            yq.expression = render(format!("provision[{i}].expression"), &yq.expression)?;
            if let Some(owner) = &mut yq.owner {
                *owner = render(format!("provision[{i}].user"), owner)?;
            }
            provision::yq_assignments(&yq.expression).map_err(|error| ExpandError {
                field: format!("provision[{i}]"),
                error,
            })?;
        }
        if matches!(step.mode, ProvisionMode::Data | ProvisionMode::Yq) {
            let path = step
                .data
                .as_ref()
                .map(|d| d.path.as_str())
                .or(step.yq.as_ref().map(|y| y.path.as_str()))
                .unwrap_or("");
            if !path.starts_with('/') {
                return Err(ExpandError {
                    field: format!("provision[{i}].path"),
                    error: format!("{path:?} is not an absolute path in the guest"),
                });
            }
        }
    }
    for (i, probe) in out.probes.iter_mut().enumerate() {
        probe.script = render(format!("probes[{i}].script"), &probe.script)?;
    }
    Ok(out)
}

/// The environment provision scripts and probes get: `env:` and each
/// `param:` as `PARAM_Key` (as Lima does).
pub fn script_env(config: &Config) -> BTreeMap<String, String> {
    let mut env = config.raw.env();
    for (key, value) in config.raw.params() {
        env.insert(format!("PARAM_{key}"), value);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> GuestUser {
        GuestUser {
            name: "alice".into(),
            uid: 1001,
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
            comment: None,
        }
    }

    #[test]
    fn scripts_data_yq_and_probes_expand() {
        let config = Config::parse(
            "images:\n- location: /i\nparam:\n  Snap: \"false\"\nprovision:\n\
             - script: echo {{.User}} {{.UID}} {{.Home}} {{.Name}} {{.Param.Snap}}\n\
             - mode: data\n  path: \"{{.Home}}/f\"\n  content: \"{{.Hostname}}\"\n  owner: \"{{.User}}:{{.User}}\"\n\
             - mode: yq\n  path: \"{{.Home}}/.config/d.json\"\n  expression: .features.snap = {{.Param.Snap}}\n  user: \"{{.User}}\"\n\
             probes:\n- script: \"#!/bin/sh\\ntest -d {{.Home}}\"\n",
        )
        .unwrap();
        let values = guest_values(&config, "web.1", Path::new("/h/.vmkeep/web.1"), &user());
        let out = expand(&config, &values).unwrap();
        assert_eq!(
            out.provision[0].script,
            "echo alice 1001 /home/alice web.1 false"
        );
        let data = out.provision[1].data.as_ref().unwrap();
        assert_eq!(
            (
                data.path.as_str(),
                data.content.as_str(),
                data.owner.as_str()
            ),
            ("/home/alice/f", "web-1", "alice:alice")
        );
        let yq = out.provision[2].yq.as_ref().unwrap();
        assert_eq!(yq.expression, ".features.snap = false");
        assert_eq!(out.probes[0].script, "#!/bin/sh\ntest -d /home/alice");
    }

    #[test]
    fn a_missing_param_or_a_bad_yq_names_the_field() {
        let config =
            Config::parse("images:\n- location: /i\nprovision:\n- script: echo {{.Param.Nope}}\n")
                .unwrap();
        let values = guest_values(&config, "x", Path::new("/d"), &user());
        let err = expand(&config, &values).unwrap_err();
        assert_eq!(err.field, "provision[0].script");
        assert!(err.error.contains(".Param.Nope"), "{err}");
        let config = Config::parse(
            "images:\n- location: /i\nprovision:\n- mode: yq\n  path: /etc/x.json\n  expression: del(.a)\n",
        )
        .unwrap();
        let err = expand(
            &config,
            &guest_values(&config, "x", Path::new("/d"), &user()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("mode: system"), "{err}");
    }

    #[test]
    fn params_become_param_variables_next_to_env() {
        let config = Config::parse("env:\n  A: b\nparam:\n  Key: v\n").unwrap();
        let env = script_env(&config);
        assert_eq!(env["A"], "b");
        assert_eq!(env["PARAM_Key"], "v");
    }
}
