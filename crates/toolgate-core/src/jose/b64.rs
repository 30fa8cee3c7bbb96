//! Strict base64url (RFC 4648 §5) without padding.

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use super::JoseError;

/// URL-safe alphabet, no padding on encode, padding rejected on decode.
/// Non-zero trailing bits are rejected (the `GeneralPurposeConfig` default).
const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Encode as base64url without padding.
pub fn encode(bytes: &[u8]) -> String {
    ENGINE.encode(bytes)
}

/// Decode strict base64url: URL-safe alphabet only, no padding, canonical trailing bits.
pub fn decode(s: &str) -> Result<Vec<u8>, JoseError> {
    ENGINE.decode(s).map_err(|_| JoseError::Base64)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_alphabet() {
        let bytes: Vec<u8> = (0u8..=255).collect();
        let s = encode(&bytes);
        assert!(!s.contains('=') && !s.contains('+') && !s.contains('/'));
        assert_eq!(decode(&s).unwrap(), bytes);
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn rejects_padding_std_alphabet_and_whitespace() {
        assert_eq!(decode("QQ=="), Err(JoseError::Base64));
        assert_eq!(decode("QUI="), Err(JoseError::Base64));
        assert_eq!(decode("+/8"), Err(JoseError::Base64));
        assert_eq!(decode("QU I"), Err(JoseError::Base64));
        assert_eq!(decode("QUI\n"), Err(JoseError::Base64));
        assert_eq!(decode("Q"), Err(JoseError::Base64)); // impossible length
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // "QQ" is the canonical encoding of "A"; "QR" has non-zero trailing bits.
        assert_eq!(decode("QQ").unwrap(), b"A");
        assert_eq!(decode("QR"), Err(JoseError::Base64));
        assert_eq!(decode("QUI").unwrap(), b"AB");
        assert_eq!(decode("QUJ"), Err(JoseError::Base64));
    }
}
