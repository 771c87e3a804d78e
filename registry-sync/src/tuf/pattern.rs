//! Delegation path patterns: shell-style wildcards where `*` never crosses `/`.
//!
//! As python-tuf does it: pattern and target are split on `/`, must have the same
//! number of segments, and each segment must match with `fnmatch.fnmatchcase`
//! semantics (`*`, `?`, `[seq]`, `[!seq]`, case-sensitive; an unclosed `[` is a
//! literal).

/// Whether `target` matches delegation path pattern `pattern`.
pub fn path_matches(pattern: &str, target: &str) -> bool {
    let pats: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = target.split('/').collect();
    pats.len() == segs.len() && pats.iter().zip(&segs).all(|(p, s)| segment_matches(p, s))
}

#[derive(Debug, PartialEq)]
enum Tok {
    Star,
    Any,
    Lit(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

fn tokenize(pattern: &str) -> Vec<Tok> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => {
                // Runs of stars are one star.
                if out.last() != Some(&Tok::Star) {
                    out.push(Tok::Star);
                }
                i += 1;
            }
            '?' => {
                out.push(Tok::Any);
                i += 1;
            }
            '[' => {
                let mut j = i + 1;
                if j < p.len() && p[j] == '!' {
                    j += 1;
                }
                if j < p.len() && p[j] == ']' {
                    j += 1;
                }
                while j < p.len() && p[j] != ']' {
                    j += 1;
                }
                if j >= p.len() {
                    out.push(Tok::Lit('['));
                    i += 1;
                    continue;
                }
                let mut body = &p[i + 1..j];
                let negated = body.first() == Some(&'!');
                if negated {
                    body = &body[1..];
                }
                let mut ranges = Vec::new();
                let mut k = 0;
                while k < body.len() {
                    if k + 2 < body.len() && body[k + 1] == '-' {
                        ranges.push((body[k], body[k + 2]));
                        k += 3;
                    } else {
                        ranges.push((body[k], body[k]));
                        k += 1;
                    }
                }
                out.push(Tok::Class { negated, ranges });
                i = j + 1;
            }
            c => {
                out.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    out
}

fn tok_matches(t: &Tok, c: char) -> bool {
    match t {
        Tok::Star => true,
        Tok::Any => true,
        Tok::Lit(l) => *l == c,
        Tok::Class { negated, ranges } => {
            ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
    }
}

/// Wildcard match of one segment: linear-time two-pointer backtracking over the
/// last star, so hostile patterns cannot make it exponential.
fn segment_matches(pattern: &str, text: &str) -> bool {
    let toks = tokenize(pattern);
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut s) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while s < text.len() {
        if p < toks.len() && toks[p] == Tok::Star {
            star = Some((p, s));
            p += 1;
        } else if p < toks.len() && tok_matches(&toks[p], text[s]) {
            p += 1;
            s += 1;
        } else if let Some((sp, ss)) = star {
            p = sp + 1;
            s = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while p < toks.len() && toks[p] == Tok::Star {
        p += 1;
    }
    p == toks.len()
}

#[cfg(test)]
mod tests {
    use super::path_matches;

    #[test]
    fn star_does_not_cross_slash() {
        assert!(path_matches("*", "targetfile"));
        assert!(!path_matches("*", "dir/file"));
        assert!(path_matches("*.md", "README.md"));
        assert!(!path_matches("*.md", "releases/README.md"));
        assert!(path_matches("releases/*/*", "releases/x/x_v1"));
        assert!(!path_matches("releases/*/*", "releases/x"));
        assert!(!path_matches("releases/*", "releases/x/y"));
        assert!(path_matches("releases/y/*.zip", "releases/y/y_v1.zip"));
        assert!(!path_matches("releases/y/*.zip", "releases/z/z_v1.zip"));
        assert!(path_matches("team-a/*", "team-a/trusted_root.json"));
    }

    #[test]
    fn question_mark_classes_and_case() {
        assert!(path_matches("foo-?.tgz", "foo-1.tgz"));
        assert!(!path_matches("foo-?.tgz", "foo-alpha.tgz"));
        assert!(!path_matches("foo-?.tgz", "foo-.tgz"));
        assert!(!path_matches("*.md", "README.MD"));
        assert!(path_matches("v[0-9].onnx", "v7.onnx"));
        assert!(!path_matches("v[0-9].onnx", "vx.onnx"));
        assert!(path_matches("v[!0-9].onnx", "vx.onnx"));
        assert!(!path_matches("v[!0-9].onnx", "v1.onnx"));
        assert!(path_matches("a[]]b", "a]b"));
        // An unclosed bracket is a literal.
        assert!(path_matches("a[b", "a[b"));
        assert!(!path_matches("a[b", "ab"));
    }

    #[test]
    fn stars_backtrack_and_empty_segments() {
        assert!(path_matches("*a*b*c", "xxaxxbxxbxc"));
        assert!(!path_matches("*a*b*c", "xxaxxbxxbx"));
        assert!(path_matches("**", ""));
        assert!(path_matches("*", ""));
        assert!(!path_matches("a", ""));
        let hostile = "*a".repeat(50);
        assert!(!path_matches(&hostile, &"a".repeat(49)));
    }
}
