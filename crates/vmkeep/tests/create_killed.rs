//! `vmkeep create` killed (SIGKILL) at any moment of its staging leaves
//! nothing that the next `create` does not sweep (issue 12, item 9: a
//! creator killed between making its staging directory and locking it left
//! a directory no sweep removed). No VM: creation only.

mod common;

use common::{TestEnv, staging};

#[test]
fn create_killed_while_staging_leaves_nothing_after_the_next_create() {
    let env = TestEnv::new();
    let mut caught = 0;
    for _ in 0..40 {
        if env.kill_create_while_staging("c") {
            caught += 1;
        }
        // Whatever the kill left, the next create sweeps it (and its own
        // staging is gone once it returns).
        if env.instance_dir("c").exists() {
            env.ok(&["delete", "c"]);
        }
        env.ok(&["create", "c"]);
        let leftovers = staging(env.home());
        assert_eq!(leftovers, Vec::<String>::new(), "after {caught} kills");
        env.ok(&["delete", "c"]);
    }
    assert!(caught > 0, "never caught the CLI while it was creating");
}
