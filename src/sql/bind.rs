//! The caller's values put in the order a translated statement's placeholders take them.

use super::Binds;
use crate::error::{Error, Result};
use crate::value::{Params, Value};

/// Orders the caller's values for the native placeholders.
pub(crate) fn bind(binds: &Binds, params: Params) -> Result<Vec<Value>> {
    match (binds, params) {
        (Binds::Native, Params::None) => Ok(Vec::new()),
        (Binds::Native, Params::Positional(v)) => Ok(v),
        (Binds::Native, Params::Named(_)) => Err(Error::parameter(
            "named parameters were given but the statement has no `:name` placeholder",
        )),
        (Binds::Positional(n), Params::Positional(v)) if v.len() == *n => Ok(v),
        (Binds::Positional(n), Params::None) if *n == 0 => Ok(Vec::new()),
        (Binds::Positional(n), Params::Positional(v)) => Err(Error::parameter(format!(
            "the statement has {n} `?` placeholder{} but {} value{} given",
            if *n == 1 { "" } else { "s" },
            v.len(),
            if v.len() == 1 { " was" } else { "s were" }
        ))),
        (Binds::Positional(n), _) => Err(Error::parameter(format!(
            "the statement has {n} `?` placeholders; give positional values (a tuple or a Vec), not names"
        ))),
        (Binds::Named(names), Params::Named(pairs)) => {
            if let Some((unused, _)) = pairs.iter().find(|(k, _)| !names.contains(k)) {
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
                .collect()
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
        assert!(bind(&names, Params::Positional(vec![v(1)])).is_err());
    }
}
