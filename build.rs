//! Build script: records the git commit for `castpoint --version` and the `castpoint_build_info` metric.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=CASTPOINT_GIT_COMMIT");
    // A release built from a tarball (no .git) says "unknown" rather than
    // failing: the version string is informative, never load-bearing.
    // CASTPOINT_GIT_COMMIT lets a packager who builds outside the repository
    // name the commit explicitly.
    let commit = std::env::var("CASTPOINT_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CASTPOINT_GIT_COMMIT={commit}");
    // Rebuild only when the commit moves: HEAD (checkout) and the branch's
    // ref (commit). Watching the index instead would recompile the crate on
    // every `git status`, which rewrites it. Worktrees keep HEAD in their
    // own git dir, refs in the common one.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    if let (Some(common), Some(r)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        println!("cargo:rerun-if-changed={common}/{r}");
        println!("cargo:rerun-if-changed={common}/packed-refs");
    }
}
