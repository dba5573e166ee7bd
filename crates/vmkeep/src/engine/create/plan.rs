//! What `create` (and `start` with a template argument) is asked to make,
//! from the command line's words, before anything is read: the instance's
//! name and where its template comes from. Pure; a contradiction is a usage
//! error.
//!
//! Lima's form names the template (`FILE.yaml`, `template:NAME`, a URL, `-`)
//! and takes the instance's name from it unless `--name` says otherwise;
//! vmkeep's form names the instance, its template given by `--template` (or
//! the built-in tiny image).

use std::io::Read;

use super::CreateError;
use crate::engine::EngineError;
use crate::image::templates;
use crate::instance::config::FieldPolicy;
use crate::instance::{Home, InstanceName};
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

fn usage(message: String) -> EngineError {
    EngineError::Usage { message }
}

/// Interpret `create`'s arguments (pure): the positional argument is a
/// template when it looks like one (`-`, a scheme, a `/`, `.yaml`), else the
/// instance name; `--template` is vmkeep's older way to give the template.
pub fn plan(
    target: Option<&str>,
    name: Option<&InstanceName>,
    template: Option<&str>,
) -> Result<Plan, EngineError> {
    let named = |derived: Option<String>, what: &str| -> Result<InstanceName, EngineError> {
        if let Some(name) = name {
            return Ok(name.clone());
        }
        let Some(derived) = derived else {
            return Err(usage(format!(
                "{what} gives no instance name; add --name NAME"
            )));
        };
        derived.parse().map_err(|e| {
            usage(format!(
                "the name {derived:?} taken from {what} is not a valid instance name; add --name NAME: {e}"
            ))
        })
    };
    match target {
        Some(text) if locator::looks_like_locator(text) => {
            if template.is_some() {
                return Err(usage(format!(
                    "the template is given twice ({text} and --template); give it once"
                )));
            }
            if text == "-" {
                return Ok(Plan {
                    name: named(None, "a template on standard input")?,
                    template: Input::Stdin,
                    note: None,
                });
            }
            let source = locator::resolve(text, &cwd_source()).map_err(CreateError::Locator)?;
            Ok(Plan {
                name: named(locator::instance_name_of(&source), text)?,
                template: Input::Locator(text.to_string()),
                note: None,
            })
        }
        Some(text) => {
            let parsed = instance_name(text)?;
            agree(text, &parsed, name)?;
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

/// A word of the command line as an instance name.
fn instance_name(text: &str) -> Result<InstanceName, EngineError> {
    text.parse().map_err(|e| usage(format!("{e}")))
}

/// A name given twice must be the same.
fn agree(
    text: &str,
    parsed: &InstanceName,
    name: Option<&InstanceName>,
) -> Result<(), EngineError> {
    match name {
        Some(name) if name != parsed => Err(usage(format!(
            "the instance name {text:?} and --name {name} disagree; give one of them"
        ))),
        _ => Ok(()),
    }
}

/// `--template X`: a locator, a file of that name, or a built-in name.
fn template_option(template: Option<&str>) -> Result<Input, EngineError> {
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
    Err(usage(format!(
        "no file and no built-in template is named {text:?}; built-in templates are: {}",
        templates::names().join(", ")
    )))
}

fn cwd_source() -> Source {
    Source::Text {
        label: "the command line".into(),
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
    }
}

/// The instance `vmkeep start [NAME|TEMPLATE] [--name NAME]` starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An instance by its name (`start` creates only `default`).
    Named(InstanceName),
    /// A template argument: the instance is created from it first (named
    /// after the file, as Lima does).
    Create(Plan),
}

/// Interpret `start`'s argument: a template creates its instance first, and
/// an instance of that name must not exist yet (a wrong state).
pub fn start_target(
    home: &Home,
    target: Option<&str>,
    name: Option<InstanceName>,
) -> Result<Target, EngineError> {
    match target {
        Some(text) if locator::looks_like_locator(text) => {
            let plan = plan(Some(text), name.as_ref(), None)?;
            let dir = home.layout(&plan.name)?;
            if dir.dir().exists() {
                return Err(EngineError::WrongState {
                    message: format!(
                        "instance {0} already exists; start it with `vmkeep start {0}`, or create another with --name",
                        plan.name
                    ),
                    name: plan.name,
                });
            }
            Ok(Target::Create(plan))
        }
        Some(text) => {
            let parsed = instance_name(text)?;
            agree(text, &parsed, name.as_ref())?;
            Ok(Target::Named(parsed))
        }
        None => Ok(Target::Named(
            name.unwrap_or_else(InstanceName::default_instance),
        )),
    }
}

/// A template's text, and where it came from (for messages, and to resolve
/// its relative bases).
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub text: String,
    pub source: Source,
    /// What a field vmkeep does not know does: noted (Lima's policy), or
    /// refused (`create --strict`).
    pub fields: FieldPolicy,
}

/// Read the template of a plan (`stdin` for `-`), with the `--param
/// KEY=VALUE` settings added over its own `param:`.
pub fn read(
    input: &Input,
    params: &[String],
    stdin: &mut dyn Read,
) -> Result<Template, EngineError> {
    let (text, source) = match input {
        Input::Default => {
            let source = Source::Builtin("tiny".into());
            (
                template::read(&source).map_err(|e| CreateError::Read(Box::new(e)))?,
                source,
            )
        }
        Input::Stdin => {
            let mut text = String::new();
            stdin
                .take(template::SIZE_LIMIT + 1)
                .read_to_string(&mut text)
                .map_err(CreateError::Stdin)?;
            if text.len() as u64 > template::SIZE_LIMIT {
                return Err(CreateError::StdinTooLarge {
                    limit: template::SIZE_LIMIT,
                }
                .into());
            }
            let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
            (text, Source::Stdin { cwd })
        }
        Input::Locator(text) => {
            let source = locator::resolve(text, &cwd_source()).map_err(CreateError::Locator)?;
            (
                template::read(&source).map_err(|e| CreateError::Read(Box::new(e)))?,
                source,
            )
        }
    };
    Ok(Template {
        text: with_params(&text, params)?,
        source,
        fields: FieldPolicy::default(),
    })
}

/// Add `--param KEY=VALUE` settings to the template text (they win over
/// the template's own `param:` and its bases').
fn with_params(text: &str, params: &[String]) -> Result<String, EngineError> {
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
            return Err(usage(format!("--param {param:?}: write it as KEY=VALUE")));
        };
        map.insert(key.into(), value.into());
    }
    Ok(serde_yaml_ng::to_string(&doc).map_err(CreateError::Params)?)
}

#[cfg(test)]
mod tests {
    use super::super::tests::name;
    use super::*;

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
