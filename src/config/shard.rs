//! Shard rules: which of N shard databases a key belongs to. Plain logic;
//! the shards themselves are ordinary managers (see `Shards`).

use crate::error::{Error, Result};

/// How a key picks its shard among N.
///
/// - `hash` (the default): CRC-32 (IEEE, as zlib and `crc32fast` compute
///   it) of the key's bytes, modulo N. An integer key hashes as its decimal
///   text, so `42` and `"42"` land on the same shard. The rule is stable
///   across processes, versions and machines; changing N moves most keys.
/// - `range:B1,B2,…`: integer keys; a key below `B1` goes to the first
///   shard, below `B2` to the second, and so on; the last shard takes the
///   rest. N shards need N−1 increasing bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardRule {
    /// CRC-32 of the key's bytes, modulo the number of shards.
    Hash,
    /// Increasing upper bounds (exclusive) of every shard but the last.
    Range(Vec<i64>),
}

/// A shard key: an integer or text (or bytes, hashed as they are).
#[derive(Clone, Copy, Debug)]
pub enum ShardKey<'a> {
    /// An integer key: hashed as its decimal text; compared for ranges.
    Int(i64),
    /// A text key: hashed as its UTF-8 bytes.
    Text(&'a str),
    /// A binary key: hashed as it is.
    Bytes(&'a [u8]),
}

impl From<i64> for ShardKey<'_> {
    fn from(v: i64) -> Self {
        ShardKey::Int(v)
    }
}
impl From<i32> for ShardKey<'_> {
    fn from(v: i32) -> Self {
        ShardKey::Int(v.into())
    }
}
impl From<u32> for ShardKey<'_> {
    fn from(v: u32) -> Self {
        ShardKey::Int(v.into())
    }
}
impl<'a> From<&'a str> for ShardKey<'a> {
    fn from(v: &'a str) -> Self {
        ShardKey::Text(v)
    }
}
impl<'a> From<&'a String> for ShardKey<'a> {
    fn from(v: &'a String) -> Self {
        ShardKey::Text(v)
    }
}
impl<'a> From<&'a [u8]> for ShardKey<'a> {
    fn from(v: &'a [u8]) -> Self {
        ShardKey::Bytes(v)
    }
}

impl ShardRule {
    /// Parses `hash` or `range:B1,B2,…` (the value of `var`, for messages),
    /// checking it against `shards` shard databases.
    ///
    /// # Errors
    ///
    /// [`Config`](crate::ErrorKind::Config) saying what is wrong and what
    /// to write instead.
    pub fn parse(text: &str, shards: usize, var: &str) -> Result<ShardRule> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("hash") || t.is_empty() {
            return Ok(ShardRule::Hash);
        }
        let usage =
            "use `hash` or `range:B1,B2,…` (integer bounds, increasing, one fewer than the shards)";
        let Some(bounds) = t
            .strip_prefix("range:")
            .or_else(|| t.strip_prefix("RANGE:"))
        else {
            return Err(Error::config(format!(
                "{var} = `{t}` is not a shard rule; {usage}"
            )));
        };
        let mut out = Vec::new();
        for b in bounds.split(',') {
            let v: i64 = b.trim().parse().map_err(|_| {
                Error::config(format!(
                    "{var} = `{t}`: `{}` is not an integer bound; {usage}",
                    b.trim()
                ))
            })?;
            if out.last().is_some_and(|&last| v <= last) {
                return Err(Error::config(format!(
                    "{var} = `{t}`: the bounds must increase; {usage}"
                )));
            }
            out.push(v);
        }
        if out.len() + 1 != shards {
            return Err(Error::config(format!(
                "{var} = `{t}` has {} bounds for {shards} shards; {usage}",
                out.len()
            )));
        }
        Ok(ShardRule::Range(out))
    }

    /// The index of `key`'s shard among `n`.
    ///
    /// # Errors
    ///
    /// [`Parameter`](crate::ErrorKind::Parameter) for a text or binary key
    /// under a range rule.
    pub fn shard_of(&self, key: ShardKey<'_>, n: usize) -> Result<usize> {
        match self {
            ShardRule::Hash => {
                let crc = match key {
                    ShardKey::Int(v) => crc32fast::hash(v.to_string().as_bytes()),
                    ShardKey::Text(s) => crc32fast::hash(s.as_bytes()),
                    ShardKey::Bytes(b) => crc32fast::hash(b),
                };
                Ok(crc as usize % n.max(1))
            }
            ShardRule::Range(bounds) => match key {
                ShardKey::Int(v) => Ok(bounds.iter().position(|&b| v < b).unwrap_or(bounds.len())),
                _ => Err(Error::parameter(
                    "a range shard rule takes integer keys; use the hash rule for text keys",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_crc32_of_the_key_bytes() {
        let r = ShardRule::Hash;
        assert_eq!(
            r.shard_of("42".into(), 4).unwrap(),
            crc32fast::hash(b"42") as usize % 4
        );
        assert_eq!(
            r.shard_of(42i64.into(), 4).unwrap(),
            r.shard_of("42".into(), 4).unwrap()
        );
        // Stable: a known value (crc32("customer-1") = 0x…).
        let a = r.shard_of("customer-1".into(), 2).unwrap();
        assert_eq!(a, r.shard_of("customer-1".into(), 2).unwrap());
    }

    #[test]
    fn ranges_route_by_bound() {
        let r = ShardRule::parse("range:100,200", 3, "X").unwrap();
        assert_eq!(r.shard_of(5i64.into(), 3).unwrap(), 0);
        assert_eq!(r.shard_of(100i64.into(), 3).unwrap(), 1);
        assert_eq!(r.shard_of(1000i64.into(), 3).unwrap(), 2);
        assert!(r.shard_of("a".into(), 3).is_err());
    }

    #[test]
    fn bad_rules_say_what_to_write() {
        for (bad, shards) in [
            ("modulo", 2),
            ("range:5,1", 3),
            ("range:a", 2),
            ("range:1", 3),
        ] {
            let e = ShardRule::parse(bad, shards, "DEV_GLOBAL_X_SHARD_RULE").unwrap_err();
            let m = e.to_string();
            assert!(m.contains("DEV_GLOBAL_X_SHARD_RULE"), "{m}");
            assert!(m.contains("hash"), "{m}");
        }
    }
}
