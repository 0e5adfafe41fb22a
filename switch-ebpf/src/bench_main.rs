//! `switch-bench`: the benchmark's reference programs and the packet
//! generator, in an object of their own so the production object carries
//! nothing but the switch. They share the packet parser with the switch
//! (`#[path]` modules: one source, compiled into each object), so the
//! minimal program does the switch's own first steps.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

// Only part of the parser is used by these programs.
#[cfg(target_arch = "bpf")]
#[allow(dead_code)]
#[path = "parse.rs"]
mod parse;

#[cfg(target_arch = "bpf")]
#[path = "bench.rs"]
mod bench;

#[cfg(target_arch = "bpf")]
#[path = "generator.rs"]
mod generator;

/// The two maps the reference programs look at, with the switch's names
/// and types so the harness fills them the same way.
#[cfg(target_arch = "bpf")]
mod maps {
    use aya_ebpf::{
        macros::map,
        maps::{DevMapHash, HashMap},
    };
    use switch_common::{DEFAULT_MAX_SERVICES, Service, ServiceKey};

    #[map]
    pub static SERVICES: HashMap<ServiceKey, Service> =
        HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

    #[map]
    pub static DEVICES: DevMapHash = DevMapHash::with_max_entries(64, 0);
}

#[cfg(target_arch = "bpf")]
mod program {
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects any path that could reach here.
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
