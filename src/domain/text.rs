//! Printable text, the rule every name and reference the API takes follows:
//! surrounding whitespace trimmed, at least one character left, no control
//! characters, at most [`MAX_NAME_LEN`] characters counted before trimming
//! (as a schema's `maxLength` counts them). The check and the OpenAPI
//! pattern that states it live here once.

use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::Object;

use super::MAX_NAME_LEN;

/// The rule as an ECMA-262 pattern: it spells out Rust's `char::is_whitespace`
/// (the trimmed ends) and `char::is_control` (nowhere), so a schema-valid
/// text is never refused and a schema-invalid one never accepted.
pub const PRINTABLE_PATTERN: &str = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$";

/// Why a text is not printable text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    Empty,
    TooLong,
    ControlCharacters,
}

/// The trimmed text, if `raw` follows the rule.
pub fn printable(raw: &str) -> Result<&str, TextError> {
    let text = raw.trim();
    if text.is_empty() {
        Err(TextError::Empty)
    } else if raw.chars().count() > MAX_NAME_LEN {
        Err(TextError::TooLong)
    } else if !is_printable(text) {
        Err(TextError::ControlCharacters)
    } else {
        Ok(text)
    }
}

pub(super) fn is_printable(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// The schema of a printable text field, with an example.
pub fn schema(example: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_NAME_LEN))
        .pattern(Some(PRINTABLE_PATTERN))
        .examples([example])
        .build()
}

pub fn customer_name_schema() -> Object {
    schema("Ada Lovelace")
}

pub fn product_name_schema() -> Object {
    schema("notebook")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_printable_text_passes_and_the_rest_says_why_not() {
        assert_eq!(printable("  Ada  "), Ok("Ada"));
        assert_eq!(printable(" \t "), Err(TextError::Empty));
        assert_eq!(printable("a\u{7}b"), Err(TextError::ControlCharacters));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(printable(&long), Err(TextError::TooLong));
        // The raw length counts: padding can make a short name too long.
        let padded = format!("{}{}", " ".repeat(MAX_NAME_LEN), "x");
        assert_eq!(printable(&padded), Err(TextError::TooLong));
    }
}
