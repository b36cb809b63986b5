//! The DSSE envelope that carries a lease, and the pre-authentication encoding it signs.
//!
//! A signature covers `PAE(payloadType, payload bytes)`, where the payload bytes are exactly
//! the base64-decoded `payload` field: nothing is re-serialized before signing or verifying, so
//! two parsers can never disagree about what was signed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature as Ed25519Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::keys;

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Media type of the payload; for leases [`super::model::LEASE_PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The payload bytes, standard base64 with padding.
    pub payload: String,
    /// Signatures over `PAE(payloadType, payload)`.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// Hex SHA-256 of the signer's SPKI DER (see [`keys::keyid`]).
    pub keyid: String,
    /// The Ed25519 signature, standard base64.
    pub sig: String,
}

/// Errors decoding or signing an envelope.
#[derive(Debug, Error)]
pub enum EnvelopeError {
    /// The bytes are not a DSSE envelope.
    #[error("lease envelope is not valid DSSE JSON: {source}")]
    Json {
        /// serde_json's reason, with line and column.
        source: serde_json::Error,
    },
    /// The `payload` field is not standard base64.
    #[error("payload is not valid base64: {source}")]
    PayloadBase64 {
        /// The decoder's reason.
        source: base64::DecodeError,
    },
    /// A `sig` field is not standard base64 of 64 bytes.
    #[error("signature {number} is not a base64 Ed25519 signature")]
    SigEncoding {
        /// 1-based position in `signatures`.
        number: usize,
    },
}

/// The DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal.
///
/// Written here rather than taken from a crate: it is a dozen lines whose exact bytes are the
/// security boundary, so we want them in plain sight and tested, and the available crates would
/// pull in a second signing stack and their own envelope types for no gain.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let type_len = payload_type.len().to_string();
    let body_len = body.len().to_string();
    let mut out =
        Vec::with_capacity(10 + type_len.len() + payload_type.len() + body_len.len() + body.len());
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(type_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// What [`Envelope::sign`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignOutcome {
    /// A new signature was appended.
    Added {
        /// The signer's key id.
        keyid: String,
    },
    /// This key had already signed; nothing changed.
    AlreadySigned {
        /// The signer's key id.
        keyid: String,
    },
}

impl Envelope {
    /// An unsigned envelope around `body`.
    pub fn unsigned(payload_type: &str, body: &[u8]) -> Self {
        Envelope {
            payload_type: payload_type.to_owned(),
            payload: STANDARD.encode(body),
            signatures: Vec::new(),
        }
    }

    /// Parses envelope JSON. The payload stays encoded and unparsed.
    pub fn from_json(raw: &[u8]) -> Result<Self, EnvelopeError> {
        serde_json::from_slice(raw).map_err(|source| EnvelopeError::Json { source })
    }

    /// Pretty JSON with a trailing newline, as written to lease files.
    pub fn to_json_pretty(&self) -> String {
        // Serializing two strings and a list of string pairs cannot fail; serde_json only
        // errors on non-string map keys and failing writers.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The exact payload bytes that signatures cover.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        STANDARD
            .decode(self.payload.as_bytes())
            .map_err(|source| EnvelopeError::PayloadBase64 { source })
    }

    /// Adds a signature by `key` over the exact payload bytes. A key that already has a valid
    /// signature here is not added twice.
    pub fn sign(&mut self, key: &SigningKey) -> Result<SignOutcome, EnvelopeError> {
        let body = self.payload_bytes()?;
        let message = pae(&self.payload_type, &body);
        let public = key.verifying_key();
        let keyid = keys::keyid(&public);
        for (i, existing) in self.signatures.iter().enumerate() {
            if existing.keyid == keyid {
                let sig = decode_signature(&existing.sig, i + 1)?;
                if public.verify_strict(&message, &sig).is_ok() {
                    return Ok(SignOutcome::AlreadySigned { keyid });
                }
            }
        }
        let sig = key.sign(&message);
        self.signatures.push(EnvelopeSignature {
            keyid: keyid.clone(),
            sig: STANDARD.encode(sig.to_bytes()),
        });
        Ok(SignOutcome::Added { keyid })
    }
}

/// Decodes one `sig` field; `number` is its 1-based position for the message.
pub fn decode_signature(sig: &str, number: usize) -> Result<Ed25519Signature, EnvelopeError> {
    let bytes = STANDARD
        .decode(sig.as_bytes())
        .map_err(|_| EnvelopeError::SigEncoding { number })?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|_| EnvelopeError::SigEncoding { number })?;
    Ok(Ed25519Signature::from_bytes(&bytes))
}

/// Checks one signature over `PAE(payload_type, body)` with `verify_strict`, which also rejects
/// small-order keys and non-canonical signatures (no malleable second form of a signature).
pub fn verify_signature(
    key: &VerifyingKey,
    payload_type: &str,
    body: &[u8],
    sig: &Ed25519Signature,
) -> bool {
    key.verify_strict(&pae(payload_type, body), sig).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // The worked example from the DSSE protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn sign_twice_with_one_key_is_a_no_op() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut env = Envelope::unsigned("t", b"{}");
        assert!(matches!(env.sign(&key).unwrap(), SignOutcome::Added { .. }));
        assert!(matches!(
            env.sign(&key).unwrap(),
            SignOutcome::AlreadySigned { .. }
        ));
        assert_eq!(env.signatures.len(), 1);
        let sig = decode_signature(&env.signatures[0].sig, 1).unwrap();
        assert!(verify_signature(&key.verifying_key(), "t", b"{}", &sig));
        assert!(!verify_signature(&key.verifying_key(), "t", b"{ }", &sig));
    }
}
