//! Pins on bpffs: mounting it, and `switch detach`.

use super::*;

/// Removes every pinned link and map under `pin_dir`; forwarding stops.
/// Returns what was removed.
pub fn detach(pin_dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pin_dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    // Links first: unpinning the last reference detaches the program.
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for p in paths {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("link_") {
            // Detach the link itself, not only its pin: a running daemon may
            // hold another reference to it.
            force_detach(&p).with_context(|| format!("detaching {}", p.display()))?;
        }
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        removed.push(name);
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(removed)
}

/// BPF_OBJ_GET the pinned link at `path`, then BPF_LINK_DETACH it.
pub(super) fn force_detach(path: &Path) -> Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 4];
    attr[0] = c.as_ptr() as u64;
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        bail!("BPF_OBJ_GET: {}", std::io::Error::last_os_error());
    }
    let mut attr = [0u64; 4];
    attr[0] = fd as u64;
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(fd as i32) };
    if rc != 0 {
        bail!("BPF_LINK_DETACH: {err}");
    }
    Ok(())
}

/// A clear sentence instead of an EPERM from deep inside the loader.
pub(super) fn ensure_bpffs(dir: &Path) -> Result<()> {
    let mut p = dir;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!("cannot stat {}", p.display());
    }
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpf filesystem: mount it with `mount -t bpf bpf /sys/fs/bpf` (or run `cargo xtask setup`)",
            dir.display()
        );
    }
    Ok(())
}
