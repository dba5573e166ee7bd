//! `vmkeep create NAME [--template FILE]`

use anyhow::Context;

use super::CreateArgs;
use crate::home;
use crate::instance::config::DEFAULT_TEMPLATE;
use crate::instance::create::create;

pub fn run(args: CreateArgs) -> anyhow::Result<i32> {
    let (text, origin) = match &args.template {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the template {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            DEFAULT_TEMPLATE.to_string(),
            "the built-in template".to_string(),
        ),
    };
    let root = home::instances_root()?;
    let dir = create(&root, &args.name, &text, &origin)?;
    println!("created instance {} in {}", args.name, dir.dir().display());
    Ok(0)
}
