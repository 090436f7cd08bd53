//! Reads and checks `#[event(...)]` attributes.

use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;

use crate::attr::{path_text, skip_value, Errors, Once};

pub struct EventInput {
    pub krate: syn::Path,
    pub name: Option<String>,
    pub version: u32,
    pub topic: Option<String>,
    pub key: Key,
    pub ident_span: Span,
    pub upcast: Option<Upcast>,
}

/// `upcast(from = OldType, v1 = function, ...)`: how older versions become this one.
pub struct Upcast {
    /// The type of an older version, converted with `From`.
    pub from: Option<syn::Type>,
    /// JSON upcasters, `(version they read, function)`, checked against the event's version.
    pub json: Vec<(u32, syn::Path)>,
}

/// The partition key field: of the struct, or of each enum variant.
pub enum Key {
    Struct(Option<KeyField>),
    Enum(Vec<(syn::Ident, Option<KeyField>)>),
}

/// The field marked `#[event(key)]`, and its type, on which a missing `Display` is reported.
pub struct KeyField {
    pub member: syn::Member,
    pub ty: Box<syn::Type>,
}

impl EventInput {
    pub fn parse(input: &syn::DeriveInput) -> (Self, Option<TokenStream>) {
        let errors = Errors::default();
        let mut krate = Once::new("crate");
        let mut name = Once::new("name");
        let mut version = Once::new("version");
        let mut topic = Once::new("topic");
        let mut upcast = Once::new("upcast");
        let mut upcast_at = None;
        for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
            let parsed = attr.parse_nested_meta(|meta| {
                let path = meta.path.clone();
                if path.is_ident("name") {
                    let lit: syn::LitStr = meta.value()?.parse()?;
                    check_name(&errors, &lit, "name");
                    name.set(&errors, &path, lit.value());
                } else if path.is_ident("version") {
                    let lit: syn::LitInt = meta.value()?.parse()?;
                    match lit.base10_parse::<u32>() {
                        Ok(0) => errors.spanned(&lit, "event versions start at 1: use `version = 1`"),
                        Ok(v) => version.set(&errors, &path, v),
                        Err(e) => errors.push(e),
                    }
                } else if path.is_ident("topic") {
                    let lit: syn::LitStr = meta.value()?.parse()?;
                    check_name(&errors, &lit, "topic");
                    topic.set(&errors, &path, lit.value());
                } else if path.is_ident("crate") {
                    let lit: syn::LitStr = meta.value()?.parse()?;
                    krate.set(&errors, &path, lit.parse::<syn::Path>()?);
                } else if path.is_ident("upcast") {
                    let parsed = parse_upcast(&errors, &meta)?;
                    upcast_at = Some(path.clone());
                    upcast.set(&errors, &path, parsed);
                } else if path.is_ident("key") {
                    errors.spanned(&path, "`key` goes on a field: `#[event(key)] order_id: String`");
                } else {
                    errors.spanned(
                        &path,
                        format_args!(
                            "unknown event attribute `{}`; expected `name`, `version`, `topic`, `upcast` or `crate`",
                            path_text(&path)
                        ),
                    );
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(error) = parsed {
                errors.push(error);
            }
        }

        let key = match &input.data {
            syn::Data::Struct(data) => Key::Struct(key_field(&errors, &data.fields)),
            syn::Data::Enum(data) => Key::Enum(
                data.variants
                    .iter()
                    .map(|v| {
                        reject_event_attrs(&errors, &v.attrs, "an enum variant");
                        (v.ident.clone(), key_field(&errors, &v.fields))
                    })
                    .collect(),
            ),
            syn::Data::Union(data) => {
                errors.spanned(
                    data.union_token,
                    "`Event` cannot be derived for unions; use a struct or an enum",
                );
                Key::Struct(None)
            }
        };

        let version = version.get().unwrap_or(1);
        let upcast = upcast.get();
        if let (Some(upcast), Some(at)) = (&upcast, &upcast_at) {
            check_upcast(&errors, upcast, at, version);
        }
        let parsed = EventInput {
            krate: krate.get().unwrap_or_else(|| syn::parse_quote!(::eventflow)),
            name: name.get(),
            version,
            upcast,
            topic: topic.get(),
            key,
            ident_span: input.ident.span(),
        };
        (parsed, errors.finish())
    }
}

/// Finds the one field marked `#[event(key)]`.
fn key_field(errors: &Errors, fields: &syn::Fields) -> Option<KeyField> {
    let mut key: Option<KeyField> = None;
    for (index, field) in fields.iter().enumerate() {
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("event")) {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("key") {
                    if key.is_some() {
                        errors.spanned(&meta.path, "only one field can be the partition key; remove `#[event(key)]` from all but one");
                    } else {
                        let member = match &field.ident {
                            Some(ident) => syn::Member::Named(ident.clone()),
                            None => syn::Member::Unnamed(syn::Index { index: index as u32, span: field.span() }),
                        };
                        key = Some(KeyField { member, ty: Box::new(field.ty.clone()) });
                    }
                } else {
                    errors.spanned(
                        &meta.path,
                        format_args!("unknown field attribute `{}`; expected `key`", path_text(&meta.path)),
                    );
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(error) = parsed {
                errors.push(error);
            }
        }
    }
    key
}

fn reject_event_attrs(errors: &Errors, attrs: &[syn::Attribute], what: &str) {
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        errors.spanned(attr, format_args!("`#[event(...)]` has no options on {what}"));
    }
}

/// Names and topics travel to brokers: keep them to characters every broker accepts.
fn check_name(errors: &Errors, lit: &syn::LitStr, what: &str) {
    let value = lit.value();
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.is_empty() || value.len() > 249 || !value.chars().all(valid) {
        errors.spanned(
            lit,
            format_args!(
                "invalid event {what} {value:?}: use 1 to 249 ASCII letters, digits, '.', '_' or '-'"
            ),
        );
    }
}

/// Reads `upcast(from = OldType, v1 = function, ...)`.
fn parse_upcast(errors: &Errors, meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Upcast> {
    let mut from = Once::new("from");
    let mut json: Vec<(u32, syn::Path)> = Vec::new();
    if !meta.input.peek(syn::token::Paren) {
        errors.spanned(
            &meta.path,
            "`upcast` lists how older versions become this one: `upcast(from = OldType)` or `upcast(v1 = function)`",
        );
        return skip_value(meta).map(|()| Upcast { from: None, json });
    }
    meta.parse_nested_meta(|inner| {
        let path = &inner.path;
        if path.is_ident("from") {
            let ty: syn::Type = inner.value()?.parse()?;
            from.set(errors, path, ty);
        } else if let Some(version) = json_version(path) {
            let function: syn::Path = inner.value()?.parse()?;
            match version {
                Ok(version) if json.iter().any(|(v, _)| *v == version) => {
                    errors.spanned(path, format_args!("duplicate `v{version}` upcaster"))
                }
                Ok(version) => json.push((version, function)),
                Err(message) => errors.spanned(path, message),
            }
        } else {
            errors.spanned(
                path,
                format_args!(
                    "unknown upcast option `{}`; expected `from = OldType` or `v1 = function` (a version and a `fn(serde_json::Value) -> Result<serde_json::Value, String>`)",
                    path_text(path)
                ),
            );
            skip_value(&inner)?;
        }
        Ok(())
    })?;
    Ok(Upcast {
        from: from.get(),
        json,
    })
}

/// `Some(Ok(n))` for `vN` with N a number, `Some(Err(..))` for `v0`, `None` for other names.
fn json_version(path: &syn::Path) -> Option<Result<u32, String>> {
    let ident = path.get_ident()?.to_string();
    let digits = ident.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match digits.parse::<u32>() {
        Ok(0) => Err("event versions start at 1: the first upcaster is `v1`".to_owned()),
        Ok(version) => Ok(version),
        Err(_) => Err(format!("`{ident}` is not a version this event can have")),
    })
}

/// Upcasters are for versions older than the event's own.
fn check_upcast(errors: &Errors, upcast: &Upcast, at: &syn::Path, version: u32) {
    if upcast.from.is_none() && upcast.json.is_empty() {
        errors.spanned(
            at,
            "`upcast()` declares nothing: add `from = OldType` or `v1 = function`",
        );
    }
    if version == 1 {
        errors.spanned(
            at,
            "this event is at version 1, so there is nothing older to upcast: set `version = 2` (or higher) when the schema changes",
        );
        return;
    }
    for (from, function) in &upcast.json {
        if *from >= version {
            errors.spanned(
                function,
                format_args!(
                    "`v{from}` would upcast v{from} to v{}, but this event is at version {version}: \
                     upcasters are for older versions, v1 to v{}",
                    from + 1,
                    version - 1
                ),
            );
        }
    }
}
