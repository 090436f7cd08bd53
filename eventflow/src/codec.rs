//! Payload encoding: the [`Codec`] trait and its default, [`Json`].

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;

pub use erased_serde;

/// Turns events into payload bytes and back.
///
/// A codec works on type-erased serde values so that one bus can hold one codec for every
/// event type. The default is [`Json`]; a MessagePack or CBOR codec is a few lines on top of
/// its serde implementation:
///
/// ```
/// use eventflow::codec::{erased_serde, Codec, CodecError};
///
/// struct PrettyJson;
///
/// impl Codec for PrettyJson {
///     fn content_type(&self) -> &'static str {
///         "application/json"
///     }
///
///     fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
///         serde_json::to_vec_pretty(value).map_err(CodecError::new)
///     }
///
///     fn decode<'de>(
///         &self,
///         bytes: &'de [u8],
///         visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'de>) -> Result<(), erased_serde::Error>,
///     ) -> Result<(), CodecError> {
///         let mut de = serde_json::Deserializer::from_slice(bytes);
///         visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de)).map_err(CodecError::new)?;
///         de.end().map_err(CodecError::new)
///     }
/// }
/// ```
pub trait Codec: std::any::Any + Send + Sync {
    /// The MIME type written into every envelope this codec encodes.
    fn content_type(&self) -> &'static str;

    /// Encodes a value.
    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError>;

    /// Builds a deserializer over `bytes` and hands it to `visit`, which deserializes the
    /// event from it.
    fn decode<'de>(
        &self,
        bytes: &'de [u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'de>) -> Result<(), erased_serde::Error>,
    ) -> Result<(), CodecError>;
}

/// JSON through `serde_json`: the default codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl Codec for Json {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(128);
        serde_json::to_writer(&mut out, value).map_err(CodecError::new)?;
        Ok(out)
    }

    fn decode<'de>(
        &self,
        bytes: &'de [u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'de>) -> Result<(), erased_serde::Error>,
    ) -> Result<(), CodecError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de)).map_err(decode_error)?;
        de.end().map_err(CodecError::new)
    }
}

/// A JSON decoding error, with what a float read as `null` most likely was: JSON has no
/// NaN or infinity, and serde_json writes them as `null`, so the event was published
/// without an error and fails only here.
fn decode_error(error: impl std::error::Error + Send + Sync + 'static) -> CodecError {
    let said = error.to_string();
    match said.contains("invalid type: null, expected f64")
        || said.contains("invalid type: null, expected f32")
    {
        true => CodecError::new(format!(
            "{said} (JSON has no NaN or infinity: serde_json writes a non-finite float as `null`, \
             so a publisher that sent NaN or infinity sent `null`; keep such values out of events, \
             or make the field an `Option`)"
        )),
        false => CodecError::new(error),
    }
}

/// Encodes `value` with `codec`.
pub(crate) fn encode<T: serde::Serialize>(codec: &dyn Codec, value: &T) -> Result<Bytes, CodecError> {
    if !is_json(codec) {
        return codec.encode(value).map(Bytes::from);
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            scratch.clear();
            serde_json::to_writer(&mut *scratch, value).map_err(CodecError::new)?;
            Ok(take_encoding(&mut scratch))
        }
        // Only if a `Serialize` impl encodes an event itself: a buffer of its own.
        Err(_) => serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(CodecError::new),
    })
}

thread_local! {
    /// Where this thread's JSON encodings are written, reused from one to the next, so that
    /// each ends in a heap buffer of exactly its length: `Bytes` takes over a full `Vec` as
    /// it is, while a `Vec` with room to spare costs it a second allocation (its shared
    /// header), one more per published event.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(SCRATCH_KEPT));
}

/// The most a thread's scratch buffer keeps between encodings; a larger encoding takes the
/// buffer with it rather than being copied out.
const SCRATCH_KEPT: usize = 4096;

/// The encoding in `scratch`: copied out when small, the buffer itself when large.
fn take_encoding(scratch: &mut Vec<u8>) -> Bytes {
    match scratch.len() <= SCRATCH_KEPT {
        true => Bytes::copy_from_slice(scratch),
        false => Bytes::from(std::mem::replace(scratch, Vec::with_capacity(SCRATCH_KEPT))),
    }
}

/// Decodes a `T` from `bytes` with `codec`.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    codec: &dyn Codec,
    bytes: &[u8],
) -> Result<T, CodecError> {
    if is_json(codec) {
        return serde_json::from_slice(bytes).map_err(decode_error);
    }
    let mut out = None;
    codec.decode(bytes, &mut |de| {
        out = Some(erased_serde::deserialize::<T>(de)?);
        Ok(())
    })?;
    out.ok_or_else(|| CodecError::new("the codec did not deserialize a value"))
}

/// Checks that `payload` is well-formed for `content_type`, where eventflow knows the
/// format (JSON); other content types pass, and their consumers' decoding judges them.
pub(crate) fn check_payload(content_type: &str, payload: &[u8]) -> Result<(), CodecError> {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        serde_json::from_slice::<serde::de::IgnoredAny>(payload).map_err(CodecError::new)?;
    }
    Ok(())
}

/// Whether `codec` is the default [`Json`]: its work is then done by the typed serde_json
/// functions, without the type erasure that costs ~3.5x per decode.
fn is_json(codec: &dyn Codec) -> bool {
    (codec as &dyn std::any::Any).is::<Json>()
}

/// A payload that could not be encoded or decoded.
#[derive(Debug)]
pub struct CodecError(Box<dyn std::error::Error + Send + Sync>);

impl CodecError {
    /// Wraps the codec's own error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        CodecError(error.into())
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_encodings_come_out_whole() {
        // Around the scratch buffer's limit (a JSON string is its length + 2 quotes), and a
        // small one after a large one took the buffer.
        let limit = SCRATCH_KEPT - 2;
        for len in [
            0,
            10,
            511,
            limit - 1,
            limit,
            limit + 1,
            2_000_000,
            3,
            limit + 1,
            7,
        ] {
            let value = "x".repeat(len);
            let encoded = encode(&Json, &value).unwrap();
            assert_eq!(encoded, serde_json::to_vec(&value).unwrap(), "{len}");
        }
    }

    #[test]
    fn the_scratch_buffer_keeps_room_for_small_encodings_only() {
        let capacity = || SCRATCH.with_borrow(Vec::capacity);
        encode(&Json, &"x".repeat(100)).unwrap();
        assert!(
            capacity() >= SCRATCH_KEPT,
            "a small encoding leaves the buffer's room"
        );
        let large = encode(&Json, &"x".repeat(1_000_000)).unwrap();
        assert_eq!(large.len(), 1_000_002);
        assert_eq!(
            capacity(),
            SCRATCH_KEPT,
            "a large encoding takes its buffer along"
        );
    }

    /// A codec other than `Json`, to check that only `Json` takes the fast path.
    struct Pretty;

    impl Codec for Pretty {
        fn content_type(&self) -> &'static str {
            "application/json"
        }

        fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
            serde_json::to_vec_pretty(value).map_err(CodecError::new)
        }

        fn decode<'de>(
            &self,
            bytes: &'de [u8],
            visit: &mut dyn FnMut(
                &mut dyn erased_serde::Deserializer<'de>,
            ) -> Result<(), erased_serde::Error>,
        ) -> Result<(), CodecError> {
            Json.decode(bytes, visit)
        }
    }

    #[test]
    fn json_and_other_codecs_agree() {
        let value = serde_json::json!({"order_id": "XYZ-123", "total": 42});
        let fast = encode(&Json, &value).unwrap();
        assert_eq!(&fast[..], br#"{"order_id":"XYZ-123","total":42}"#);
        let erased = encode(&Pretty, &value).unwrap();
        assert!(erased.contains(&b'\n'), "a custom codec was bypassed");
        assert_eq!(decode::<serde_json::Value>(&Json, &fast).unwrap(), value);
        assert_eq!(decode::<serde_json::Value>(&Pretty, &erased).unwrap(), value);
        assert!(decode::<serde_json::Value>(&Json, b"{not json").is_err());
    }
}
