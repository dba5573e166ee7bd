//! `vmkeep create NAME [--template FILE]`

use anyhow::Context;

use super::CreateArgs;
use crate::home;
use crate::image::templates;
use crate::instance::config::DEFAULT_TEMPLATE;
use crate::instance::create::create_with_progress;

pub fn run(args: CreateArgs) -> anyhow::Result<i32> {
    let (text, origin) = match &args.template {
        Some(path) if !path.exists() && templates::find(&path.to_string_lossy()).is_some() => {
            let name = path.to_string_lossy().into_owned();
            let text = templates::find(&name).unwrap_or_default();
            (text.to_string(), format!("the built-in template {name}"))
        }
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read the template {}; built-in templates are: {}",
                    path.display(),
                    templates::names().join(", ")
                )
            })?,
            path.display().to_string(),
        ),
        None => (
            DEFAULT_TEMPLATE.to_string(),
            "the built-in template".to_string(),
        ),
    };
    let root = home::instances_root()?;
    let mut progress = super::progress::DownloadProgress::new();
    let dir = create_with_progress(&root, &args.name, &text, &origin, &mut progress)?;
    println!("created instance {} in {}", args.name, dir.dir().display());
    Ok(0)
}
