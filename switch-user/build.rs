//! Builds the XDP program (switch-ebpf) for the BPF target with the nightly
//! toolchain and bpf-linker, and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. `cargo xtask setup` installs both.

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../switch-ebpf");
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../switch-common/src")
    );
    if which_bpf_linker().is_none() {
        anyhow::bail!(
            "bpf-linker is not installed: run `cargo xtask setup` (it builds bpf-linker with LLVM 22)"
        );
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "switch-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
