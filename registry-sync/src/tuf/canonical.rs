//! Canonical JSON (the OLPC dialect securesystemslib signs): the bytes TUF signatures cover.
//!
//! Object keys sorted by code point, no whitespace, integers only (a float is an
//! error), and in strings only `"` and `\` escaped; everything else, control
//! characters included, is written as raw UTF-8. This matches
//! `securesystemslib.formats.encode_canonical`, which python-tuf and go-tuf use.

use serde_json::Value;

use super::{err, ErrorKind, Result};

/// Encode `value` in canonical form.
pub fn encode(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return err(
                    ErrorKind::Malformed,
                    format!("canonical JSON has no floats, got {n}"),
                );
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sort explicitly: serde_json's map order depends on a feature another
            // crate in the workspace may turn on. Byte order of UTF-8 is code point order.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let v: Value = serde_json::from_str(input).unwrap();
        assert_eq!(String::from_utf8(encode(&v).unwrap()).unwrap(), expected);
    }

    // Vectors from securesystemslib's encode_canonical doctests and python's
    // json -> encode_canonical round trip (run by hand with securesystemslib 1.4.0).
    #[test]
    fn canonical_json_vectors() {
        check(r#""""#, r#""""#);
        check("[1, 2, 3]", "[1,2,3]");
        check("[]", "[]");
        check(r#"{"A": [99]}"#, r#"{"A":[99]}"#);
        check(r#"{"x" : 3, "y" : 2}"#, r#"{"x":3,"y":2}"#);
        check(
            r#"{"b": null, "a": true, "c": false}"#,
            r#"{"a":true,"b":null,"c":false}"#,
        );
        check(
            r#"{"q": "say \"hi\" \\ bye"}"#,
            r#"{"q":"say \"hi\" \\ bye"}"#,
        );
        // Only quote and backslash are escaped: a newline and a tab go out raw.
        check("{\"n\": \"a\\nb\\tc\"}", "{\"n\":\"a\nb\tc\"}");
        // Non-ASCII is raw UTF-8, and keys sort by code point (Z < a < é).
        check(r#"{"é": 1, "a": 2, "Z": 3}"#, "{\"Z\":3,\"a\":2,\"é\":1}");
        check(
            r#"{"neg": -5, "big": 18446744073709551615}"#,
            r#"{"big":18446744073709551615,"neg":-5}"#,
        );
        check(
            r#"{"outer": {"z": [ {"b": 1, "a": 2} ], "a": "x"}}"#,
            r#"{"outer":{"a":"x","z":[{"a":2,"b":1}]}}"#,
        );
    }

    #[test]
    fn floats_are_refused() {
        let v: Value = serde_json::from_str(r#"{"x": 1.5}"#).unwrap();
        assert_eq!(encode(&v).unwrap_err().kind, ErrorKind::Malformed);
        let v: Value = serde_json::from_str(r#"[1.0]"#).unwrap();
        assert!(encode(&v).is_err());
    }
}
