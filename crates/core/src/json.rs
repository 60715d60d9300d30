//! Decoding JSON documents that arrive as bytes (provider responses, claim
//! files).

use serde::de::DeserializeOwned;

/// Decodes `bytes`, their UTF-8 checked once for the whole document: from
/// bytes, serde_json checks each string on its own, and a page of 50
/// servers or a claim holds thousands or dozens of them. A document that
/// is not UTF-8 is left to serde_json, whose error says where.
///
/// # Errors
/// The document is not JSON of `T`'s shape.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_bytes_decode_alike_and_bad_utf8_is_located() {
        let v: Vec<String> = from_bytes(br#"["a", "\u00e9", "b"]"#).expect("json");
        assert_eq!(v, ["a", "é", "b"]);
        let e = from_bytes::<Vec<String>>(b"[\"a\", \"\xff\"]").expect_err("not UTF-8");
        assert!(e.to_string().contains("column"), "{e}");
    }
}
