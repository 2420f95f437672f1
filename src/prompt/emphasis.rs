//! The prompt-attention syntax of AUTOMATIC1111's web UI (`modules/prompt_parser.py`,
//! `parse_prompt_attention`), which Civitai prompts are written in:
//!
//! * `(text)` multiplies the weight of `text` by 1.1, `[text]` by 1/1.1;
//! * `(text:1.3)` multiplies it by 1.3 (nested brackets multiply: `((a:1.3))` is 1.43);
//! * `\(`, `\)`, `\[`, `\]` and `\\` are the literal characters; a backslash before anything
//!   else is dropped;
//! * `BREAK` in capitals, as a word of its own, ends the current 75-token chunk.
//!
//! Malformed input never fails: a bracket left open applies to the rest of the prompt, a
//! closing bracket with nothing open is literal text, `:1.2)` with no `(` open is literal
//! text. The scanner tries the same alternatives in the same order as A1111's regular
//! expression, so these cases give what the web UI gives. Two deliberate differences:
//!
//! * A weight that is not a number (`(a:1.2.3)`) makes A1111 fail the whole generation
//!   (`float()` raises); here `:` is kept as text and the `)` closes the bracket (×1.1).
//! * A1111 marks `BREAK` with weight −1 and then multiplies it like any text, so a `BREAK`
//!   inside brackets silently becomes the word "break" with weight −1.1. Here `BREAK` is a
//!   chunk break wherever it stands; brackets do not change it.

/// `(text)` multiplier.
pub const ROUND_MULTIPLIER: f64 = 1.1;
/// `[text]` multiplier. A1111 multiplies by this constant rather than dividing by 1.1; the
/// two differ in the last bit, which decides whether neighbouring weights merge.
pub const SQUARE_MULTIPLIER: f64 = 1.0 / 1.1;

/// One part of a parsed prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Text and its weight (1.0 = unweighted). Weights are kept in f64 as A1111's Python
    /// floats are, so products such as `1.1⁴ = 1.4641000000000006` compare as they do there.
    Text { text: String, weight: f64 },
    /// `BREAK`: start a new chunk.
    Break,
}

impl Piece {
    fn text(text: &str) -> Self {
        Piece::Text {
            text: text.to_string(),
            weight: 1.0,
        }
    }
}

/// Splits `prompt` into weighted text and `BREAK` markers, merging neighbouring texts of
/// equal weight. The result is never empty: an empty prompt is one empty, unweighted text.
pub fn parse_attention(prompt: &str) -> Vec<Piece> {
    let mut res: Vec<Piece> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let mut i = 0;
    while let Some(c) = prompt[i..].chars().next() {
        let rest = &prompt[i..];
        match c {
            '\\' => {
                let next = rest[1..].chars().next();
                match next {
                    Some(n @ ('(' | ')' | '[' | ']' | '\\')) => {
                        res.push(Piece::text(&n.to_string()));
                        i += 2;
                    }
                    // A lone backslash: A1111 appends what follows it in the match, nothing.
                    _ => {
                        res.push(Piece::text(""));
                        i += 1;
                    }
                }
            }
            '(' => {
                round.push(res.len());
                i += 1;
            }
            '[' => {
                square.push(res.len());
                i += 1;
            }
            ':' => match weight_close(rest) {
                Some((len, weight)) if !round.is_empty() => match weight.parse::<f64>() {
                    Ok(w) => {
                        if let Some(start) = round.pop() {
                            multiply_range(&mut res, start, w);
                        }
                        i += len;
                    }
                    Err(_) => {
                        res.push(Piece::text(":"));
                        i += 1;
                    }
                },
                Some((len, _)) => {
                    push_text(&mut res, &rest[..len]);
                    i += len;
                }
                None => {
                    res.push(Piece::text(":"));
                    i += 1;
                }
            },
            ')' => {
                match round.pop() {
                    Some(start) => multiply_range(&mut res, start, ROUND_MULTIPLIER),
                    None => res.push(Piece::text(")")),
                }
                i += 1;
            }
            ']' => {
                match square.pop() {
                    Some(start) => multiply_range(&mut res, start, SQUARE_MULTIPLIER),
                    None => res.push(Piece::text("]")),
                }
                i += 1;
            }
            _ => {
                let len = rest
                    .find(['\\', '(', ')', '[', ']', ':'])
                    .unwrap_or(rest.len());
                push_text(&mut res, &rest[..len]);
                i += len;
            }
        }
    }
    // Unclosed brackets apply to everything after them, in the order they were opened.
    for start in round {
        multiply_range(&mut res, start, ROUND_MULTIPLIER);
    }
    for start in square {
        multiply_range(&mut res, start, SQUARE_MULTIPLIER);
    }
    if res.is_empty() {
        res.push(Piece::text(""));
    }
    merge_equal_weights(res)
}

/// `:([+-]?[.\d]+)\)` at the start of `s`: the match length and the number's text.
fn weight_close(s: &str) -> Option<(usize, &str)> {
    let b = s.as_bytes();
    let mut j = 1; // past ':'
    if matches!(b.get(j), Some(b'+' | b'-')) {
        j += 1;
    }
    let digits_from = j;
    while matches!(b.get(j), Some(c) if c.is_ascii_digit() || *c == b'.') {
        j += 1;
    }
    if j == digits_from || b.get(j) != Some(&b')') {
        return None;
    }
    Some((j + 1, &s[1..j]))
}

fn multiply_range(res: &mut [Piece], start: usize, multiplier: f64) {
    for piece in res.iter_mut().skip(start) {
        if let Piece::Text { weight, .. } = piece {
            *weight *= multiplier;
        }
    }
}

/// Appends a run of plain text, split at `BREAK` as A1111's `\s*\bBREAK\b\s*` splits it.
fn push_text(res: &mut Vec<Piece>, run: &str) {
    let mut part_start = 0;
    let mut search = 0;
    while let Some(found) = run[search..].find("BREAK") {
        let at = search + found;
        let end = at + "BREAK".len();
        let bounded_left = run[..at].chars().next_back().is_none_or(|c| !is_word(c));
        let bounded_right = run[end..].chars().next().is_none_or(|c| !is_word(c));
        if !(bounded_left && bounded_right) {
            search = at + 1;
            continue;
        }
        let mut start = at;
        while let Some(c) = run[part_start..start].chars().next_back() {
            if !is_space(c) {
                break;
            }
            start -= c.len_utf8();
        }
        let mut stop = end;
        while let Some(c) = run[stop..].chars().next() {
            if !is_space(c) {
                break;
            }
            stop += c.len_utf8();
        }
        res.push(Piece::text(&run[part_start..start]));
        res.push(Piece::Break);
        part_start = stop;
        search = stop;
    }
    res.push(Piece::text(&run[part_start..]));
}

/// Python's `\w` for str patterns (Unicode letters and digits, `_`).
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Python's `\s` for str patterns, which also counts the ASCII separators 0x1c–0x1f.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn merge_equal_weights(res: Vec<Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(res.len());
    for piece in res {
        if let (
            Some(Piece::Text {
                text: prev,
                weight: pw,
            }),
            Piece::Text { text, weight },
        ) = (out.last_mut(), &piece)
        {
            if *pw == *weight {
                prev.push_str(text);
                continue;
            }
        }
        out.push(piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str, weight: f64) -> Piece {
        Piece::Text {
            text: text.to_string(),
            weight,
        }
    }

    /// The examples in the docstring of A1111's `parse_prompt_attention`, with its outputs.
    #[test]
    fn a1111_docstring_examples() {
        assert_eq!(parse_attention("normal text"), vec![t("normal text", 1.0)]);
        assert_eq!(
            parse_attention("an (important) word"),
            vec![t("an ", 1.0), t("important", 1.1), t(" word", 1.0)]
        );
        assert_eq!(parse_attention("(unbalanced"), vec![t("unbalanced", 1.1)]);
        assert_eq!(parse_attention("\\(literal\\]"), vec![t("(literal]", 1.0)]);
        assert_eq!(
            parse_attention("(unnecessary)(parens)"),
            vec![t("unnecessaryparens", 1.1)]
        );
        assert_eq!(
            parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            vec![
                t("a ", 1.0),
                t("house", 1.5730000000000004),
                t(" ", 1.1),
                t("on", 1.0),
                t(" a ", 1.1),
                t("hill", 0.55),
                t(", sun, ", 1.1),
                t("sky", 1.4641000000000006),
                t(".", 1.1),
            ]
        );
    }

    #[test]
    fn weights_nest_and_multiply() {
        assert_eq!(parse_attention("(a:1.5)"), vec![t("a", 1.5)]);
        assert_eq!(
            parse_attention("((a:1.5))"),
            vec![t("a", 1.5 * ROUND_MULTIPLIER)]
        );
        assert_eq!(
            parse_attention("[[a]]"),
            vec![t("a", SQUARE_MULTIPLIER * SQUARE_MULTIPLIER)]
        );
        // Brackets of the two kinds cancel only up to rounding, as in Python.
        assert_eq!(
            parse_attention("[(a)]"),
            vec![t("a", 1.1 * SQUARE_MULTIPLIER)]
        );
        assert_eq!(
            parse_attention("x (y:-0.5) z"),
            vec![t("x ", 1.0), t("y", -0.5), t(" z", 1.0)]
        );
        assert_eq!(
            parse_attention("(a:+2)(b:.5)(c:3.)"),
            vec![t("a", 2.0), t("b", 0.5), t("c", 3.0)]
        );
        // An explicit weight inside square brackets still gets the 1/1.1.
        assert_eq!(
            parse_attention("[a (b:2)]"),
            vec![t("a ", SQUARE_MULTIPLIER), t("b", 2.0 * SQUARE_MULTIPLIER)]
        );
    }

    #[test]
    fn escapes_and_backslashes() {
        assert_eq!(parse_attention("\\\\"), vec![t("\\", 1.0)]);
        assert_eq!(parse_attention("a\\(b\\)"), vec![t("a(b)", 1.0)]);
        assert_eq!(parse_attention("(\\(x\\))"), vec![t("(x)", 1.1)]);
        // A backslash before any other character disappears (A1111's `\\` alternative).
        assert_eq!(parse_attention("a\\b"), vec![t("ab", 1.0)]);
        assert_eq!(parse_attention("a\\"), vec![t("a", 1.0)]);
        // `\:` is not an escape: the backslash goes and `:1.2)` is still a weight.
        assert_eq!(parse_attention("(a\\:1.2)"), vec![t("a", 1.2)]);
    }

    #[test]
    fn malformed_brackets() {
        assert_eq!(parse_attention(""), vec![t("", 1.0)]);
        assert_eq!(parse_attention("a)"), vec![t("a)", 1.0)]);
        assert_eq!(parse_attention("a]"), vec![t("a]", 1.0)]);
        assert_eq!(parse_attention("a:1.2)"), vec![t("a:1.2)", 1.0)]);
        assert_eq!(parse_attention("a:b"), vec![t("a:b", 1.0)]);
        assert_eq!(parse_attention("(a:b)"), vec![t("a:b", 1.1)]);
        assert_eq!(parse_attention("(a:1.2"), vec![t("a:1.2", 1.1)]);
        assert_eq!(parse_attention("(a:)"), vec![t("a:", 1.1)]);
        assert_eq!(parse_attention("(a: 1.2)"), vec![t("a: 1.2", 1.1)]);
        // Not a number: A1111 raises here; the colon stays text and `)` closes the bracket.
        assert_eq!(parse_attention("(a:1.2.3)"), vec![t("a:1.2.3", 1.1)]);
        assert_eq!(parse_attention("(a:.)"), vec![t("a:.", 1.1)]);
        // Mismatched kinds: `]` has no `[` open (literal); `(` stays open to the end.
        assert_eq!(parse_attention("(a]"), vec![t("a]", 1.1)]);
        // Unclosed brackets are applied in opening order: round ones first, then square.
        assert_eq!(
            parse_attention("[(a"),
            vec![t("a", 1.1 * SQUARE_MULTIPLIER)]
        );
        assert_eq!(parse_attention("()"), vec![t("", 1.0)]);
        assert_eq!(parse_attention("a()b"), vec![t("ab", 1.0)]);
    }

    #[test]
    fn break_is_a_separate_uppercase_word() {
        assert_eq!(
            parse_attention("a cat BREAK a dog"),
            vec![t("a cat", 1.0), Piece::Break, t("a dog", 1.0)]
        );
        assert_eq!(
            parse_attention("a,BREAK,b"),
            vec![t("a,", 1.0), Piece::Break, t(",b", 1.0)]
        );
        for not_break in [
            "a break b",
            "BREAKING",
            "aBREAK",
            "BREAK_",
            "BREAK2",
            "BREAKé",
        ] {
            assert_eq!(
                parse_attention(not_break),
                vec![t(not_break, 1.0)],
                "{not_break}"
            );
        }
        assert_eq!(
            parse_attention("BREAK"),
            vec![t("", 1.0), Piece::Break, t("", 1.0)]
        );
        assert_eq!(
            parse_attention("a\n BREAK\tBREAK  b"),
            vec![
                t("a", 1.0),
                Piece::Break,
                t("", 1.0),
                Piece::Break,
                t("b", 1.0)
            ]
        );
        // Next to brackets: the run ends at the bracket, which is a word boundary.
        assert_eq!(
            parse_attention("(a)BREAK(b)"),
            vec![
                t("a", 1.1),
                t("", 1.0),
                Piece::Break,
                t("", 1.0),
                t("b", 1.1)
            ]
        );
        // Inside brackets it still breaks (A1111 would turn it into the word "break").
        assert_eq!(
            parse_attention("(a BREAK b)"),
            vec![t("a", 1.1), Piece::Break, t("b", 1.1)]
        );
    }

    /// A small deterministic generator so the property test needs no extra dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    /// Random strings of syntax characters never panic, the output is never empty, BREAK
    /// markers never merge, no neighbouring texts share a weight, and the text is what is
    /// left after removing syntax (every non-syntax character survives in order).
    #[test]
    fn random_bracket_strings_never_panic() {
        const ALPHABET: &[&str] = &[
            "(", ")", "[", "]", ":", "\\", "1", ".", "5", "-", "+", "a", " ", "BREAK", "é", "\n",
            "0",
        ];
        let mut rng = Lcg(7);
        for _ in 0..20_000 {
            let len = (rng.next() % 24) as usize;
            let s: String = (0..len)
                .map(|_| ALPHABET[(rng.next() as usize) % ALPHABET.len()])
                .collect();
            let out = parse_attention(&s);
            assert!(!out.is_empty(), "{s:?}");
            for w in out.windows(2) {
                if let [Piece::Text { weight: a, .. }, Piece::Text { weight: b, .. }] = w {
                    assert_ne!(a, b, "{s:?}: unmerged neighbours in {out:?}");
                }
            }
            let letters: String = s.chars().filter(|c| matches!(c, 'a' | 'é')).collect();
            let kept: String = out
                .iter()
                .filter_map(|p| match p {
                    Piece::Text { text, .. } => Some(text.as_str()),
                    Piece::Break => None,
                })
                .collect::<String>()
                .chars()
                .filter(|c| matches!(c, 'a' | 'é'))
                .collect();
            assert_eq!(letters, kept, "{s:?}");
            for p in &out {
                if let Piece::Text { weight, .. } = p {
                    assert!(weight.is_finite(), "{s:?}");
                }
            }
        }
    }
}
