//! Users and groups, read from `/etc/passwd` and `/etc/group` directly: the
//! agent is static, so there is no NSS (no LDAP or systemd-homed users; a
//! cloud image's users are in the files).

use std::path::Path;

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";

/// Largest user database read (a bigger file is refused, not cut).
const MAX_DATABASE_BYTES: u64 = 64 * 1024 * 1024;
/// Most supplementary groups (the kernel's NGROUPS_MAX).
const MAX_GROUPS: usize = 65536;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// The login shell (`/bin/sh` when the field is empty).
    pub shell: String,
}

/// Read a user database file, bounded.
pub fn read_database(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = Vec::new();
    file.take(MAX_DATABASE_BYTES + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_DATABASE_BYTES {
        return Err(std::io::Error::other(format!(
            "{} is larger than {MAX_DATABASE_BYTES} bytes",
            path.display()
        )));
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn parse_user(line: &str) -> Option<User> {
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 || fields[0].is_empty() {
        return None;
    }
    let shell = if fields[6].is_empty() {
        "/bin/sh"
    } else {
        fields[6]
    };
    Some(User {
        name: fields[0].to_string(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: fields[5].to_string(),
        shell: shell.to_string(),
    })
}

fn users(passwd: &str) -> impl Iterator<Item = User> + '_ {
    passwd
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with('+') && !line.starts_with('-'))
        .filter_map(parse_user)
}

/// The user named `spec`, or else (if `spec` is a number) the first with
/// that uid.
pub fn find_user(passwd: &str, spec: &str) -> Option<User> {
    users(passwd).find(|u| u.name == spec).or_else(|| {
        let uid: u32 = spec.parse().ok()?;
        find_uid(passwd, uid)
    })
}

/// The first user with `uid`.
pub fn find_uid(passwd: &str, uid: u32) -> Option<User> {
    users(passwd).find(|u| u.uid == uid)
}

/// The gid of group `name`, if listed.
pub fn group_id(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 3 && fields[0] == name)
            .then(|| fields[2].parse().ok())
            .flatten()
    })
}

/// The groups of `user` as `initgroups` makes them: the primary group,
/// then every group of `/etc/group` listing the user as a member, without
/// repeats, at most NGROUPS_MAX.
pub fn groups_of(group: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut groups = vec![primary];
    for line in group.lines() {
        if groups.len() >= MAX_GROUPS {
            break;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            continue;
        }
        let Ok(gid) = fields[2].parse::<u32>() else {
            continue;
        };
        if fields[3].split(',').any(|member| member.trim() == user) && !groups.contains(&gid) {
            groups.push(gid);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken line
alice:x:1000:1000:Alice,,,:/home/alice:
1234:x:1234:1234::/home/numeric:/bin/zsh
bob:x:notanumber:1::/:/bin/sh
";

    const GROUP_TEXT: &str = "\
root:x:0:
sudo:x:27:alice,carol
docker:x:999:carol, alice
alice:x:1000:
tty:x:5:
empty:x:7
";

    #[test]
    fn users_are_found_by_name_then_by_uid() {
        let alice = find_user(PASSWD_TEXT, "alice").unwrap();
        assert_eq!(
            alice,
            User {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/alice".into(),
                shell: "/bin/sh".into(),
            },
            "an empty shell field is /bin/sh"
        );
        assert_eq!(find_user(PASSWD_TEXT, "0").unwrap().name, "root");
        // A name that is a number is a name first.
        assert_eq!(find_user(PASSWD_TEXT, "1234").unwrap().shell, "/bin/zsh");
        assert_eq!(find_user(PASSWD_TEXT, "1000").unwrap().name, "alice");
        assert_eq!(find_user(PASSWD_TEXT, "bob"), None, "a bad uid field");
        assert_eq!(find_user(PASSWD_TEXT, "nobody"), None);
        assert_eq!(find_user(PASSWD_TEXT, ""), None);
        assert_eq!(find_uid(PASSWD_TEXT, 1).unwrap().name, "daemon");
    }

    #[test]
    fn supplementary_groups_come_from_the_member_lists() {
        assert_eq!(groups_of(GROUP_TEXT, "alice", 1000), vec![1000, 27, 999]);
        assert_eq!(groups_of(GROUP_TEXT, "root", 0), vec![0]);
        assert_eq!(group_id(GROUP_TEXT, "tty"), Some(5));
        assert_eq!(group_id(GROUP_TEXT, "empty"), Some(7));
        assert_eq!(group_id(GROUP_TEXT, "missing"), None);
    }
}
