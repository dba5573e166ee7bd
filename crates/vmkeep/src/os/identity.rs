//! Who is who on the host: the user database (`getpwnam_r` and friends,
//! through the C library, so NSS sources count), group memberships, and
//! which user owns a file.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A user from the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The user this process runs as (effective uid).
pub fn current_user() -> io::Result<User> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    lookup_user(|pwd, buf, result| {
        // SAFETY: pwd, buf and result point to live storage of the given sizes.
        unsafe { libc::getpwuid_r(uid, pwd, buf.as_mut_ptr(), buf.len(), result) }
    })?
    .ok_or_else(|| io::Error::other(format!("uid {uid} is not in the user database")))
}

/// The user named `name`, if there is one.
pub fn user_by_name(name: &str) -> io::Result<Option<User>> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    lookup_user(|pwd, buf, result| {
        // SAFETY: c_name is NUL-terminated; the other pointers are live storage.
        unsafe { libc::getpwnam_r(c_name.as_ptr(), pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
}

fn lookup_user(
    call: impl Fn(&mut libc::passwd, &mut Vec<libc::c_char>, &mut *mut libc::passwd) -> libc::c_int,
) -> io::Result<Option<User>> {
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: passwd is plain data; an all-zero value is valid to pass as output.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = call(&mut pwd, &mut buf, &mut result);
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success pw_name and pw_dir point to NUL-terminated strings in buf.
        let (name, home) = unsafe {
            (
                CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned(),
                PathBuf::from(CStr::from_ptr(pwd.pw_dir).to_string_lossy().into_owned()),
            )
        };
        return Ok(Some(User {
            name,
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home,
        }));
    }
}

/// The user whose uid is `uid`, if there is one.
pub fn user_by_uid(uid: u32) -> io::Result<Option<User>> {
    lookup_user(|pwd, buf, result| {
        // SAFETY: pwd, buf and result point to live storage of the given sizes.
        unsafe { libc::getpwuid_r(uid, pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
}

/// The gid of the group named `name`, if there is one.
pub fn group_by_name(name: &str) -> io::Result<Option<u32>> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: group is plain data; an all-zero value is valid to pass as output.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: c_name is NUL-terminated; the other pointers are live storage.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        return Ok((!result.is_null()).then_some(group.gr_gid));
    }
}

/// Every group `user` belongs to: its primary group `gid` first, then the
/// supplementary ones from the group database.
pub fn groups_of(user: &str, gid: u32) -> Vec<u32> {
    let Ok(c_name) = CString::new(user) else {
        return vec![gid];
    };
    // getgrouplist's group type: gid_t on Linux, int on macOS.
    #[cfg(target_os = "macos")]
    type Group = libc::c_int;
    #[cfg(not(target_os = "macos"))]
    type Group = libc::gid_t;
    let mut groups: Vec<Group> = vec![0; 64];
    loop {
        let mut count = groups.len() as libc::c_int;
        // SAFETY: c_name is NUL-terminated; groups has room for count entries.
        let rc = unsafe {
            libc::getgrouplist(c_name.as_ptr(), gid as _, groups.as_mut_ptr(), &mut count)
        };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            break;
        }
        if groups.len() >= 65536 {
            return vec![gid];
        }
        groups.resize((count.max(0) as usize).max(groups.len() * 2), 0);
    }
    let mut out = vec![gid];
    // gid_t is u32 already on Linux; macOS's int needs the cast.
    #[allow(clippy::unnecessary_cast)]
    let groups = groups.into_iter().map(|g| g as u32);
    out.extend(groups.filter(|g| *g != gid));
    out
}

/// The uid and gid that own `path` (the link itself if it is a symlink).
pub fn owner_of(path: &Path) -> io::Result<(u32, u32)> {
    let meta = std::fs::symlink_metadata(path)?;
    Ok((meta.uid(), meta.gid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_by_name_and_uid_with_its_groups() {
        let by_name = user_by_name("root").unwrap().expect("root exists");
        assert_eq!((by_name.uid, by_name.gid), (0, 0));
        assert_eq!(user_by_uid(0).unwrap().unwrap().name, "root");
        assert_eq!(group_by_name("root").unwrap(), Some(0));
        assert_eq!(groups_of("root", 0).first(), Some(&0));
        assert!(user_by_name("no-such-user-vmkeep").unwrap().is_none());
        assert!(group_by_name("no-such-group-vmkeep").unwrap().is_none());
        assert!(user_by_name("a\0b").unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let me = current_user().unwrap();
        assert_eq!(owner_of(dir.path()).unwrap().0, me.uid);
    }
}
