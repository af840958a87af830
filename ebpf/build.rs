//! Compiles the C BPF programs under bpf/ with clang into OUT_DIR, where
//! src/sensor/load.rs embeds them with include_bytes!. One object:
//! bpf/custos.bpf.c includes the topic files beside it (scope.h, process.h,
//! tcp.h, syscalls.h) and the headers in bpf/include.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL_HINT: &str = "apt-get install clang-19 libbpf-dev";

fn main() {
    // A directory: cargo rebuilds when any file under it changes, so the
    // topic files and headers included by custos.bpf.c are covered too.
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest_dir.join("bpf");
    let clang = find_clang().unwrap_or_else(|| {
        fail(&format!(
            "no clang found to compile the BPF programs (tried $CLANG, clang-19, clang); install one with `{INSTALL_HINT}` or set CLANG"
        ))
    });
    let multiarch = Path::new("/usr/include/x86_64-linux-gnu");
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail(&format!(
            "the libbpf headers (/usr/include/bpf/bpf_helpers.h) are missing; install them with `{INSTALL_HINT}`"
        ));
    }
    // One object: the programs share their maps (scope, sockets, ring buffer).
    {
        let name = "custos";
        let src = bpf_dir.join(format!("{name}.bpf.c"));
        let obj = out_dir.join(format!("{name}.bpf.o"));
        let output = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"])
            .arg(format!("-I{}", multiarch.display()))
            .arg(format!("-I{}", bpf_dir.join("include").display()))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .output()
            .unwrap_or_else(|e| fail(&format!("running {clang}: {e}; install clang with `{INSTALL_HINT}`")));
        if !output.status.success() {
            fail(&format!(
                "{clang} failed to compile {}:\n{}",
                src.display(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
}

fn find_clang() -> Option<String> {
    if let Some(c) = env::var_os("CLANG") {
        return Some(c.to_string_lossy().into_owned());
    }
    ["clang-19", "clang"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .map(str::to_string)
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    panic!("{msg}");
}
