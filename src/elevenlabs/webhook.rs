//! The `ElevenLabs-Signature` scheme (REFERENCE.md §5.3): `t=<unix>,v0=<hex>`,
//! HMAC-SHA256 over `"{t}.{raw body}"` with the webhook secret.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Tolerance for old timestamps, as both SDKs use.
pub const TOLERANCE_SECS: i64 = 30 * 60;

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| {
            // HMAC accepts keys of any length; this branch cannot be taken.
            <Hmac<Sha256> as KeyInit>::new_from_slice(b"-").expect("fixed key")
        });
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value ElevenLabs would send for `body` at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v0={}", hex::encode(digest))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    TooOld,
    Mismatch,
}

/// A signature header that parsed and is recent enough: all that can be told
/// before the body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    timestamp: i64,
    signature: Vec<u8>,
}

impl SignatureHeader {
    /// Checks the signature against the raw body, in constant time; returns `t`.
    pub fn verify(&self, secret: &str, body: &[u8]) -> Result<i64, SignatureError> {
        mac(secret, self.timestamp, body)
            .verify_slice(&self.signature)
            .map(|_| self.timestamp)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// Checks a header against the raw body, in constant time; `now` in unix seconds.
pub fn verify(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<i64, SignatureError> {
    parse_header(header, now)?.verify(secret, body)
}

/// The checks the header alone allows (present, well formed, not too old),
/// so that a request that cannot be genuine is refused before its body is read.
pub fn parse_header(header: Option<&str>, now: i64) -> Result<SignatureHeader, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        let part = part.trim();
        if let Some(t) = part.strip_prefix("t=") {
            timestamp = t.parse::<i64>().ok();
        } else if let Some(v) = part.strip_prefix("v0=") {
            signature = hex::decode(v).ok();
        }
    }
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Malformed);
    };
    if timestamp < now - TOLERANCE_SECS {
        return Err(SignatureError::TooOld);
    }
    Ok(SignatureHeader {
        timestamp,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"type":"post_call_audio","event_timestamp":1739537297,"data":{"agent_id":"agent_x","conversation_id":"conv_y","full_audio":""}}"#;
    const HEADER: &str =
        "t=1739537297,v0=4426747159ddd4f8a2494d75ef4ca5df7fd18fb3dbc3617b08799766647b2ec8";

    #[test]
    fn the_reference_vector_signs_and_verifies() {
        assert_eq!(
            sign("wsec_test_secret", 1739537297, BODY.as_bytes()),
            HEADER
        );
        assert_eq!(
            verify(
                "wsec_test_secret",
                Some(HEADER),
                BODY.as_bytes(),
                1739537297 + 60
            ),
            Ok(1739537297)
        );
    }

    #[test]
    fn bad_signatures_are_refused_for_their_reason() {
        let now = 1739537297 + 60;
        assert_eq!(
            verify("wsec_test_secret", None, BODY.as_bytes(), now),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify("wsec_test_secret", Some("v0=zz"), BODY.as_bytes(), now),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify("other", Some(HEADER), BODY.as_bytes(), now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("wsec_test_secret", Some(HEADER), b"{}", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                "wsec_test_secret",
                Some(HEADER),
                BODY.as_bytes(),
                1739537297 + TOLERANCE_SECS + 1
            ),
            Err(SignatureError::TooOld)
        );
    }
}
