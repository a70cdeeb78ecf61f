//! The names the manifest and the admin API share (service names, topics, version
//! labels), each checked once where it is parsed, so code that holds one never checks it
//! again.

use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

/// A string that is not a valid name of its kind; the message quotes it and says the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(String);

/// Defines a checked string type: `$valid` decides, `$rule` completes the message
/// `"<value>" is not a valid <rule>`.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $valid:expr, $rule:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;

            fn try_from(value: String) -> Result<Self, InvalidId> {
                let valid: fn(&str) -> bool = $valid;
                if valid(&value) {
                    Ok($name(value))
                } else {
                    Err(InvalidId(format!(
                        concat!("{:?} is not a valid ", $rule),
                        value
                    )))
                }
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(value: &str) -> Result<Self, InvalidId> {
                $name::try_from(value.to_string())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// Like the string's: a quoted value, as messages quote names.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

checked_string!(
    /// A service's name: 1 to 63 lower-case letters, digits and `-`, starting with a
    /// letter (it is also the host name label of `http://<name>.internal/`).
    ServiceName,
    |name| {
        name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    },
    "service name: use 1 to 63 lower-case letters, digits and '-', starting with a letter"
);

checked_string!(
    /// An event topic: 1 to 255 of `a-z 0-9 . _ -`, starting with a letter or digit
    /// (long enough for the dead-letter topic of any subscription, see
    /// [`Topic::dead_letters`]).
    Topic,
    |topic| {
        topic.len() <= 255
            && topic.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && topic
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    },
    "topic: use 1 to 255 lower-case letters, digits, '.', '_' and '-', starting with a letter or digit"
);

impl Topic {
    /// The dead-letter topic of `service`'s subscription to `topic`:
    /// `{topic}.dlq.{service}`. Always made of topic characters; a valid topic whenever
    /// `topic` is one of at most 128 characters.
    pub fn dead_letters(topic: &str, service: &str) -> String {
        format!("{topic}.dlq.{service}")
    }
}

checked_string!(
    /// A version label of a service, e.g. `0.1.0`: 1 to 64 of `A-Z a-z 0-9 . _ + -`.
    VersionLabel,
    |version| {
        !version.is_empty()
            && version.len() <= 64
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
    },
    "version label: use 1 to 64 letters, digits, '.', '_', '+' and '-'"
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn names_follow_their_rules() {
        for good in ["a", "order-2", &"x".repeat(63)] {
            assert!(good.parse::<ServiceName>().is_ok(), "{good}");
        }
        for bad in ["", "Order", "2order", "-x", "a_b", "a.b", &"x".repeat(64)] {
            let err = bad.parse::<ServiceName>().expect_err(bad).to_string();
            assert!(
                err.starts_with(&format!("{bad:?} is not a valid service name")),
                "{err}"
            );
        }
        for good in ["order.created", "7up", "a_b-c"] {
            assert!(good.parse::<Topic>().is_ok(), "{good}");
        }
        let longest = Topic::dead_letters(&"t".repeat(128), &"s".repeat(63));
        assert!(
            longest.parse::<Topic>().is_ok(),
            "every dead-letter topic is a topic"
        );
        for bad in ["", "Order", ".x", "a b", "a/b", &"x".repeat(256)] {
            let err = bad.parse::<Topic>().expect_err(bad).to_string();
            assert!(err.contains("is not a valid topic"), "{err}");
        }
        for good in ["0.1.0", "v2", "1.0.0-rc.1+build_7", "ABC"] {
            assert!(good.parse::<VersionLabel>().is_ok(), "{good}");
        }
        for bad in ["", "bad!label", "a b", "a/b", &"1".repeat(65)] {
            let err = bad.parse::<VersionLabel>().expect_err(bad).to_string();
            assert!(err.contains("is not a valid version label"), "{err}");
        }
    }

    #[test]
    fn they_read_write_and_look_up_as_strings() -> anyhow::Result<()> {
        let name: ServiceName = serde_json::from_str("\"order\"")?;
        assert_eq!(serde_json::to_string(&name)?, "\"order\"");
        assert_eq!(format!("{name} {name:?}"), "order \"order\"");
        assert_eq!(name, "order");
        let mut map = HashMap::new();
        map.insert(name.clone(), 1);
        assert_eq!(map.get("order"), Some(&1));
        assert!(serde_json::from_str::<Topic>("\"Not A Topic\"").is_err());
        assert_eq!(String::from(name), "order");
        Ok(())
    }
}
