//! Builds the login shell of jailed sessions (`shell/ims-session-shell.c`) as a static executable:
//! it runs inside image roots, whatever C library they have. The agent carries it
//! (`include_bytes!`) and binds it into each jailed sandbox.

use std::path::PathBuf;

fn main() {
    let src = "shell/ims-session-shell.c";
    println!("cargo:rerun-if-changed={src}");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("ims-session-shell");
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let status = compiler
        .to_command()
        .args(["-static", "-O2", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the C compiler {:?} (install gcc): {e}",
                compiler.path()
            )
        });
    assert!(
        status.success(),
        "building {src} as a static executable failed ({status}): install gcc and libc6-dev (the static C library)"
    );
}
