//! `switch`: the daemon and the operator's CLI in one binary (`cli`).

fn main() -> std::process::ExitCode {
    switch_user::cli::main()
}
