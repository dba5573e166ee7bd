//! `vmkeep create [--name NAME] [FILE.yaml | template:NAME | URL | -]`
//! (Lima's form) and `vmkeep create NAME [--template FILE|NAME]` (vmkeep's).
//! Also what `vmkeep start FILE.yaml` creates first.

use std::io::Read;

use anyhow::{Context, bail};

use super::CreateArgs;
use crate::engine::create::{check, create_from};
use crate::image::templates;
use crate::instance::InstanceName;
use crate::instance::home;
use crate::template::{self, Source, locator};

/// What the command line asks to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: InstanceName,
    pub template: Input,
    /// Said to the user before creating (a bare name that is also a
    /// template's name: Lima's deprecated form).
    pub note: Option<String>,
}

/// Where the template comes from, before it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// vmkeep's default: the built-in tiny image.
    Default,
    /// A locator as written (template:NAME, a path, a URL).
    Locator(String),
    /// `-`
    Stdin,
}

/// Interpret `create`'s arguments (pure): the positional argument is a
/// template when it looks like one (`-`, a scheme, a `/`, `.yaml`), else the
/// instance name; `--template` is vmkeep's older way to give the template.
pub fn plan(
    target: Option<&str>,
    name: Option<&InstanceName>,
    template: Option<&str>,
) -> anyhow::Result<Plan> {
    let named = |derived: Option<String>, what: &str| -> anyhow::Result<InstanceName> {
        if let Some(name) = name {
            return Ok(name.clone());
        }
        let Some(derived) = derived else {
            bail!("{what} gives no instance name; add --name NAME");
        };
        derived.parse().with_context(|| {
            format!("the name {derived:?} taken from {what} is not a valid instance name; add --name NAME")
        })
    };
    match target {
        Some(text) if locator::looks_like_locator(text) => {
            if template.is_some() {
                bail!("the template is given twice ({text} and --template); give it once");
            }
            if text == "-" {
                return Ok(Plan {
                    name: named(None, "a template on standard input")?,
                    template: Input::Stdin,
                    note: None,
                });
            }
            let source = locator::resolve(text, &cwd_source())?;
            Ok(Plan {
                name: named(locator::instance_name_of(&source), text)?,
                template: Input::Locator(text.to_string()),
                note: None,
            })
        }
        Some(text) => {
            let parsed: InstanceName = text.parse()?;
            if let Some(name) = name
                && name != &parsed
            {
                bail!("the instance name {text:?} and --name {name} disagree; give one of them");
            }
            let note = match template {
                None if templates::find(text).is_some() || templates::is_lima_only(text) => {
                    Some(format!(
                        "creating {text} from vmkeep's default template (the tiny image), not from template:{text}; \
                     for that template: `vmkeep create template:{text}`{}",
                        if templates::find(text).is_none() {
                            format!(" (Lima's {text}.yaml file: vmkeep does not ship it)")
                        } else {
                            String::new()
                        }
                    ))
                }
                _ => None,
            };
            Ok(Plan {
                name: parsed,
                template: template_option(template)?,
                note,
            })
        }
        None => Ok(Plan {
            name: name.cloned().unwrap_or_else(InstanceName::default_instance),
            template: template_option(template)?,
            note: None,
        }),
    }
}

/// `--template X`: a locator, a file of that name, or a built-in name.
fn template_option(template: Option<&str>) -> anyhow::Result<Input> {
    let Some(text) = template else {
        return Ok(Input::Default);
    };
    if text == "-" {
        return Ok(Input::Stdin);
    }
    if locator::looks_like_locator(text) || std::path::Path::new(text).exists() {
        return Ok(Input::Locator(if locator::looks_like_locator(text) {
            text.to_string()
        } else {
            format!("./{text}")
        }));
    }
    if templates::find(text).is_some() {
        return Ok(Input::Locator(format!("template:{text}")));
    }
    bail!(
        "no file and no built-in template is named {text:?}; built-in templates are: {}",
        templates::names().join(", ")
    )
}

fn cwd_source() -> Source {
    Source::Text {
        label: "the command line".into(),
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
    }
}

/// Read the template of a plan: its text and where it came from.
fn read(input: &Input) -> anyhow::Result<(String, Source)> {
    match input {
        Input::Default => {
            let source = Source::Builtin("tiny".into());
            Ok((template::read(&source)?, source))
        }
        Input::Stdin => {
            let mut text = String::new();
            std::io::stdin()
                .take(template::SIZE_LIMIT + 1)
                .read_to_string(&mut text)
                .context("cannot read the template from standard input")?;
            if text.len() as u64 > template::SIZE_LIMIT {
                bail!(
                    "the template on standard input is larger than {} bytes",
                    template::SIZE_LIMIT
                );
            }
            let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
            Ok((text, Source::Stdin { cwd }))
        }
        Input::Locator(text) => {
            let source = locator::resolve(text, &cwd_source())?;
            Ok((template::read(&source)?, source))
        }
    }
}

/// Add `--param KEY=VALUE` settings to the template text (they win over
/// the template's own `param:` and its bases').
fn with_params(text: &str, params: &[String]) -> anyhow::Result<String> {
    if params.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: serde_yaml_ng::Mapping = match serde_yaml_ng::from_str(text) {
        Ok(serde_yaml_ng::Value::Mapping(map)) => map,
        _ => serde_yaml_ng::Mapping::new(),
    };
    let entry = doc
        .entry("param".into())
        .or_insert_with(|| serde_yaml_ng::Value::Mapping(Default::default()));
    if !entry.is_mapping() {
        *entry = serde_yaml_ng::Value::Mapping(Default::default());
    }
    let map = entry.as_mapping_mut().expect("just made a mapping");
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            bail!("--param {param:?}: write it as KEY=VALUE");
        };
        map.insert(key.into(), value.into());
    }
    Ok(serde_yaml_ng::to_string(&doc)?)
}

/// Create what `plan` says (or with `dry_run` only check it and print the
/// config it would store); prints the notices; returns the instance name.
pub fn create_planned(
    plan: &Plan,
    params: &[String],
    dry_run: bool,
) -> anyhow::Result<InstanceName> {
    if let Some(note) = &plan.note {
        eprintln!("note: {note}");
    }
    let (text, source) = read(&plan.template)?;
    let text = with_params(&text, params)?;
    let root = home::instances_root()?;
    if dry_run {
        let checked = check(&root, &plan.name, &text, &source)?;
        print!("{}", checked.resolved.text);
        for notice in checked.resolved.config.raw.notices() {
            eprintln!("note: {notice}");
        }
        eprintln!(
            "{} is valid for instance {} (nothing was created)",
            source, plan.name
        );
        return Ok(plan.name.clone());
    }
    let mut progress = super::progress::DownloadProgress::new();
    let created = create_from(&root, &plan.name, &text, &source, &mut progress)?;
    for notice in &created.notices {
        eprintln!("note: {notice}");
    }
    println!(
        "created instance {} in {}",
        plan.name,
        created.dir.dir().display()
    );
    Ok(plan.name.clone())
}

pub fn run(args: CreateArgs) -> anyhow::Result<i32> {
    let plan = plan(
        args.target.as_deref(),
        args.name.as_ref(),
        args.template.as_deref(),
    )?;
    create_planned(&plan, &args.params, args.dry_run)?;
    Ok(0)
}

/// The instance `vmkeep start [NAME|TEMPLATE] [--name NAME]` starts: a
/// template argument creates it first (named after the file, as Lima does;
/// an instance of that name must not exist yet).
pub fn start_target(
    target: Option<&str>,
    name: Option<InstanceName>,
) -> anyhow::Result<InstanceName> {
    match target {
        Some(text) if locator::looks_like_locator(text) => {
            let plan = plan(Some(text), name.as_ref(), None)?;
            let dir = crate::instance::Home::from_env()?.layout(&plan.name)?;
            if dir.dir().exists() {
                bail!(
                    "instance {0} already exists; start it with `vmkeep start {0}`, or create another with --name",
                    plan.name
                );
            }
            create_planned(&plan, &[], false)
        }
        Some(text) => {
            let parsed: InstanceName = text.parse()?;
            if let Some(name) = name
                && name != parsed
            {
                bail!("the instance name {text:?} and --name {name} disagree; give one of them");
            }
            Ok(parsed)
        }
        None => Ok(name.unwrap_or_else(InstanceName::default_instance)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> InstanceName {
        s.parse().unwrap()
    }

    #[test]
    fn limas_forms_name_the_instance_after_the_template() {
        for (target, expected) in [
            ("./ubuntu.yaml", "ubuntu"),
            ("/srv/templates/Docker.yaml", "docker"),
            ("template:_images/ubuntu-24.04", "ubuntu-24.04"),
            ("template://debian", "debian"),
            ("https://example.org/t/k3s.yaml", "k3s"),
        ] {
            let plan = plan(Some(target), None, None).unwrap();
            assert_eq!(plan.name, name(expected), "{target}");
            assert_eq!(plan.template, Input::Locator(target.into()));
        }
        let plan = plan(Some("./ubuntu.yaml"), Some(&name("dev")), None).unwrap();
        assert_eq!(plan.name, name("dev"));
    }

    #[test]
    fn standard_input_needs_a_name() {
        let err = plan(Some("-"), None, None).unwrap_err().to_string();
        assert!(err.contains("--name"), "{err}");
        let plan = plan(Some("-"), Some(&name("local")), None).unwrap();
        assert_eq!((plan.name, plan.template), (name("local"), Input::Stdin));
    }

    #[test]
    fn vmkeeps_form_still_works_and_a_template_named_name_is_noted() {
        let p = plan(Some("dev"), None, None).unwrap();
        assert_eq!(
            (p.name.clone(), p.template.clone(), p.note.clone()),
            (name("dev"), Input::Default, None)
        );
        let p = plan(Some("dev"), None, Some("debian-12")).unwrap();
        assert_eq!(p.template, Input::Locator("template:debian-12".into()));
        let p = plan(Some("docker"), None, None).unwrap();
        let note = p.note.unwrap();
        assert!(
            note.contains("template:docker") && note.contains("does not ship"),
            "{note}"
        );
        let p = plan(Some("ubuntu"), None, None).unwrap();
        assert!(p.note.unwrap().contains("vmkeep create template:ubuntu"));
        let p = plan(None, None, None).unwrap();
        assert_eq!(p.name, InstanceName::default_instance());
    }

    #[test]
    fn contradictions_are_refused() {
        assert!(plan(Some("a"), Some(&name("b")), None).is_err());
        assert!(plan(Some("./x.yaml"), None, Some("tiny")).is_err());
        let err = plan(Some("dev"), None, Some("no-such-thing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("built-in templates are"), "{err}");
        let err = plan(Some("./bad name.yaml"), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--name"), "{err}");
    }

    #[test]
    fn params_are_added_over_the_templates() {
        let text = with_params("param:\n  A: x\ncpus: 2\n", &["A=y".into(), "B=z".into()]).unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(doc["param"]["A"], "y");
        assert_eq!(doc["param"]["B"], "z");
        assert_eq!(doc["cpus"], 2);
        assert!(with_params("", &["nokey".into()]).is_err());
    }
}
