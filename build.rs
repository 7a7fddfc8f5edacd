//! Stamps the binary with the commit it was built from (shown on the status page and by
//! `drimbox status`): `DRIMBOX_BUILD` from the environment if set (the image build sets it),
//! else `git describe`, else "unknown".
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DRIMBOX_BUILD");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    let build = std::env::var("DRIMBOX_BUILD").ok().or_else(|| {
        let out = Command::new("git")
            .args(["describe", "--always", "--dirty", "--abbrev=12"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    if let Some(b) = build.filter(|b| !b.is_empty()) {
        println!("cargo:rustc-env=DRIMBOX_BUILD={b}");
    }
}
