//! Tidy tests: the architecture's checkable invariants (layer rules, `unsafe` confinement, no `unwrap()` and no detached spawns outside tests) as tests over `src/`, in the manner of rust-analyzer's tidy tests.
//!
//! The scanner is deliberately small: a lexer that blanks comments and
//! string/char contents (so a URL or a doc comment never counts as code), a
//! walk of the module tree from `lib.rs`/`main.rs` that follows `mod x;`
//! declarations and marks `#[cfg(test)]` modules, and three checks over the
//! remaining code. Each check has a unit test on a small bad sample, so a
//! scanner that silently stopped matching would fail here too.
//!
//! Known violations whose fix is a larger refactor are listed in named
//! allowlists below. The lists can only shrink: a violation not listed fails,
//! and a listed one that no longer occurs fails too (delete its line).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------

/// Top-level module -> top-level modules of the crate it must never name.
/// `None` as the forbidden list means "nothing but itself".
const LAYER_RULES: &[(&str, Option<&[&str]>, &str)] = &[
    (
        "points",
        None,
        "the point database is the bottom layer: everything depends on it, it on nothing",
    ),
    (
        "mpegts",
        None,
        "the TS plumbing sits under both the engine and the media adapters",
    ),
    (
        "protocols",
        Some(&["engine", "telemetry", "api", "app", "config", "exports"]),
        "protocol servers meet the router only through the point database; \
         config -> parts, never back (each part owns its section type)",
    ),
    (
        "alarms",
        Some(&["persist", "api", "app", "config", "protocols", "engine"]),
        "the alarm runtime defines the store it needs (`AlarmStore`); persist implements it",
    ),
    (
        "media",
        Some(&["engine", "api", "app"]),
        "dependencies run engine -> media: the adapters must not reach back into the router",
    ),
    (
        "api",
        Some(&["protocols", "app"]),
        "the REST API shares users/roles through `auth`, never through a protocol",
    ),
    (
        "auth",
        Some(&["protocols", "api", "engine", "app"]),
        "auth sits under both the API and the protocols",
    ),
];

/// Imports that break `LAYER_RULES` today, as (file under src/, imported path).
/// Empty since issue 19: the media adapters take the input hand-over
/// (`mpegts::feed`) and the counters (`mpegts::stats`) from the TS layer
/// under both them and the engine, and define the specs they interpret
/// (`RtmpInput`, `ProfileRef`, like `RtspSpec`) for the engine's spec to
/// compose; the route-block address rules (BACnet instance rule and object
/// type, Modbus register layout) live in `points::route_addresses`, and the
/// REST exports get the protocols' file writers from the wiring (`app.rs`).
/// Keep it empty: fix a new violation rather than list it.
const LAYER_ALLOWLIST: &[(&str, &str)] = &[];

/// Calls that start a task or thread nobody joins or cancels. Tasks go on the
/// app's `TaskTracker` (`tasks.spawn`, `engine::spawn_on`), threads through
/// `crate::tasks::spawn_thread`.
const SPAWN_PATTERNS: &[&str] = &[
    "tokio::spawn(",
    "task::spawn(",
    "spawn_local(",
    "thread::spawn(",
    "thread::Builder",
];

/// The one file allowed the raw thread/task APIs: the wrappers themselves.
const SPAWN_WRAPPERS: &[&str] = &["tasks.rs"];

/// The one module allowed `unsafe` (with a SAFETY comment per block).
const UNSAFE_MODULE: &str = "engine/srt/ffi.rs";

// ---------------------------------------------------------------------------
// The checks over src/
// ---------------------------------------------------------------------------

#[test]
fn layer_rules_hold() {
    let found = layer_violations(&source_files());
    let listed: BTreeSet<(String, String)> = LAYER_ALLOWLIST
        .iter()
        .map(|(f, p)| (f.to_string(), p.to_string()))
        .collect();
    let new: Vec<_> = found.difference(&listed).collect();
    let fixed: Vec<_> = listed.difference(&found).collect();
    assert!(
        new.is_empty(),
        "imports that break the layer rules (see LAYER_RULES for why): {new:?}"
    );
    assert!(
        fixed.is_empty(),
        "fixed, so remove them from LAYER_ALLOWLIST: {fixed:?}"
    );
}

#[test]
fn no_unwrap_outside_tests() {
    let bad = pattern_hits(&source_files(), &[".unwrap()"], &[]);
    assert!(
        bad.is_empty(),
        "`unwrap()` outside tests (return an error, or `expect` with the invariant that makes it safe): {bad:?}"
    );
}

#[test]
fn no_detached_spawns() {
    let bad = pattern_hits(&source_files(), SPAWN_PATTERNS, SPAWN_WRAPPERS);
    assert!(
        bad.is_empty(),
        "tasks/threads started outside the tracker's wrappers: {bad:?}"
    );
}

#[test]
fn unsafe_only_in_the_ffi_module() {
    let files = source_files();
    let bad = pattern_hits(&files, &["unsafe "], &[UNSAFE_MODULE]);
    assert!(bad.is_empty(), "`unsafe` outside {UNSAFE_MODULE}: {bad:?}");
    let ffi = files
        .iter()
        .find(|f| f.rel == UNSAFE_MODULE)
        .expect("the FFI module exists");
    let missing = unsafe_blocks_without_safety(&ffi.text);
    assert!(
        missing.is_empty(),
        "{UNSAFE_MODULE}: `unsafe` with no `SAFETY:` comment right above, at lines {missing:?}"
    );
    for root in ["lib.rs", "main.rs"] {
        let f = files.iter().find(|f| f.rel == root).expect("crate root");
        assert!(
            f.text.contains("#![deny(unsafe_code)]"),
            "{root} must deny unsafe_code"
        );
    }
}

/// The most lines of code (comments and blank lines not counted) a function
/// outside tests may take: issue 19 split every longer one along its seams
/// (one function per phase, per request kind or per subcommand). A data
/// table that must be longer belongs in a `const` or a file, not a body.
const MAX_FN_LINES: usize = 100;

#[test]
fn functions_stay_short() {
    let long = long_functions(&source_files(), MAX_FN_LINES);
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines of code (split them along their seams): {long:?}"
    );
}

// ---------------------------------------------------------------------------
// The scanner
// ---------------------------------------------------------------------------

/// One compiled source file: its path under src/, its raw text, and its code
/// with comments, strings and `#[cfg(test)]` items blanked.
struct SourceFile {
    rel: String,
    text: String,
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every file the crate compiles, found by walking `mod x;` from the roots,
/// so a file only reachable from a `#[cfg(test)] mod` counts as test code.
fn source_files() -> Vec<SourceFile> {
    let src = src_dir();
    let mut out = Vec::new();
    let mut todo: Vec<(PathBuf, bool)> =
        vec![(src.join("lib.rs"), false), (src.join("main.rs"), false)];
    while let Some((path, test_only)) = todo.pop() {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stripped = strip(&text);
        let dir = module_dir(&path);
        for (name, is_test, at) in child_modules(&stripped, &text) {
            let a = dir.join(format!("{name}.rs"));
            let b = dir.join(&name).join("mod.rs");
            // `#[path = "x.rs"]` is relative to the declaring file's folder.
            let child = match at {
                Some(p) => path.parent().unwrap_or(&src).join(p),
                None if a.exists() => a,
                None => b,
            };
            assert!(child.exists(), "{}: mod {name}: no file", path.display());
            todo.push((child, test_only || is_test));
        }
        if test_only {
            continue;
        }
        let rel = path
            .strip_prefix(&src)
            .expect("under src/")
            .to_string_lossy()
            .replace('\\', "/");
        out.push(SourceFile {
            rel,
            code: blank_test_items(&stripped),
            text,
        });
    }
    assert!(out.len() > 50, "the walk found only {} files", out.len());
    out
}

/// Where `mod x;` in `path` looks for x.
fn module_dir(path: &Path) -> PathBuf {
    let parent = path.parent().expect("file in a dir");
    match path.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs" | "lib.rs" | "main.rs") => parent.to_path_buf(),
        _ => path.with_extension(""),
    }
}

/// `mod x;` declarations (not inline `mod x { .. }`) and whether each is
/// under `#[cfg(test)]`.
fn child_modules(code: &str, text: &str) -> Vec<(String, bool, Option<String>)> {
    let mut out = Vec::new();
    let mut pending_test = false;
    let mut pending_path = None;
    // `code` has its strings blanked; a `#[path]` value is read from the
    // same line of the original `text`.
    for (line, orig) in code.lines().zip(text.lines()) {
        let t = line.trim();
        if t.starts_with("#[cfg(test)]") {
            pending_test = true;
            continue;
        }
        if t.starts_with("#[path") {
            pending_path = orig.split('"').nth(1).map(str::to_string);
            continue;
        }
        if t.starts_with("#[") || t.is_empty() {
            continue;
        }
        let rest = t
            .strip_prefix("pub mod ")
            .or_else(|| t.strip_prefix("pub(crate) mod "))
            .or_else(|| t.strip_prefix("mod "));
        if let Some(rest) = rest {
            if let Some(name) = rest.strip_suffix(';') {
                out.push((name.trim().to_string(), pending_test, pending_path.take()));
            }
        }
        pending_test = false;
        pending_path = None;
    }
    out
}

/// Blanks comments and the contents of string and char literals (newlines
/// kept, so line numbers still match the file).
fn strip(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        let at = |k: usize| c.get(i + k).copied().unwrap_or('\0');
        if at(0) == '/' && at(1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
                out.push(' ');
            }
        } else if at(0) == '/' && at(1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if (at(0) == 'r' || (at(0) == 'b' && at(1) == 'r')) && !prev_is_ident(&c, i) && {
            let k = if at(0) == 'b' { 1 } else { 0 };
            let mut h = k + 1;
            while at(h) == '#' {
                h += 1;
            }
            at(h) == '"'
        } {
            // Raw string: r"..", r#".."#, br"..".
            let k = if at(0) == 'b' { 1 } else { 0 };
            let mut hashes = 0;
            while at(k + 1 + hashes) == '#' {
                hashes += 1;
            }
            let open = k + 2 + hashes;
            for _ in 0..open {
                out.push(c[i]);
                i += 1;
            }
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|h| c.get(i + h) == Some(&'#')) {
                    for _ in 0..=hashes {
                        out.push(c[i]);
                        i += 1;
                    }
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if at(0) == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if at(0) == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(1) == '\\' {
                out.push('\'');
                i += 2;
                out.push(' ');
                while i < c.len() && c[i] != '\'' {
                    out.push(' ');
                    i += 1;
                }
                out.push('\'');
                i += 1;
            } else if at(2) == '\'' {
                out.push_str("' '");
                i += 3;
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(c: &[char], i: usize) -> bool {
    i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')
}

/// Blanks every item under `#[cfg(test)]` (an inline test module, a test
/// helper fn): from the attribute to the item's closing brace or semicolon.
fn blank_test_items(code: &str) -> String {
    let mut b: Vec<u8> = code.as_bytes().to_vec();
    let mut from = 0;
    while let Some(p) = code[from..].find("#[cfg(test)]") {
        let start = from + p;
        let mut depth = 0usize;
        let mut end = b.len();
        for (k, ch) in code.as_bytes()[start + "#[cfg(test)]".len()..]
            .iter()
            .enumerate()
        {
            let at = start + "#[cfg(test)]".len() + k;
            match ch {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = at + 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    end = at + 1;
                    break;
                }
                _ => {}
            }
        }
        for x in &mut b[start..end] {
            if *x != b'\n' {
                *x = b' ';
            }
        }
        from = end;
    }
    String::from_utf8(b).expect("blanking keeps UTF-8: only ASCII replaced whole chars")
}

/// `file:line name (n lines)` of every non-test function whose body has more
/// than `max` lines with code on them. A function is `fn name` up to its
/// body's matching brace (comments and strings are already blanked, so the
/// braces are the code's); a declaration without a body is skipped.
fn long_functions(files: &[SourceFile], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        let code = f.code.as_bytes();
        let mut from = 0;
        while let Some(p) = f.code[from..].find("fn ") {
            let at = from + p;
            from = at + 3;
            if at > 0 && (code[at - 1].is_ascii_alphanumeric() || code[at - 1] == b'_') {
                continue;
            }
            let name: String = f.code[at + 3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                continue; // `fn(` pointer types
            }
            let Some(open) = f.code[at..].find(['{', ';']).map(|k| at + k) else {
                break;
            };
            if code[open] == b';' {
                continue;
            }
            let mut depth = 0usize;
            let mut close = code.len();
            for (k, ch) in code[open..].iter().enumerate() {
                match ch {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            close = open + k;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let lines = f.code[at..=close.min(code.len() - 1)]
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count();
            if lines > max {
                let line = code[..at].iter().filter(|&&c| c == b'\n').count() + 1;
                out.push(format!("{}:{line} {name} ({lines} lines)", f.rel));
            }
        }
    }
    out
}

/// (file, `top::second` path) for every `crate::` path in non-test code that
/// breaks `LAYER_RULES`.
fn layer_violations(files: &[SourceFile]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for f in files {
        let own = f.rel.split(['/', '.']).next().unwrap_or("");
        let Some((_, forbidden, _)) = LAYER_RULES.iter().find(|(m, _, _)| *m == own) else {
            continue;
        };
        for path in crate_paths(&f.code) {
            let top = path.split("::").next().unwrap_or("");
            if top == own {
                continue;
            }
            let bad = match forbidden {
                None => true,
                Some(list) => list.contains(&top),
            };
            if bad {
                let short: Vec<&str> = path.split("::").take(2).collect();
                out.insert((f.rel.clone(), short.join("::")));
            }
        }
    }
    out
}

/// Every path named through `crate::`, with `crate::{a::b, c}` groups
/// expanded one level (`a::b`, `c`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = code[from..].find("crate::") {
        let at = from + p;
        from = at + "crate::".len();
        if at > 0 {
            let prev = code.as_bytes()[at - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' || prev == b':' {
                continue; // `castpoint_crate::`, `$crate::`, `super::crate` never occur; skip oddities
            }
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut cur = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        out.push(path_head(&cur));
                        cur.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth >= 1 {
                    cur.push(ch);
                }
            }
            if !cur.trim().is_empty() {
                out.push(path_head(&cur));
            }
        } else {
            out.push(path_head(rest));
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The leading `a::b::c` of a path, stopped at anything else.
fn path_head(s: &str) -> String {
    let s = s.trim_start();
    let end = s
        .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == ':'))
        .unwrap_or(s.len());
    s[..end].trim_end_matches(':').to_string()
}

/// `file:line` for each occurrence of any pattern in non-test code, except
/// in the exempt files.
fn pattern_hits(files: &[SourceFile], patterns: &[&str], exempt: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files.iter().filter(|f| !exempt.contains(&f.rel.as_str())) {
        for (n, line) in f.code.lines().enumerate() {
            if patterns.iter().any(|p| line.contains(p)) {
                out.push(format!("src/{}:{}: {}", f.rel, n + 1, line.trim()));
            }
        }
    }
    out
}

/// Lines with an `unsafe {` block (or an `unsafe impl`/`unsafe extern fn`)
/// that has no `SAFETY:` (or doc `# Safety`) comment in the comment block
/// directly above it or on its own line.
fn unsafe_blocks_without_safety(text: &str) -> Vec<usize> {
    let code = strip(text);
    let raw: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let is_unsafe = line.contains("unsafe {")
            || line.contains("unsafe impl")
            || (line.contains("unsafe extern") && line.contains("fn ") && !line.contains("type "));
        if !is_unsafe {
            continue;
        }
        // The comment block right above (attributes may sit between), or
        // the statement's own line.
        let mut ok = raw[n].contains("SAFETY");
        let mut k = n;
        while !ok && k > 0 {
            k -= 1;
            let t = raw[k].trim();
            let continued = {
                // `let r =` above `unsafe { .. }`: the same statement.
                let c = code.lines().nth(k).unwrap_or("").trim_end();
                !c.is_empty() && !c.ends_with([';', '{', '}', ','])
            };
            if t.starts_with("//") {
                ok = t.contains("SAFETY") || t.contains("# Safety");
            } else if !t.starts_with("#[") && !continued {
                break;
            }
        }
        if !ok {
            out.push(n + 1);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The scanner can fail: each check on a small bad sample
// ---------------------------------------------------------------------------

fn sample(rel: &str, text: &str) -> SourceFile {
    let stripped = strip(text);
    SourceFile {
        rel: rel.into(),
        code: blank_test_items(&stripped),
        text: text.into(),
    }
}

#[test]
fn scanner_finds_long_functions() {
    let body = |n: usize| "    let x = 1;\n    // a comment is not code\n\n".repeat(n);
    let text = format!(
        "trait T {{ fn decl(&self); }}\nfn short() {{\n{}}}\npub async fn long(f: fn(u8)) -> u8 {{\n{}    0\n}}\n#[cfg(test)]\nfn long_test() {{\n{}}}\n",
        body(5),
        body(8),
        body(20),
    );
    let f = sample("x.rs", &text);
    // `long`: its signature, 8 code lines, `0` and the closing brace.
    assert_eq!(
        long_functions(std::slice::from_ref(&f), 10),
        ["x.rs:19 long (11 lines)"]
    );
    assert!(long_functions(&[f], 11).is_empty());
}

#[test]
fn scanner_finds_layer_violations() {
    let files = [
        sample("points/db.rs", "use crate::config::Config;\nuse crate::points::Value;\n"),
        sample(
            "protocols/modbus/mod.rs",
            "use crate::{points::PointDb, engine::Engine};\nfn f() { crate::telemetry::x(); }\n",
        ),
        sample("media/rtmp/mod.rs", "use crate::engine::input::Feed;\n"),
        sample("api/guard.rs", "use crate::protocols::haystack::auth::Role;\n"),
        // Not violations: a string, a comment, test code, an allowed edge.
        sample(
            "protocols/bacnet/mod.rs",
            "// crate::engine is never named\nconst S: &str = \"crate::api::x\";\nuse crate::points::Db;\n#[cfg(test)]\nmod tests { use crate::engine::Engine; }\n",
        ),
        sample("engine/route.rs", "use crate::media::ffmpeg;\n"),
    ];
    let got = layer_violations(&files);
    let want: BTreeSet<(String, String)> = [
        ("points/db.rs", "config::Config"),
        ("protocols/modbus/mod.rs", "engine::Engine"),
        ("protocols/modbus/mod.rs", "telemetry::x"),
        ("media/rtmp/mod.rs", "engine::input"),
        ("api/guard.rs", "protocols::haystack"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn scanner_finds_unwrap_outside_tests() {
    let files = [sample(
        "x.rs",
        "fn a() { let v = f().unwrap(); }\n// f().unwrap()\nfn b() { g(\".unwrap()\") }\n#[cfg(test)]\nmod tests {\n    fn t() { f().unwrap(); }\n}\nfn c() { h().unwrap_or(1); }\n",
    )];
    let got = pattern_hits(&files, &[".unwrap()"], &[]);
    assert_eq!(
        got,
        vec!["src/x.rs:1: fn a() { let v = f().unwrap(); }".to_string()]
    );
}

#[test]
fn scanner_finds_detached_spawns() {
    let files = [
        sample(
            "engine/x.rs",
            "fn a() { tokio::spawn(async {}); }\nfn b() { std::thread::spawn(|| ()); }\nfn c() { std::thread::Builder::new().spawn(|| ()); }\nfn d() { tasks.spawn(async {}); }\n",
        ),
        sample("tasks.rs", "pub fn spawn_thread() { std::thread::Builder::new(); }\n"),
    ];
    let got = pattern_hits(&files, SPAWN_PATTERNS, SPAWN_WRAPPERS);
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn scanner_finds_unsafe_without_safety() {
    let text = "fn a() {\n    // SAFETY: p is valid.\n    unsafe { f(p) };\n}\nfn b() {\n    let s = \"unsafe {\";\n    unsafe { g() };\n}\n";
    assert_eq!(unsafe_blocks_without_safety(text), vec![7]);
    let files = [sample("api/x.rs", "fn a() { unsafe { f() } }\n")];
    assert_eq!(
        pattern_hits(&files, &["unsafe "], &[UNSAFE_MODULE]).len(),
        1
    );
}

#[test]
fn scanner_finds_test_only_modules() {
    let text =
        "pub mod a;\n#[cfg(test)]\nmod tests;\nmod b {\n}\n#[cfg(test)]\n#[path = \"x.rs\"]\nmod c;\n";
    let code = strip(text);
    assert_eq!(
        child_modules(&code, text),
        vec![
            ("a".to_string(), false, None),
            ("tests".to_string(), true, None),
            ("c".to_string(), true, Some("x.rs".to_string()))
        ]
    );
}

#[test]
fn lexer_keeps_lifetimes_chars_and_raw_strings_apart() {
    let s = strip("fn f<'a>(x: &'a str) -> char { let _ = r#\"crate::api \"# ; '{' }\n");
    assert!(s.contains("<'a>"), "{s}");
    assert!(!s.contains("crate::api"), "{s}");
    assert!(!s.contains("'{'"), "{s}");
    assert_eq!(s.matches('{').count(), 1, "{s}");
}
