//! The stored message's `Authentication-Results` (RFC 8601 §5): ours prepended, any earlier
//! one that claims our authserv-id removed (a sender could forge a `pass` in our name).
//!
//! Pure byte work on the message in memory; used for the `.eml` a `raw_to_s3` route stores.

/// `Authentication-Results: <value>` before the message, without the fields in its header
/// section whose authserv-id is `authserv_id` (compared case-insensitively).
pub fn stamp(message: &[u8], authserv_id: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + value.len() + 32);
    out.extend_from_slice(b"Authentication-Results: ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
    let header_end = header_section_end(message);
    let mut position = 0;
    while position < header_end {
        let field_end = field_end(message, position, header_end);
        let field = &message[position..field_end];
        if !claims(field, authserv_id) {
            out.extend_from_slice(field);
        }
        position = field_end;
    }
    out.extend_from_slice(&message[header_end..]);
    out
}

/// Where the header section ends: the start of the empty line, or the end of the message.
fn header_section_end(message: &[u8]) -> usize {
    let mut line_start = 0;
    while line_start < message.len() {
        if message[line_start..].starts_with(b"\r\n") || message[line_start] == b'\n' {
            return line_start;
        }
        match memchr::memchr(b'\n', &message[line_start..]) {
            Some(i) => line_start += i + 1,
            None => return message.len(),
        }
    }
    message.len()
}

/// The end of the field starting at `start`: after its last line, continuation lines (those
/// starting with a space or tab) included.
fn field_end(message: &[u8], start: usize, limit: usize) -> usize {
    let mut position = start;
    loop {
        position = match memchr::memchr(b'\n', &message[position..limit]) {
            Some(i) => position + i + 1,
            None => return limit,
        };
        if position >= limit || !matches!(message[position], b' ' | b'\t') {
            return position;
        }
    }
}

/// Whether a header field is an `Authentication-Results` whose authserv-id is ours.
fn claims(field: &[u8], authserv_id: &str) -> bool {
    let Some(colon) = memchr::memchr(b':', field) else {
        return false;
    };
    let name = &field[..colon];
    if !name
        .trim_ascii()
        .eq_ignore_ascii_case(b"Authentication-Results")
    {
        return false;
    }
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    let value = strip_comments(&value);
    let id = value
        .split(';')
        .next()
        .unwrap_or("")
        .split_ascii_whitespace()
        .next()
        .unwrap_or("");
    id.eq_ignore_ascii_case(authserv_id)
}

/// The value without RFC 5322 comments (`(…)`, nested), which may surround the authserv-id.
fn strip_comments(value: &str) -> String {
    let mut depth = 0usize;
    let mut out = String::with_capacity(value.len());
    let mut escaped = false;
    for c in value.chars() {
        if depth > 0 {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
        } else if c == '(' {
            depth = 1;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(message: &str, expect: &str) {
        let stamped = stamp(
            message.as_bytes(),
            "mx.example.test",
            "mx.example.test; spf=pass",
        );
        assert_eq!(String::from_utf8_lossy(&stamped), expect);
    }

    #[test]
    fn prepends_ours_and_removes_only_those_claiming_our_id() {
        check(
            "Authentication-Results: MX.example.test; dkim=pass\r\n\
             Authentication-Results: (forged)\r\n mx.example.test (here);\r\n\tdmarc=pass\r\n\
             authentication-results: other.example; spf=fail\r\n\
             Subject: Authentication-Results: mx.example.test; x\r\n\
             \r\n\
             Authentication-Results: mx.example.test; body line\r\n",
            "Authentication-Results: mx.example.test; spf=pass\r\n\
             authentication-results: other.example; spf=fail\r\n\
             Subject: Authentication-Results: mx.example.test; x\r\n\
             \r\n\
             Authentication-Results: mx.example.test; body line\r\n",
        );
    }

    #[test]
    fn messages_without_a_body_or_headers_keep_their_bytes() {
        check(
            "Subject: only headers\r\n",
            "Authentication-Results: mx.example.test; spf=pass\r\nSubject: only headers\r\n",
        );
        check(
            "\r\nbody only\r\n",
            "Authentication-Results: mx.example.test; spf=pass\r\n\r\nbody only\r\n",
        );
        check("", "Authentication-Results: mx.example.test; spf=pass\r\n");
        check(
            "Authentication-Results: mx.example.test; dkim=pass",
            "Authentication-Results: mx.example.test; spf=pass\r\n",
        );
    }
}
