//! Hand-written pre-token splitters for the regexes llama.cpp also writes out by hand (GPT-2's,
//! Llama 3's, Qwen2's single-digit variant, and `\p{N}`), about ten times faster than running
//! them through the backtracking regex engine. They use the regex engine's own Unicode classes
//! and give exactly the regexes' pieces (the unit tests compare them on random text).

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;

/// `\p{L}`, `\p{N}` and `\s` of every code point, from regex-syntax's tables.
fn classes() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![0u8; 0x11_0000];
        for (pat, bit) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            let hir = regex_syntax::parse(pat).expect("a fixed Unicode class parses");
            let HirKind::Class(Class::Unicode(c)) = hir.kind() else { unreachable!("{pat} is a Unicode class") };
            for r in c.ranges() {
                for cp in r.start() as u32..=r.end() as u32 {
                    t[cp as usize] |= bit;
                }
            }
        }
        t
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Custom {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// Llama 3's regex with `\p{N}{1,max_digits}` (3 for Llama 3, 1 for Qwen2).
    Llama3 { max_digits: usize },
    /// `\p{N}`: every number character alone.
    EachNumber,
}

impl Custom {
    pub fn for_regex(re: &str) -> Option<Custom> {
        use super::pre::{GPT2, LLAMA3, QWEN2};
        match re {
            _ if re == GPT2 => Some(Custom::Gpt2),
            _ if re == LLAMA3 => Some(Custom::Llama3 { max_digits: 3 }),
            _ if re == QWEN2 => Some(Custom::Llama3 { max_digits: 1 }),
            r"\p{N}" => Some(Custom::EachNumber),
            _ => None,
        }
    }

    /// Appends the byte ranges of the pieces of `s[a..b]` (matches and the gaps between them).
    pub fn split(self, s: &str, a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
        let t = classes();
        let cs: Vec<(usize, char)> = s[a..b].char_indices().map(|(i, c)| (a + i, c)).collect();
        let n = cs.len();
        let off = |i: usize| if i < n { cs[i].0 } else { b };
        let fl = |i: usize| if i < n { t[cs[i].1 as usize] } else { 0 };
        let ch = |i: usize| if i < n { Some(cs[i].1) } else { None };
        let mut prev = 0;
        let mut emit = |end: usize, out: &mut Vec<(usize, usize)>| {
            if end > prev {
                out.push((off(prev), off(end)));
            }
            prev = end;
        };
        let mut pos = 0;
        match self {
            Custom::EachNumber => {
                while pos < n {
                    if fl(pos) & NUMBER != 0 {
                        emit(pos, out);
                        emit(pos + 1, out);
                    }
                    pos += 1;
                }
                emit(n, out);
            }
            Custom::Gpt2 => {
                while pos < n {
                    let c = cs[pos].1;
                    if c == '\'' && pos + 1 < n {
                        let c1 = cs[pos + 1].1;
                        if matches!(c1, 's' | 't' | 'm' | 'd') {
                            pos += 2;
                            emit(pos, out);
                            continue;
                        }
                        if pos + 2 < n {
                            let c2 = cs[pos + 2].1;
                            if matches!((c1, c2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                                pos += 3;
                                emit(pos, out);
                                continue;
                            }
                        }
                    }
                    let p2 = pos + usize::from(c == ' ');
                    let f2 = fl(p2);
                    if p2 < n && f2 & (LETTER | NUMBER) != 0 {
                        let class = f2 & (LETTER | NUMBER);
                        pos = p2;
                        while fl(pos) & class != 0 {
                            pos += 1;
                        }
                        emit(pos, out);
                        continue;
                    }
                    if p2 < n && f2 & (SPACE | LETTER | NUMBER) == 0 {
                        pos = p2;
                        while pos < n && fl(pos) & (SPACE | LETTER | NUMBER) == 0 {
                            pos += 1;
                        }
                        emit(pos, out);
                        continue;
                    }
                    let mut nws = 0;
                    while fl(pos + nws) & SPACE != 0 {
                        nws += 1;
                    }
                    if nws > 1 && pos + nws < n {
                        pos += nws - 1;
                    } else if nws > 0 {
                        pos += nws;
                    } else {
                        pos += 1;
                    }
                    emit(pos, out);
                }
            }
            Custom::Llama3 { max_digits } => {
                while pos < n {
                    let c = cs[pos].1;
                    let f = fl(pos);
                    if c == '\'' && pos + 1 < n {
                        let c1 = cs[pos + 1].1.to_ascii_lowercase();
                        if matches!(c1, 's' | 't' | 'm' | 'd') {
                            pos += 2;
                            emit(pos, out);
                            continue;
                        }
                        if pos + 2 < n {
                            let c2 = cs[pos + 2].1.to_ascii_lowercase();
                            if matches!((c1, c2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                                pos += 3;
                                emit(pos, out);
                                continue;
                            }
                        }
                    }
                    // [^\r\n\p{L}\p{N}]?\p{L}+
                    if !(c == '\r' || c == '\n' || f & NUMBER != 0) && (f & LETTER != 0 || fl(pos + 1) & LETTER != 0) {
                        pos += 1;
                        while fl(pos) & LETTER != 0 {
                            pos += 1;
                        }
                        emit(pos, out);
                        continue;
                    }
                    // \p{N}{1,max_digits}
                    if f & NUMBER != 0 {
                        let mut ini = pos;
                        while fl(pos) & NUMBER != 0 {
                            pos += 1;
                            if pos - ini >= max_digits {
                                emit(pos, out);
                                ini = pos;
                            }
                        }
                        emit(pos, out);
                        continue;
                    }
                    //  ?[^\s\p{L}\p{N}]+[\r\n]*
                    let p2 = pos + usize::from(c == ' ');
                    if p2 < n && fl(p2) & (SPACE | LETTER | NUMBER) == 0 {
                        pos = p2;
                        while pos < n && fl(pos) & (SPACE | LETTER | NUMBER) == 0 {
                            pos += 1;
                        }
                        while matches!(ch(pos), Some('\r' | '\n')) {
                            pos += 1;
                        }
                        emit(pos, out);
                        continue;
                    }
                    // \s*[\r\n]+ | \s+(?!\S) | \s+
                    let mut nws = 0;
                    let mut last_rn = None;
                    while fl(pos + nws) & SPACE != 0 {
                        if matches!(ch(pos + nws), Some('\r' | '\n')) {
                            last_rn = Some(pos + nws + 1);
                        }
                        nws += 1;
                    }
                    if let Some(e) = last_rn {
                        pos = e;
                    } else if nws > 1 && pos + nws < n {
                        pos += nws - 1;
                    } else if nws > 0 {
                        pos += nws;
                    } else {
                        pos += 1;
                    }
                    emit(pos, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fancy_regex::Regex;

    fn by_regex(re: &Regex, s: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        for m in re.find_iter(s) {
            let m = m.unwrap();
            if m.start() > at {
                out.push((at, m.start()));
            }
            out.push((m.start(), m.end()));
            at = m.end();
        }
        if at < s.len() {
            out.push((at, s.len()));
        }
        out
    }

    #[test]
    fn custom_splitters_equal_their_regexes() {
        use super::super::pre::{GPT2, LLAMA3, QWEN2};
        let palette: Vec<&str> = vec![
            "a", "b", "Z", "s", "t", "re", "ve", "ll", "d", "m", "S", "RE", "Ll", "'", "'", " ", " ", " ",
            "  ", "\t", "\n", "\r", "\r\n", "\u{a0}", "\u{3000}", "\u{2028}", "\u{85}", "1", "7", "²", "Ⅻ",
            "٣", ".", ",", "!", "?", "-", "_", "(", "{", "+", "$", "é", "e\u{301}", "中", "文", "😀", "👍🏽",
            "\u{200d}", "\u{fe0f}", "ß", "Ω", "\u{E000}", "\u{FFFD}", "\u{1}", "\u{7f}", "\u{10FFFF}",
        ];
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (re, custom) in [
            (GPT2, Custom::Gpt2),
            (LLAMA3, Custom::Llama3 { max_digits: 3 }),
            (QWEN2, Custom::Llama3 { max_digits: 1 }),
            (r"\p{N}", Custom::EachNumber),
        ] {
            assert_eq!(Custom::for_regex(re), Some(custom));
            let regex = Regex::new(re).unwrap();
            for _ in 0..4000 {
                let len = (rnd() % 24) as usize;
                let s: String = (0..len).map(|_| palette[(rnd() % palette.len() as u64) as usize]).collect();
                let mut got = Vec::new();
                custom.split(&s, 0, s.len(), &mut got);
                assert_eq!(got, by_regex(&regex, &s), "{custom:?} on {s:?}");
                // Also on a window of a longer text (offsets are absolute).
                let padded = format!("x{s}y");
                let mut got = Vec::new();
                custom.split(&padded, 1, 1 + s.len(), &mut got);
                let want: Vec<_> = by_regex(&regex, &s).into_iter().map(|(a, b)| (a + 1, b + 1)).collect();
                assert_eq!(got, want, "{custom:?} on window {s:?}");
            }
        }
    }
}
