//! `autostart enable|disable|show`: registering an instance with the
//! service manager that starts it at login or at boot (the transactions are
//! `autostart::registration`'s; `start`, `stop` and `delete` consult the
//! registration through `autostart::hooks`).

use super::EngineError;
use crate::autostart::registration::{self, Disabled, Enabled, Plan};
use crate::autostart::{Manager, Options};
use crate::instance::{Home, InstanceName};
use crate::notice::Notice;

/// What `enable` would write for `name` and how it would load it (`user`:
/// the user a boot service runs as).
pub fn plan(
    name: &InstanceName,
    options: Options,
    user: Option<&str>,
    manager: Manager,
    notice: &dyn Notice,
) -> Result<Plan, EngineError> {
    Ok(registration::plan(name, options, user, manager, notice)?)
}

/// Check a plan as `enable` would, changing nothing (`enable --dry-run`).
pub fn check(plan: &Plan) -> Result<(), EngineError> {
    registration::check(plan, true)?;
    Ok(())
}

/// Write the definition, have the service manager load it (unless
/// `write_only`) and record the registration.
pub fn enable(plan: &Plan, write_only: bool, notice: &dyn Notice) -> Result<Enabled, EngineError> {
    let service = plan.service_manager();
    Ok(registration::enable(
        plan,
        service.as_ref(),
        write_only,
        notice,
    )?)
}

/// Take the registration of `name` back; `None` when it had none.
pub fn disable(
    home: &Home,
    name: &InstanceName,
    notice: &dyn Notice,
) -> Result<Option<Disabled>, EngineError> {
    let dir = home.existing(name)?;
    Ok(registration::disable(&dir, notice)?)
}
