//! [`Headers`], the free-form text headers of an [`Envelope`](crate::Envelope), and
//! its iterators.

use std::borrow::Cow;
use std::fmt;
use std::ops::Index;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The header that carries W3C trace context (`traceparent`) from publisher to handlers.
pub const TRACEPARENT: &str = "traceparent";

/// The free-form headers of an envelope: names mapped to text values, unique names, kept
/// in name order (as a `BTreeMap` would be).
///
/// An envelope carries a handful of them (`traceparent`, perhaps a tenant or a
/// `baggage`), so they are a sorted list, where a `BTreeMap` allocates a node of room for
/// eleven, built and freed for every event published and every record read. Most
/// envelopes carry one header, the `traceparent` eventflow writes: a single header is kept
/// in place, and so is a value of up to 55 bytes (a W3C `traceparent`'s length), so such
/// an envelope's headers allocate nothing. The names of the W3C trace headers (`traceparent`, `tracestate`,
/// `baggage`) are not copied.
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
#[derive(Clone, Default)]
pub struct Headers(Entries);

/// The entries, in name order: none and one without a vector.
#[derive(Clone, Default)]
enum Entries {
    #[default]
    None,
    One(Entry),
    Many(Vec<Entry>),
}

#[derive(Clone)]
struct Entry {
    name: Cow<'static, str>,
    value: Value,
}

/// A header's value: in place when it is short, else a `String`.
#[derive(Clone)]
enum Value {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(String),
}

/// The longest value kept in place: a W3C `traceparent` (`00-{32}-{16}-01`).
const INLINE: usize = 55;

impl Value {
    /// `text` in place if it fits, else copied into a `String`.
    fn copied(text: &str) -> Value {
        match text.len() <= INLINE {
            true => {
                let mut bytes = [0; INLINE];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Value::Inline {
                    len: text.len() as u8,
                    bytes,
                }
            }
            false => Value::Heap(text.to_owned()),
        }
    }

    /// `text` in place if it fits, else the `String` it converts into (not a copy of it).
    fn new(text: impl Into<String> + AsRef<str>) -> Value {
        match text.as_ref().len() <= INLINE {
            true => Value::copied(text.as_ref()),
            false => Value::Heap(text.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Only ever copied from a `str`, whole: valid UTF-8 (checked again without
            // `unsafe`, a few instructions for 55 bytes).
            Value::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).expect("copied from a str")
            }
            Value::Heap(text) => text,
        }
    }

    fn into_string(self) -> String {
        match self {
            Value::Inline { .. } => self.as_str().to_owned(),
            Value::Heap(text) => text,
        }
    }
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(Entries::None)
    }

    /// One header, whose value is kept in place if it fits: the envelope's `traceparent`.
    pub(crate) fn one(name: &'static str, value: &str) -> Self {
        let mut headers = Headers::new();
        headers.set(name, value);
        headers
    }

    /// Sets a header eventflow writes itself (a `traceparent`), its value kept in place if
    /// it fits.
    pub(crate) fn set(&mut self, name: &'static str, value: &str) {
        self.put(Cow::Borrowed(name), Value::copied(value));
    }

    fn entries(&self) -> &[Entry] {
        match &self.0 {
            Entries::None => &[],
            Entries::One(entry) => std::slice::from_ref(entry),
            Entries::Many(entries) => entries,
        }
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.entries().binary_search_by(|entry| (*entry.name).cmp(name))
    }

    /// Sets `name` to `value`; the value it replaces, if any.
    fn put(&mut self, name: Cow<'static, str>, value: Value) -> Option<Value> {
        let at = match self.position(&name) {
            Ok(at) => {
                let entry = match &mut self.0 {
                    Entries::One(entry) => entry,
                    Entries::Many(entries) => &mut entries[at],
                    Entries::None => unreachable!("a header was found"),
                };
                return Some(std::mem::replace(&mut entry.value, value));
            }
            Err(at) => at,
        };
        let entry = Entry { name, value };
        self.0 = match std::mem::take(&mut self.0) {
            Entries::None => Entries::One(entry),
            Entries::One(first) => Entries::Many(match at {
                0 => vec![entry, first],
                _ => vec![first, entry],
            }),
            Entries::Many(mut entries) => {
                entries.insert(at, entry);
                Entries::Many(entries)
            }
        };
        None
    }

    /// The value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let at = self.position(name).ok()?;
        Some(self.entries()[at].value.as_str())
    }

    /// Whether there is a header `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets header `name` to `value`; returns the value it replaced, if any. A value of up
    /// to 55 bytes is kept in place: given as a `&str`, it costs no allocation.
    pub fn insert(
        &mut self,
        name: impl Into<String> + AsRef<str>,
        value: impl Into<String> + AsRef<str>,
    ) -> Option<String> {
        let name = match well_known(name.as_ref()) {
            Some(known) => Cow::Borrowed(known),
            None => Cow::Owned(name.into()),
        };
        self.put(name, Value::new(value)).map(Value::into_string)
    }

    /// Removes header `name`; returns its value, if it had one.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let at = self.position(name).ok()?;
        let removed = match std::mem::take(&mut self.0) {
            Entries::One(entry) => entry,
            Entries::Many(mut entries) => {
                let removed = entries.remove(at);
                self.0 = Entries::Many(entries);
                removed
            }
            Entries::None => unreachable!("a header was found"),
        };
        Some(removed.value.into_string())
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Removes every header.
    pub fn clear(&mut self) {
        self.0 = Entries::None;
    }

    /// The headers as `(name, value)` pairs, in name order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.entries().iter())
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl std::hash::Hash for Headers {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.len().hash(state);
        for pair in self {
            pair.hash(state);
        }
    }
}

/// The headers of [`Headers::iter`]: `(name, value)` pairs, in name order.
#[derive(Clone, Debug)]
pub struct Iter<'a>(std::slice::Iter<'a, Entry>);

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|entry| (&*entry.name, entry.value.as_str()))
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

    fn into_iter(self) -> IntoIter {
        let (first, rest) = match self.0 {
            Entries::None => (None, Vec::new()),
            Entries::One(entry) => (Some(entry), Vec::new()),
            Entries::Many(entries) => (None, entries),
        };
        IntoIter {
            first,
            rest: rest.into_iter(),
        }
    }
}

/// The headers of `Headers::into_iter`: owned `(name, value)` pairs, in name order.
#[derive(Debug)]
pub struct IntoIter {
    first: Option<Entry>,
    rest: std::vec::IntoIter<Entry>,
}

impl Iterator for IntoIter {
    type Item = (String, String);

    fn next(&mut self) -> Option<(String, String)> {
        let entry = self.first.take().or_else(|| self.rest.next())?;
        Some((entry.name.into_owned(), entry.value.into_string()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = self.first.is_some() as usize + self.rest.len();
        (len, Some(len))
    }
}

impl ExactSizeIterator for IntoIter {}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Entry")
            .field(&self.name)
            .field(&self.value.as_str())
            .finish()
    }
}

fn well_known(name: &str) -> Option<&'static str> {
    match name {
        TRACEPARENT => Some(TRACEPARENT),
        "tracestate" => Some("tracestate"),
        "baggage" => Some("baggage"),
        _ => None,
    }
}

impl<N: Into<String> + AsRef<str>, V: Into<String> + AsRef<str>> Extend<(N, V)> for Headers {
    /// Inserts each header; a later one of the same name replaces an earlier one.
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, headers: I) {
        for (name, value) in headers {
            self.insert(name, value);
        }
    }
}

impl<N: Into<String> + AsRef<str>, V: Into<String> + AsRef<str>> FromIterator<(N, V)> for Headers {
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
                let mut headers = Headers::new();
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
    fn one_header_in_place_grows_into_a_list_and_back() {
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = Headers::one(TRACEPARENT, traceparent);
        assert_eq!(headers.get("traceparent"), Some(traceparent));
        // A value kept in place equals the same value in a `String`.
        let inserted: Headers = [("traceparent", traceparent)].into_iter().collect();
        assert_eq!(headers, inserted);
        // Before and after the one header, in name order.
        headers.insert("a", "1");
        headers.insert("z", "26");
        let all: Vec<(&str, &str)> = headers.iter().collect();
        assert_eq!(all, [("a", "1"), ("traceparent", traceparent), ("z", "26")]);
        // Multi-byte text up to the limit is kept whole; one byte more goes to a `String`.
        let fits = format!("{}a", "é".repeat(27));
        assert_eq!(fits.len(), INLINE);
        headers.insert("é", fits.as_str());
        assert_eq!(headers.get("é"), Some(fits.as_str()));
        let over = format!("{fits}ü");
        headers.insert("é", over.as_str());
        assert_eq!(headers.get("é"), Some(over.as_str()));
        assert_eq!(headers.remove("é"), Some(over));
        // A value too long to keep in place.
        let long = "x".repeat(INLINE + 1);
        headers.set(TRACEPARENT, &long);
        assert_eq!(headers.get("traceparent"), Some(long.as_str()));
        assert_eq!(headers.remove("a"), Some("1".to_owned()));
        assert_eq!(headers.remove("traceparent"), Some(long));
        assert_eq!(headers.len(), 1);
        let owned: Vec<(String, String)> = headers.clone().into_iter().collect();
        assert_eq!(owned, [("z".to_owned(), "26".to_owned())]);
        assert_eq!(headers.remove("z"), Some("26".to_owned()));
        assert!(headers.is_empty());
        assert_eq!(headers.remove("z"), None);
        // From one header to none and back.
        let mut one = Headers::one(TRACEPARENT, traceparent);
        assert_eq!(one.insert("traceparent", "other"), Some(traceparent.to_owned()));
        assert_eq!(one.remove("traceparent"), Some("other".to_owned()));
        assert_eq!(one, Headers::new());
        one.insert("b", "2");
        assert_eq!(one.into_iter().len(), 1);
    }

    #[test]
    #[should_panic(expected = "no header `missing`")]
    fn indexing_a_missing_header_names_it() {
        let _ = &Headers::new()["missing"];
    }
}
