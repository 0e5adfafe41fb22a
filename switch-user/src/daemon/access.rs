//! Who may do what over the API socket: levels by the caller's groups,
//! read from the kernel (`SO_PEERCRED`), never from the request; and the
//! socket file reachable by exactly those groups.

use std::{ffi::CString, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{Context, Result, bail};

use crate::model::{
    api::{Actor, Command, Level},
    config::DaemonConfig,
};

/// The configured groups of each level, resolved to gids at start-up.
#[derive(Clone, Debug, Default)]
pub(super) struct Access {
    levels: Vec<(Level, &'static str, String, u32)>,
    /// This host's name for the audit trail (the fleet's host name in a
    /// fleet).
    pub(super) host: String,
}

/// One connected caller.
pub(super) struct Caller {
    pub(super) level: Option<Level>,
    pub(super) actor: Actor,
}

impl Access {
    pub(super) fn new(d: &DaemonConfig, host: String) -> Result<Access> {
        let mut levels = Vec::new();
        for (level, key, group) in [
            (Level::Read, "api_read_group", &d.api_read_group),
            (Level::Steer, "api_group", &d.api_group),
            (Level::Admin, "api_admin_group", &d.api_admin_group),
        ] {
            if let Some(g) = group {
                levels.push((
                    level,
                    key,
                    g.clone(),
                    gid_of(g).context(format!("daemon.{key}"))?,
                ));
            }
        }
        Ok(Access { levels, host })
    }

    /// The level and identity of the process at the other end of `stream`.
    pub(super) fn caller(&self, stream: &tokio::net::UnixStream, via: &str) -> Caller {
        let cred = stream.peer_cred().ok();
        let uid = cred.as_ref().map_or(u32::MAX, |c| c.uid());
        let level = match &cred {
            None => None,
            Some(c) if c.uid() == 0 => Some(Level::Admin),
            Some(c) => {
                let groups = groups_of(c.pid(), c.uid(), c.gid());
                self.levels
                    .iter()
                    .filter(|(_, _, _, gid)| groups.contains(gid))
                    .map(|(l, ..)| *l)
                    .max()
            }
        };
        Caller {
            level,
            actor: Actor {
                uid,
                user: user_name(uid),
                host: self.host.clone(),
                via: via.to_string(),
            },
        }
    }

    /// Why `caller` may not run `cmd`, if it may not.
    pub(super) fn refusal(&self, caller: &Caller, cmd: &Command) -> Option<String> {
        let need = cmd.level();
        if caller.level.is_some_and(|l| l >= need) {
            return None;
        }
        let grant = match self.levels.iter().find(|(l, ..)| *l >= need) {
            Some((_, key, group, _)) => format!("members of daemon.{key} ({group:?}) and root"),
            None => "root only: no group is configured for it".to_string(),
        };
        Some(format!(
            "permission denied: `{}` needs the {} level ({grant}); {} (uid {}) has {}",
            cmd.name(),
            need.name(),
            caller.actor.user,
            caller.actor.uid,
            caller.level.map_or("no level", |l| l.name()),
        ))
    }

    /// The API socket: owned by root and the lowest level's group, mode
    /// 0660, and every configured group in its ACL, so each level's members
    /// (and nobody else but root) can connect.
    pub(super) fn secure_socket(&self, path: &Path) -> Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        let Some((_, _, _, first)) = self.levels.first() else {
            return Ok(());
        };
        std::os::unix::fs::chown(path, Some(0), Some(*first))?;
        let gids: Vec<u32> = self.levels.iter().map(|(.., g)| *g).collect();
        if let Err(e) = set_group_acl(path, &gids) {
            let (_, key, group, _) = &self.levels[0];
            tracing::warn!(
                "cannot give the API socket an ACL ({e}): only daemon.{key} ({group:?}) and root can connect"
            );
        }
        Ok(())
    }
}

/// A group name, or a numeric gid.
fn gid_of(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let name = CString::new(group).context("a group name has no NUL bytes")?;
    let gr = unsafe { libc::getgrnam(name.as_ptr()) };
    if gr.is_null() {
        bail!("no group named {group:?}");
    }
    Ok(unsafe { (*gr).gr_gid })
}

/// The caller's groups: its primary gid and its supplementary groups as
/// the kernel has them for its process (those of its user in /etc/group
/// when the process is gone).
fn groups_of(pid: Option<i32>, uid: u32, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    let from_proc = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok());
    match from_proc.as_deref().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .map(str::to_string)
    }) {
        Some(line) => groups.extend(
            line.split_whitespace()
                .filter_map(|g| g.parse::<u32>().ok()),
        ),
        None => groups.extend(user_groups(uid, gid)),
    }
    groups
}

fn user_groups(uid: u32, gid: u32) -> Vec<u32> {
    let name = user_name(uid);
    let Ok(c) = CString::new(name) else {
        return vec![];
    };
    let mut n: libc::c_int = 256;
    let mut buf = vec![0 as libc::gid_t; n as usize];
    let r = unsafe { libc::getgrouplist(c.as_ptr(), gid, buf.as_mut_ptr(), &mut n) };
    if r < 0 {
        return vec![];
    }
    buf.truncate(n.max(0) as usize);
    buf
}

/// The user name of `uid`, or the uid itself when it has none.
pub(super) fn user_name(uid: u32) -> String {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return uid.to_string();
    }
    unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned()
}

/// This host's name.
pub(super) fn host_name() -> String {
    let mut buf = [0u8; 256];
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A POSIX access ACL: owner rw, owning group rw, each of `gids` rw, mask
/// rw, others nothing (the `system.posix_acl_access` xattr, version 2).
fn set_group_acl(path: &Path, gids: &[u32]) -> std::io::Result<()> {
    const USER_OBJ: u16 = 0x01;
    const GROUP_OBJ: u16 = 0x04;
    const GROUP: u16 = 0x08;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const RW: u16 = 6;
    const UNDEFINED: u32 = u32::MAX;
    let mut sorted = gids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut entries = vec![(USER_OBJ, RW, UNDEFINED), (GROUP_OBJ, RW, UNDEFINED)];
    entries.extend(sorted.iter().map(|g| (GROUP, RW, *g)));
    entries.extend([(MASK, RW, UNDEFINED), (OTHER, 0, UNDEFINED)]);
    let mut value = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        value.extend(tag.to_le_bytes());
        value.extend(perm.to_le_bytes());
        value.extend(id.to_le_bytes());
    }
    let p = CString::new(path.as_os_str().as_encoded_bytes())?;
    let name = c"system.posix_acl_access";
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
