//! The caller's values put in the order a translated statement's placeholders take them.

use std::borrow::Cow;

use super::Binds;
use crate::error::{Error, Result};
use crate::value::{Params, Value};

/// Orders the caller's values for the native placeholders: the caller's
/// own list when it is in order already (no copy), else a new one.
pub(crate) fn bind_ref<'a>(binds: &Binds, params: &'a Params) -> Result<Cow<'a, [Value]>> {
    match (binds, params) {
        (Binds::Native, Params::None) => Ok(Cow::Borrowed(&[])),
        (Binds::Native, Params::Positional(v)) => Ok(Cow::Borrowed(v)),
        (Binds::Native, Params::Named(_)) => Err(Error::parameter(
            "named parameters were given but the statement has no `:name` placeholder",
        )),
        (Binds::Positional(n), Params::Positional(v)) if v.len() == *n => Ok(Cow::Borrowed(v)),
        (Binds::Positional(n), Params::None) if *n == 0 => Ok(Cow::Borrowed(&[])),
        (Binds::Positional(n), Params::Positional(v)) => Err(Error::parameter(format!(
            "the statement has {n} `?` placeholder{} but {} value{} given",
            if *n == 1 { "" } else { "s" },
            v.len(),
            if v.len() == 1 { " was" } else { "s were" }
        ))),
        (Binds::Positional(n), Params::None) => Err(Error::parameter(format!(
            "the statement has {n} `?` placeholder{} but no values were given; \
             give them as a tuple, a Vec or params![a, b] (a `?` meant literally, \
             such as PostgreSQL's jsonb `?` operator, is written `??`)",
            if *n == 1 { "" } else { "s" },
        ))),
        (Binds::Positional(n), Params::Named(_)) => Err(Error::parameter(format!(
            "the statement has {n} `?` placeholder{}; give positional values (a tuple, a Vec \
             or params![a, b]), not names (a `?` meant literally is written `??`)",
            if *n == 1 { "" } else { "s" },
        ))),
        (Binds::Named(names), Params::Named(pairs)) => {
            let unused: Vec<&str> = pairs
                .iter()
                .filter(|(k, _)| !names.contains(k))
                .map(|(k, _)| k.as_str())
                .collect();
            let also_unused = || match unused.as_slice() {
                [] => String::new(),
                [one] => format!("; `{one}` was given but the statement does not use it"),
                many => format!(
                    "; {} were given but the statement does not use them",
                    many.iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            if let Some(missing) = names.iter().find(|n| !pairs.iter().any(|(k, _)| k == *n)) {
                return Err(Error::parameter(format!(
                    ":{missing} has no value (no value was given for `:{missing}`){}",
                    also_unused()
                )));
            }
            if let Some(unused) = unused.first() {
                return Err(Error::parameter(format!(
                    "parameter `{unused}` is not used by the statement (it uses {})",
                    list_names(names)
                )));
            }
            names
                .iter()
                .map(|name| {
                    pairs
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| {
                            Error::parameter(format!("no value was given for `:{name}`"))
                        })
                })
                .collect::<Result<Vec<_>>>()
                .map(Cow::Owned)
        }
        (Binds::Named(names), _) => Err(Error::parameter(format!(
            "the statement uses named placeholders ({}); give them with params! {{ … }} or a map",
            list_names(names)
        ))),
    }
}

/// The distinct names in first-use order, as `:a, :b`, for messages.
fn list_names(names: &[String]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for n in names {
        if !seen.contains(&n.as_str()) {
            seen.push(n);
        }
    }
    seen.iter()
        .map(|n| format!(":{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(binds: &Binds, params: Params) -> Result<Vec<Value>> {
        bind_ref(binds, &params).map(Cow::into_owned)
    }

    #[test]
    fn binding_checks_counts_and_names() {
        let v = |i: i64| Value::I64(i);
        assert_eq!(
            bind(&Binds::Positional(2), Params::Positional(vec![v(1), v(2)]))
                .unwrap()
                .len(),
            2
        );
        let e = bind(&Binds::Positional(2), Params::Positional(vec![v(1)])).unwrap_err();
        assert!(
            e.to_string()
                .contains("2 `?` placeholders but 1 value was given"),
            "{e}"
        );
        let names = Binds::Named(vec!["a".into(), "b".into(), "a".into()]);
        let got = bind(
            &names,
            Params::Named(vec![("b".into(), v(2)), ("a".into(), v(1))]),
        )
        .unwrap();
        assert_eq!(got, vec![v(1), v(2), v(1)]);
        let e = bind(&names, Params::Named(vec![("a".into(), v(1))])).unwrap_err();
        assert!(e.to_string().contains("no value was given for `:b`"), "{e}");
        let e = bind(
            &names,
            Params::Named(vec![
                ("a".into(), v(1)),
                ("b".into(), v(1)),
                ("c".into(), v(1)),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`c` is not used"), "{e}");
        assert!(bind(&Binds::Native, Params::Named(vec![("a".into(), v(1))])).is_err());

        // A misspelt name: the missing placeholder first, the unused name too.
        let e = bind(
            &Binds::Named(vec!["status".into()]),
            Params::Named(vec![("stat".into(), v(1))]),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(":status has no value"), "{msg}");
        assert!(msg.contains("`stat` was given"), "{msg}");

        // No values at all for `?`: not a complaint about names; `??` hinted.
        let e = bind(&Binds::Positional(1), Params::None).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains("not names"), "{msg}");
        assert!(msg.contains("no values were given"), "{msg}");
        assert!(msg.contains("`??`"), "{msg}");
        assert!(bind(&names, Params::Positional(vec![v(1)])).is_err());
    }
}
