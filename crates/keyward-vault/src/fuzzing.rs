//! The entry point of the vault document fuzz target in `fuzz/`. Not an
//! API (hidden from the docs); like the rest of this crate it hands no
//! value out: it checks the document's invariants itself.

use crate::document::{Document, SecretValue};

/// Parses decrypted snapshot bytes as a vault document. A document that
/// parses must come back the same after a round trip, and its `Debug`
/// form must not depend on its values (panics otherwise, for the fuzzer).
pub fn parse_document(bytes: &[u8]) -> Result<(), String> {
    let doc = Document::from_json(bytes)?;
    let again = Document::from_json(&doc.to_json()).expect("a document re-reads what it wrote");
    assert!(
        *again.to_json() == *doc.to_json(),
        "a document changed in a round trip"
    );
    let mut blanked = doc.clone();
    blanked.fingerprint_key = SecretValue::new(String::new());
    for secret in blanked.secrets.values_mut() {
        secret.value = SecretValue::new(String::new());
    }
    assert_eq!(
        format!("{doc:?}"),
        format!("{blanked:?}"),
        "Debug depends on the values"
    );
    Ok(())
}
