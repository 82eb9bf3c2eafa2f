//! A configuration value that must never be shown: passwords, API tokens,
//! key passphrases. Debug, Display and serialization (`orderflow config`)
//! print `***`; the value is reachable only through [`Secret::expose`], and
//! is zeroed when dropped.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone)]
pub struct Secret(SecretString);

pub const REDACTED: &str = "***";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl Default for Secret {
    fn default() -> Self {
        Self::new(String::new())
    }
}

/// Two secrets compare in constant time over the longer length, so a
/// timing side channel does not reveal a common prefix.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        let (a, b) = (self.expose().as_bytes(), other.expose().as_bytes());
        let len = a.len().max(b.len());
        let pad = |s: &[u8]| {
            let mut v = s.to_vec();
            v.resize(len, 0);
            v
        };
        bool::from(pad(a).ct_eq(&pad(b))) & (a.len() == b.len())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl Secret {
    /// Empty stays empty, so `orderflow config` still tells "not set".
    fn shown(&self) -> &'static str {
        if self.is_empty() {
            ""
        } else {
            REDACTED
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.shown())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_its_value() {
        let secret = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(
            serde_json::to_string(&secret).expect("serialize"),
            "\"***\""
        );
        assert_eq!(secret.expose(), "hunter2-very-secret");
        assert_eq!(format!("{:?}", Secret::default()), "");
    }

    #[test]
    fn compares_by_value() {
        assert_eq!(Secret::new("abc"), Secret::new("abc"));
        assert_ne!(Secret::new("abc"), Secret::new("abd"));
        assert_ne!(Secret::new("abc"), Secret::new("abc\0"));
        assert_ne!(Secret::new(""), Secret::new("a"));
    }
}
