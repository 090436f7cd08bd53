//! [`Headers`], the free-form text headers of an [`Envelope`](crate::Envelope), and
//! its iterators.

use std::borrow::Cow;
use std::fmt;
use std::ops::Index;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The free-form headers of an envelope: names mapped to text values, unique names, kept
/// in name order (as a `BTreeMap` would be).
///
/// An envelope carries a handful of them (`traceparent`, perhaps a tenant or a
/// `baggage`), so they are a sorted list: one small allocation per envelope, where a
/// `BTreeMap` allocates a node of room for eleven, built and freed for every event
/// published and every record read. The names of the W3C trace headers (`traceparent`,
/// `tracestate`, `baggage`), which nearly every envelope carries, are not copied.
///
/// ```
/// use eventflow::Headers;
///
/// let mut headers = Headers::new();
/// headers.insert("tenant", "acme");
/// headers.insert("baggage", "region=eu");
/// assert_eq!(headers.get("tenant"), Some("acme"));
/// assert_eq!(headers["baggage"], *"region=eu");
/// // In name order, whatever the order of insertion.
/// let names: Vec<&str> = headers.iter().map(|(name, _)| name).collect();
/// assert_eq!(names, ["baggage", "tenant"]);
/// assert_eq!(headers.insert("tenant", "globex"), Some("acme".to_owned()));
/// assert_eq!(headers.remove("baggage"), Some("region=eu".to_owned()));
/// assert_eq!(headers.len(), 1);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers(Vec<(Cow<'static, str>, String)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    /// One header, in a list of room for just it: what every new envelope starts with.
    pub(crate) fn one(name: &'static str, value: impl Into<String>) -> Self {
        Headers(vec![(Cow::Borrowed(name), value.into())])
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(held, _)| (**held).cmp(name))
    }

    /// The value of header `name`, if the envelope has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        let at = self.position(name).ok()?;
        Some(&self.0[at].1)
    }

    /// Whether the envelope has header `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets header `name` to `value`; returns the value it replaced, if it had one.
    pub fn insert(
        &mut self,
        name: impl Into<String> + AsRef<str>,
        value: impl Into<String>,
    ) -> Option<String> {
        match self.position(name.as_ref()) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, value.into())),
            Err(at) => {
                let name = match well_known(name.as_ref()) {
                    Some(known) => Cow::Borrowed(known),
                    None => Cow::Owned(name.into()),
                };
                self.0.insert(at, (name, value.into()));
                None
            }
        }
    }

    /// Removes header `name`; returns its value, if it had one.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let at = self.position(name).ok()?;
        Some(self.0.remove(at).1)
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes every header.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The headers as `(name, value)`, in name order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.0.iter())
    }
}

/// The headers of [`Headers::iter`], as `(name, value)` in name order.
#[derive(Clone, Debug)]
pub struct Iter<'a>(std::slice::Iter<'a, (Cow<'static, str>, String)>);

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(name, value)| (&**name, value.as_str()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Headers {
    type Item = (String, String);
    type IntoIter = IntoIter;

    /// The headers as `(name, value)`, in name order.
    fn into_iter(self) -> IntoIter {
        IntoIter(self.0.into_iter())
    }
}

/// The headers of a [`Headers`] taken apart, as `(name, value)` in name order.
#[derive(Debug)]
pub struct IntoIter(std::vec::IntoIter<(Cow<'static, str>, String)>);

impl Iterator for IntoIter {
    type Item = (String, String);

    fn next(&mut self) -> Option<(String, String)> {
        self.0.next().map(|(name, value)| (name.into_owned(), value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for IntoIter {}

/// The header names written as `'static` text rather than copied: the W3C trace context.
fn well_known(name: &str) -> Option<&'static str> {
    match name {
        crate::TRACEPARENT => Some(crate::TRACEPARENT),
        "tracestate" => Some("tracestate"),
        "baggage" => Some("baggage"),
        _ => None,
    }
}

impl<N: Into<String> + AsRef<str>, V: Into<String>> Extend<(N, V)> for Headers {
    /// Inserts each header; a later one of the same name replaces an earlier one.
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, headers: I) {
        for (name, value) in headers {
            self.insert(name, value);
        }
    }
}

impl<N: Into<String> + AsRef<str>, V: Into<String>> FromIterator<(N, V)> for Headers {
    /// The headers, a later one of a name replacing an earlier one.
    fn from_iter<I: IntoIterator<Item = (N, V)>>(headers: I) -> Self {
        let mut out = Headers::new();
        out.extend(headers);
        out
    }
}

impl Index<&str> for Headers {
    type Output = str;

    /// The value of header `name`.
    ///
    /// # Panics
    ///
    /// If there is no header `name`; [`Headers::get`] does not panic.
    fn index(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| panic!("the envelope has no header `{name}`"))
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A map of names to values, as a `BTreeMap<String, String>` is written.
impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (name, value) in self {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A map of names to text values; of a name written twice, the last value is kept.
impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;

        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header names to text values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Headers, A::Error> {
                let mut headers = Headers(Vec::with_capacity(access.size_hint().unwrap_or(0).min(64)));
                while let Some((name, value)) = access.next_entry::<String, String>()? {
                    headers.insert(name, value);
                }
                Ok(headers)
            }
        }

        deserializer.deserialize_map(HeadersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_names_unique_and_in_order() {
        let headers: Headers = [("b", "2"), ("a", "1"), ("c", "3"), ("a", "one")]
            .into_iter()
            .collect();
        let all: Vec<(&str, &str)> = headers.iter().collect();
        assert_eq!(all, [("a", "one"), ("b", "2"), ("c", "3")]);
        assert!(headers.contains_key("c"));
        assert!(!headers.contains_key("d"));
        assert_eq!(headers.get("d"), None);
    }

    #[test]
    fn reads_back_what_it_writes_as_a_map() {
        let headers: Headers = [("traceparent", "00-ab-cd-01"), ("tenant", "acme")]
            .into_iter()
            .collect();
        let json = serde_json::to_string(&headers).unwrap();
        assert_eq!(json, r#"{"tenant":"acme","traceparent":"00-ab-cd-01"}"#);
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), headers);
        // What a `BTreeMap<String, String>` wrote, and a map in any order, read the same.
        let unordered: Headers =
            serde_json::from_str(r#"{"traceparent":"00-ab-cd-01","tenant":"acme"}"#).unwrap();
        assert_eq!(unordered, headers);
        assert!(serde_json::from_str::<Headers>(r#"{"tenant":1}"#).is_err());
    }

    #[test]
    #[should_panic(expected = "no header `missing`")]
    fn indexing_a_missing_header_names_it() {
        let _ = &Headers::new()["missing"];
    }
}
