//! Hex text for the opaque tokens handed to clients (cursors, causal tokens).

/// Lowercase hex of `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `text`, or `None` if it is not hex.
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_rejects_non_hex() {
        assert_eq!(
            super::decode(&super::encode(&[0, 15, 255])).unwrap(),
            [0, 15, 255]
        );
        for bad in ["0", "zz", "é0"] {
            assert!(super::decode(bad).is_none(), "{bad}");
        }
    }
}
