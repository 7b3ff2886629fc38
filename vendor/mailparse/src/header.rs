use charset::Charset;

use crate::find_from;

/// Some types of tokens that might be present in a MIME header. This
/// list is incomplete relative the types of tokens defined in the RFC,
/// but can be expanded as needed. Currently the list of tokens is
/// sufficient to properly handle encoded words and line unfolding.
pub enum HeaderToken<'a> {
    /// A bunch of not-encoded text. This can include whitespace and
    /// non-whitespace chars.
    Text(&'a str),
    /// A bunch of text that is purely whitespace.
    Whitespace(&'a str),
    /// An end-of-line marker. If it contains None, then it represents
    /// a raw CRLF that has not yet been line-unfolded. If it contains
    /// a string, that represents the whitespace that was produced
    /// around that CRLF during line unfolding. This may include whitespace
    /// from the end of the previous line.
    Newline(Option<String>),
    /// The decoded value of an encoded word found in the header.
    DecodedWord(String),
}

// mxnode patch: `ix` is a byte offset into `line` (every caller computes it from `find`), so
// the character it points into is found in O(1). Upstream reads `line.chars().nth(ix)`, which
// walks the line from its start at every `=?` and `?=` (quadratic in the line length) and, on
// a line with multi-byte characters before `ix`, looks at the wrong character.
fn char_at_byte(line: &str, ix: usize) -> Option<char> {
    if ix >= line.len() {
        return None;
    }
    let mut start = ix;
    while !line.is_char_boundary(start) {
        start -= 1;
    }
    #[cfg(test)]
    count_work(ix - start + 1);
    line[start..].chars().next()
}

// mxnode patch (tests only): work done by the header scans on this thread, counted in bytes
// looked at, so the linearity tests below measure work, not time.
#[cfg(test)]
thread_local! {
    static WORK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
pub(crate) fn count_work(bytes: usize) {
    WORK.with(|w| w.set(w.get() + bytes));
}

#[cfg(test)]
fn take_work() -> usize {
    WORK.with(|w| w.replace(0))
}

fn is_boundary(line: &str, ix: Option<usize>) -> bool {
    ix.and_then(|v| char_at_byte(line, v))
        .map(|c| {
            c.is_whitespace()
                || c == '"'
                || c == '('
                || c == ')'
                || c == '<'
                || c == '>'
                || c == ','
        })
        .unwrap_or(true)
}

fn decode_word(encoded: &str) -> Option<String> {
    let ix_delim1 = encoded.find('?')?;
    let ix_delim2 = find_from(encoded, ix_delim1 + 1, "?")?;

    let charset = &encoded[0..ix_delim1];
    let transfer_coding = &encoded[ix_delim1 + 1..ix_delim2];
    let input = &encoded[ix_delim2 + 1..];

    let decoded = match transfer_coding {
        "B" | "b" => data_encoding::BASE64_MIME_PERMISSIVE
            .decode(input.as_bytes())
            .ok()?,
        "Q" | "q" => {
            // The quoted_printable module does a trim_end on the input, so if
            // that affects the output we should save and restore the trailing
            // whitespace
            let to_decode = input.replace('_', " ");
            let trimmed = to_decode.trim_end();
            let mut d = quoted_printable::decode(trimmed, quoted_printable::ParseMode::Robust);
            if d.is_ok() && to_decode.len() != trimmed.len() {
                d.as_mut()
                    .unwrap()
                    .extend_from_slice(to_decode[trimmed.len()..].as_bytes());
            }
            d.ok()?
        }
        _ => return None,
    };
    let charset = Charset::for_label_no_replacement(charset.as_bytes())?;
    let (cow, _) = charset.decode_without_bom_handling(&decoded);
    Some(cow.into_owned())
}

/// Tokenizes a single line of the header and produces a vector of
/// tokens. Because this only processes a single line, it will never
/// generate `HeaderToken::Newline` tokens.
fn tokenize_header_line(line: &str) -> Vec<HeaderToken> {
    fn maybe_whitespace(text: &str) -> HeaderToken {
        if text.trim_end().is_empty() {
            HeaderToken::Whitespace(text)
        } else {
            HeaderToken::Text(text)
        }
    }

    let mut result = Vec::new();
    let mut ix_search = 0;
    // mxnode patch: the first `?=` followed by a boundary at or after `.0` is at `.1` (`None`:
    // there is none). A search that found nothing is not repeated from every later `=?`, which
    // upstream does (quadratic on `=?=?=?…`): for any start between `.0` and `.1` the answer is
    // the same, and past a found `?=` the scan resumes behind it, so each byte is searched once.
    let mut end_memo: Option<(usize, Option<usize>)> = None;
    loop {
        match find_from(line, ix_search, "=?") {
            Some(v) => {
                let ix_begin = v + 2;
                if !is_boundary(line, ix_begin.checked_sub(3)) {
                    result.push(HeaderToken::Text(&line[ix_search..ix_begin]));
                    ix_search = ix_begin;
                    continue;
                }
                result.push(maybe_whitespace(&line[ix_search..ix_begin - 2]));
                let memo = end_memo.filter(|&(from, found)| {
                    from <= ix_begin && found.map_or(true, |ix_end| ix_end >= ix_begin)
                });
                let found_end = match memo {
                    Some((_, found)) => found,
                    None => {
                        let mut ix_end_search = ix_begin;
                        let found = loop {
                            match find_from(line, ix_end_search, "?=") {
                                Some(ix_end) if !is_boundary(line, ix_end.checked_add(2)) => {
                                    ix_end_search = ix_end + 2;
                                }
                                found => break found,
                            }
                        };
                        end_memo = Some((ix_begin, found));
                        found
                    }
                };
                match found_end {
                    Some(ix_end) => {
                        match decode_word(&line[ix_begin..ix_end]) {
                            Some(v) => result.push(HeaderToken::DecodedWord(v)),
                            None => {
                                result.push(HeaderToken::Text(&line[ix_begin - 2..ix_end + 2]));
                            }
                        };
                        ix_search = ix_end;
                    }
                    None => {
                        result.push(HeaderToken::Text("=?"));
                        ix_search = ix_begin - 2;
                    }
                };
                ix_search += 2;
                continue;
            }
            None => {
                result.push(maybe_whitespace(&line[ix_search..]));
                break;
            }
        };
    }
    result
}

/// Tokenize an entire header, including newlines. This includes
/// decoded words, but doesn't do line unfolding, so any `HeaderToken::Newline`
/// tokens will always have a `None` inner value. Whitespace preceding
/// the newline will be in a separate `HeaderToken::Whitespace` or
/// `HeaderToken::Text` token. Semantically the `HeaderToken::Newline`
/// tokens that come out of this still represent the CRLF newline.
fn tokenize_header(value: &str) -> Vec<HeaderToken> {
    let mut tokens = Vec::new();
    let mut lines = value.lines();
    let mut first = true;
    while let Some(line) = lines.next().map(str::trim_start) {
        if first {
            first = false;
        } else {
            tokens.push(HeaderToken::Newline(None));
        }
        let mut line_tokens = tokenize_header_line(line);
        tokens.append(&mut line_tokens);
    }
    tokens
}

/// Takes in a list of tokens and processes them to normalize the whitespace
/// per the RFC. This includes dropping any whitespace between two adjacent
/// encoded words, and also doing line unfolding. As a result, the `HeaderToken::Newline`
/// tokens that come out of this no longer represent the CRLF newline, but instead
/// their contained `Option<String>` will be populated with whatever whitespace gets
/// generated from unfolding the line. This might include end-of-line whitespace from
/// the previous line.
fn normalize_header_whitespace(tokens: Vec<HeaderToken>) -> Vec<HeaderToken> {
    let mut result = Vec::<HeaderToken>::new();

    let mut saved_token = None;
    // See RFC 2047 section 6.2 for what's going on here. Basically whitespace
    // that's between two adjacent encoded words should be thrown away.
    for tok in tokens {
        match &tok {
            HeaderToken::Text(_) => {
                // If we saved some whitespace, put it in since we encountered
                // non-whitespace chars that weren't part of an encoded word.
                if let Some(HeaderToken::Whitespace(_)) = &saved_token {
                    result.push(saved_token.unwrap());
                } else if let Some(HeaderToken::Newline(Some(_))) = &saved_token {
                    result.push(saved_token.unwrap());
                }
                // Also put the actual non-whitespace chars.
                result.push(tok);
                saved_token = None;
            }
            HeaderToken::Whitespace(_) => {
                // If the previous token was an encoded word, save the whitespace
                // as whitespace that's between two encoded words should be dropped.
                // We only know if this whitespace goes into `result` after parsing
                // the next token.
                if let Some(HeaderToken::DecodedWord(_)) = saved_token {
                    saved_token = Some(tok);
                } else {
                    result.push(tok);
                    saved_token = None;
                }
            }
            HeaderToken::Newline(_) => {
                // If we saved whitespace at the end of the line, add an extra space
                // to it from the line unfolding.
                if let Some(HeaderToken::Whitespace(ws)) = saved_token {
                    let new_ws = ws.to_owned() + " ";
                    saved_token = Some(HeaderToken::Newline(Some(new_ws)));
                // If the end of the line had an encoded word, save the space from
                // line unfolding.
                } else if let Some(HeaderToken::DecodedWord(_)) = saved_token {
                    saved_token = Some(HeaderToken::Newline(Some(" ".to_string())));
                } else {
                    result.push(HeaderToken::Newline(Some(" ".to_string())));
                    saved_token = None;
                }
            }
            HeaderToken::DecodedWord(_) => {
                // Note that saved_token might be a whitespace thing here. But we
                // throw it away because that means it fell between two adjacent
                // encoded words.
                saved_token = Some(HeaderToken::DecodedWord(String::new()));
                result.push(tok);
            }
        }
    }
    result
}

pub fn normalized_tokens(raw_value: &str) -> Vec<HeaderToken> {
    normalize_header_whitespace(tokenize_header(raw_value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mxnode patch: decoding a header line costs work linear in its length whatever its
    /// shape (issue 16). Upstream did work quadratic in the length on each of these.
    #[test]
    fn header_scans_are_linear() {
        let shapes: [(&str, &str); 6] = [
            ("", "x=?"),
            ("", "=?"),
            ("", " =?"),
            ("", "=?a?q?b?= "),
            ("=?", " ?=x"),
            ("", "\u{e9}=?"),
        ];
        for (prefix, unit) in shapes {
            let mut per_byte = Vec::new();
            for len in [4096, 65536] {
                let line = format!("{prefix}{}", unit.repeat(len / unit.len()));
                take_work();
                let tokens = normalized_tokens(&line);
                assert!(!tokens.is_empty());
                per_byte.push(take_work() as f64 / line.len() as f64);
            }
            assert!(
                per_byte[1] <= 8.0 && per_byte[1] <= per_byte[0] * 1.5,
                "{:?}: work per byte {:?}",
                unit,
                per_byte
            );
        }
    }

    #[test]
    fn boundaries_are_read_at_byte_offsets() {
        // An encoded word after multi-byte characters is still an encoded word.
        let tokens = normalized_tokens("Gr\u{fc}\u{df}e =?utf-8?q?caf=C3=A9?=");
        assert!(tokens
            .iter()
            .any(|t| matches!(t, HeaderToken::DecodedWord(w) if w == "caf\u{e9}")));
    }

    #[test]
    fn test_is_boundary_multibyte() {
        // Bug #26, Incorrect unwrap() guard in is_boundary()
        // 6x'REPLACEMENT CHARACTER', but 18 bytes of data:
        let test = "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}";
        // mxnode patch: offsets are byte offsets; byte 8 is inside the third character (not a
        // boundary), byte 18 is past the end (a boundary). Upstream asserted `Some(8)` is one,
        // reading it as the ninth character, past the end.
        assert!(!is_boundary(test, Some(8)));
        assert!(is_boundary(test, Some(18)));
    }
}
