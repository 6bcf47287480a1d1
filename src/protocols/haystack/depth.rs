//! Nesting pre-checks for untrusted Haystack text (Zinc, filters), run before libhaystack's recursive-descent parsers see it.
//!
//! libhaystack 4.1 decodes Zinc and parses filters by recursion: one nested
//! list, dict, grid or parenthesis is several stack frames, so 4,000 `[` in
//! one anonymous GET overflowed a worker's stack and aborted the process
//! (issue 15 item 1). These scanners are iterative (one loop, a counter, no
//! allocation) and count nesting the way the parsers will see it: brackets
//! inside Str (`"..."`) and Uri (`` `...` ``) literals are text, and an escape
//! (`\x`) always consumes the next byte, as libhaystack's Str and Uri
//! scanners do (an unknown escape is a parse error there, so the parser
//! never gets past a spot where the two could disagree).
//!
//! Why the counts are exact enough: a closer the parser would not accept
//! makes it fail right there, so on every prefix the parser actually reaches,
//! its recursion depth is openers minus closers — what is counted here.

/// Deepest nesting of lists, dicts and grids (Zinc) or of parentheses
/// (filters) that castpoint accepts. Real Haystack data nests a handful of
/// levels (a grid in a dict in a list is 3); 64 levels of libhaystack's
/// recursion fit a 2 MiB worker stack many times over, even in debug builds
/// (see the tests below).
pub const MAX_NESTING: usize = 64;

/// Lexical state of the scanners.
#[derive(Clone, Copy, PartialEq, Eq)]
enum In {
    Code,
    Str,
    Uri,
}

/// Fails when Zinc `text` nests `[`, `{` or `<<` deeper than
/// [`MAX_NESTING`] outside Str and Uri literals.
pub fn check_zinc(text: &str) -> Result<(), String> {
    scan(text.as_bytes(), true)
}

/// Fails when a Haystack filter nests parentheses deeper than
/// [`MAX_NESTING`] outside Str and Uri literals.
pub fn check_filter(text: &str) -> Result<(), String> {
    scan(text.as_bytes(), false)
}

fn scan(b: &[u8], zinc: bool) -> Result<(), String> {
    let mut state = In::Code;
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match state {
            In::Str | In::Uri => {
                if c == b'\\' {
                    // The escaped byte is part of the literal, even `"`/`` ` ``.
                    i += 1;
                } else if (state == In::Str && c == b'"') || (state == In::Uri && c == b'`') {
                    state = In::Code;
                }
            }
            In::Code => {
                let pair = |x: u8| b.get(i + 1) == Some(&x);
                let open = if zinc {
                    match c {
                        b'[' | b'{' => Some(true),
                        b']' | b'}' => Some(false),
                        b'<' if pair(b'<') => {
                            i += 1;
                            Some(true)
                        }
                        b'>' if pair(b'>') => {
                            i += 1;
                            Some(false)
                        }
                        _ => None,
                    }
                } else {
                    match c {
                        b'(' => Some(true),
                        b')' => Some(false),
                        _ => None,
                    }
                };
                match open {
                    Some(true) => {
                        depth += 1;
                        if depth > MAX_NESTING {
                            return Err(format!(
                                "nesting deeper than {MAX_NESTING} levels at byte {i}"
                            ));
                        }
                    }
                    // A stray closer: the parser fails there; never go negative.
                    Some(false) => depth = depth.saturating_sub(1),
                    None => match c {
                        b'"' => state = In::Str,
                        b'`' => state = In::Uri,
                        _ => {}
                    },
                }
            }
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_structure_not_literals() {
        assert!(check_zinc("[{a:<<\nver:\"3.0\"\nb\n[1]\n>>}]").is_ok());
        // Brackets inside Str and Uri literals, escaped quotes included.
        let lit = format!(
            "[\"{}\\\"{}\", `{}\\`{}`]",
            "[".repeat(500),
            "{".repeat(500),
            "<<".repeat(500),
            "[".repeat(500)
        );
        assert!(check_zinc(&lit).is_ok(), "literals are not nesting");
        // An escaped backslash ends the escape: the quote after it closes.
        let s = format!("\"\\\\\"{}", "[".repeat(MAX_NESTING + 1));
        assert!(check_zinc(&s).is_err());
        let ok = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert!(check_zinc(&ok).is_ok());
        let deep = format!("{}{}", "{a:".repeat(MAX_NESTING + 1), "}".repeat(65));
        assert!(check_zinc(&deep).is_err());
        // Stray closers cannot buy credit for later openers.
        let stray = format!("{}{}", "]".repeat(100), "[".repeat(MAX_NESTING + 1));
        assert!(check_zinc(&stray).is_err());
        // `<` and `>` alone (not in Zinc, but harmless) are not nesting.
        assert!(check_zinc(&"< > ".repeat(1000)).is_ok());
        assert!(check_zinc(&"<<".repeat(MAX_NESTING + 1)).is_err());
    }

    #[test]
    fn filters_count_parentheses_outside_strings() {
        assert!(check_filter("(a and (b or c)) and d == \"((((\"").is_ok());
        assert!(check_filter(&format!("{}a{}", "(".repeat(64), ")".repeat(64))).is_ok());
        assert!(check_filter(&format!("{}a", "(".repeat(65))).is_err());
        assert!(check_filter(&format!("u == `{}`", "(".repeat(1000))).is_ok());
    }

    #[test]
    fn depth_100k_is_refused_without_recursion() {
        let s = "[".repeat(100_000);
        let e = check_zinc(&s).expect_err("too deep");
        assert!(e.contains("nesting deeper than 64"), "{e}");
        assert!(check_filter(&"(".repeat(100_000)).is_err());
    }
}
