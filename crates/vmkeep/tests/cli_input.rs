//! Integration: the real binary rejects bad input clearly and changes nothing.

mod common;

use common::TestEnv;

#[test]
fn invalid_names_are_rejected_before_anything_is_written() {
    let env = TestEnv::new();
    for bad in ["..", "-x", "x y", "ünï", &"n".repeat(60)] {
        // `--` so that "-x" reaches the name check instead of clap's flags.
        let run = env.run(&["create", "--", bad]);
        assert_eq!(run.code(), Some(2), "{bad:?}: {}", run.describe());
        assert!(
            run.stderr().contains("instance name"),
            "{bad:?}: {}",
            run.stderr()
        );
    }
    // A word with a '/' is a template file (Lima's form), not a name.
    let run = env.run(&["create", "a/b"]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr().contains("a/b: cannot read it"),
        "{}",
        run.describe()
    );
    let entries: Vec<_> = std::fs::read_dir(env.home()).unwrap().collect();
    assert!(entries.is_empty(), "nothing written");
}

#[test]
fn a_name_too_long_for_a_socket_path_is_rejected() {
    let env = TestEnv::new();
    let deep = env.home().join("d".repeat(70));
    let run = env
        .command(&["create", &"n".repeat(40)])
        .env("VMKEEP_HOME", &deep)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("socket") && stderr.contains("shorter"),
        "{stderr}"
    );
    assert!(!deep.exists(), "nothing written");
}

#[test]
fn invalid_yaml_names_the_field_and_line_and_creates_nothing() {
    let env = TestEnv::new();
    let template = env.home().join("bad.yaml");
    for (yaml, strict, expected) in [
        // An unknown field is refused only under --strict (else noted).
        ("cpus: 2\nmemroy: 1GiB\n", true, ["memroy", "line 2"]),
        ("cpus: 2\nmemory: 12 parsecs\n", false, ["memory", "line 2"]),
        ("cpus: [\n", false, ["line", "bad.yaml"]),
    ] {
        std::fs::write(&template, yaml).unwrap();
        let mut args = vec!["create", "x", "--template", template.to_str().unwrap()];
        if strict {
            args.push("--strict");
        }
        let run = env.run(&args);
        assert_eq!(run.code(), Some(4), "invalid config: {}", run.describe());
        for word in expected {
            assert!(
                run.stderr().contains(word),
                "{yaml:?}: missing {word:?} in {}",
                run.stderr()
            );
        }
        assert!(!env.instance_dir("x").exists());
    }
}

#[test]
fn commands_on_a_missing_instance_say_how_to_create_it() {
    let env = TestEnv::new();
    for verb in [
        &["stop", "ghost"][..],
        &["start", "ghost"],
        &["shell", "ghost", "--", "true"],
        &["delete", "ghost"],
    ] {
        let run = env.run(verb);
        assert_eq!(
            run.code(),
            Some(3),
            "no such instance: {verb:?}: {}",
            run.describe()
        );
        assert!(
            run.stderr().contains("vmkeep create ghost"),
            "{verb:?}: {}",
            run.stderr()
        );
    }
}

#[test]
fn stop_of_a_stopped_instance_is_a_no_op() {
    let env = TestEnv::new();
    env.create("idle", "");
    let run = env.ok(&["stop", "idle"]);
    assert!(run.stdout().contains("not running"), "{}", run.describe());
    assert_eq!(env.status("idle"), "Stopped");
}

#[test]
fn an_instance_without_config_is_listed_broken_with_a_reason() {
    let env = TestEnv::new();
    env.create("noconf", "");
    std::fs::remove_file(env.instance_dir("noconf").join("vmkeep.yaml")).unwrap();
    let rows = env.list();
    let row = rows.iter().find(|r| r["name"] == "noconf").unwrap();
    assert_eq!(row["status"], "Broken");
    assert_eq!(row["reason"]["code"], "config-missing");
    let table = env.ok(&["list"]);
    assert!(
        table.stdout().contains("no config file"),
        "{}",
        table.describe()
    );
    let start = env.run(&["start", "noconf"]);
    assert_eq!(
        start.code(),
        Some(4),
        "no valid config: {}",
        start.describe()
    );
    assert!(
        start.stderr().contains("vmkeep.yaml"),
        "{}",
        start.describe()
    );
}

#[test]
fn every_verb_has_help() {
    let env = TestEnv::new();
    for verb in ["create", "start", "stop", "list", "shell", "delete"] {
        let run = env.ok(&[verb, "--help"]);
        assert!(
            run.stdout().contains("Usage: vmkeep"),
            "{verb}: {}",
            run.describe()
        );
    }
    env.ok(&["--help"]);
}

#[test]
fn the_host_agent_binary_rejects_bad_command_lines_and_creates_nothing() {
    let env = TestEnv::new();
    let agent = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vmkeep-hostagent"));
        command.args(args).env("VMKEEP_HOME", env.home());
        command.output().expect("run vmkeep-hostagent")
    };
    let help = agent(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("usage: vmkeep-hostagent NAME"));
    for (args, says) in [
        (&[][..], "missing the instance name"),
        (&["../x"][..], "invalid instance name"),
        (&["a", "--bogus"][..], "unknown option --bogus"),
    ] {
        let run = agent(args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(stderr.contains("usage:"), "{args:?}: {stderr}");
    }
    let ghost = agent(&["ghost"]);
    assert_eq!(ghost.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&ghost.stderr).contains("create it with `vmkeep create ghost`"),
        "{}",
        String::from_utf8_lossy(&ghost.stderr)
    );
    assert!(env.list().is_empty(), "nothing was created");
}

/// The edit flags on `create` and `edit`: bad syntax is a usage error (2),
/// a value the field refuses a config error (4); neither writes anything.
/// `edit`, `restart`, `clone` and `import` of what does not exist exit 3.
#[test]
fn edit_flags_and_the_new_verbs_refuse_bad_input_and_write_nothing() {
    let env = TestEnv::new();
    for (args, code) in [
        (&["create", "x", "--cpus", "0"][..], 4),
        (&["create", "x", "--memory", "lots"][..], 4),
        (&["create", "x", "--port-forward", "8080"][..], 2),
        (&["create", "x", "--set", ".mounts += []"][..], 2),
        (&["create", "x", "--mount", ":w"][..], 2),
    ] {
        let run = env.run(args);
        assert_eq!(run.code(), Some(code), "{args:?}: {}", run.describe());
        assert!(
            run.stderr().contains("nothing was changed"),
            "{}",
            run.describe()
        );
    }
    assert!(common::names(env.home()).is_empty(), "nothing written");

    env.ok(&[
        "create",
        "x",
        "--cpus",
        "2",
        "--set",
        ".stopTimeout = \"20s\"",
    ]);
    let config = env.instance_dir("x").join("vmkeep.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("\ncpus: 2\n") && text.contains("\nstopTimeout: 20s\n"),
        "{text}"
    );
    for (args, code) in [
        (&["edit", "x", "--disk", "1"][..], 4),
        (&["edit", "x", "--cpus", "65"][..], 4),
        (&["edit", "x", "--param", "NOPE=1"][..], 4),
        (&["edit", "x", "--set", "del(.cpus)"][..], 2),
        (&["edit", "x", "--set", ".cpus = 2 |= 3"][..], 2),
        (&["edit", "ghost", "--cpus", "2"][..], 3),
        (&["restart", "ghost"][..], 3),
        (&["clone", "ghost", "y"][..], 3),
        (&["clone", "x", "x"][..], 5),
    ] {
        let run = env.run(args);
        assert_eq!(run.code(), Some(code), "{args:?}: {}", run.describe());
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text, "unchanged");
    let lima = env
        .command(&["import", "nothere"])
        .env("LIMA_HOME", env.home().join("lima"))
        .output()
        .unwrap();
    assert_eq!(lima.status.code(), Some(3), "{lima:?}");
    assert!(String::from_utf8_lossy(&lima.stderr).contains("no Lima instance"));
    let edited = env.ok(&["edit", "x", "--memory", "0.5", "--disk", "3"]);
    assert!(
        edited.stdout().contains("memory: 256MiB -> 0.5GiB")
            && edited
                .stderr()
                .contains("grows from 2GiB to 3GiB at the next start"),
        "{}",
        edited.describe()
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("# Number of virtual CPUs."),
        "comments kept:\n{text}"
    );
    // A clone of a stopped tiny instance copies its disk and marker.
    env.ok(&["clone", "x", "y"]);
    assert!(env.instance_dir("y").join("data-disk.new").exists());
    assert_eq!(
        std::fs::read_to_string(env.instance_dir("y").join("vmkeep.yaml")).unwrap(),
        text
    );
}
