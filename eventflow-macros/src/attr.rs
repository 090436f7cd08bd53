//! Shared parsing helpers: collect every error instead of stopping at the first.

use proc_macro2::TokenStream;
use quote::ToTokens;
use std::cell::RefCell;

/// Collects errors while a macro input is checked (serde's `Ctxt`).
#[derive(Default)]
pub struct Errors(RefCell<Option<syn::Error>>);

impl Errors {
    /// Records an error pointing at `tokens`.
    pub fn spanned(&self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub fn push(&self, error: syn::Error) {
        let mut errors = self.0.borrow_mut();
        match errors.as_mut() {
            Some(all) => all.combine(error),
            None => *errors = Some(error),
        }
    }

    /// The compile errors, if any.
    pub fn finish(self) -> Option<TokenStream> {
        self.0.into_inner().map(|e| e.to_compile_error())
    }
}

/// A `key = value` option that may be given once.
pub struct Once<T> {
    name: &'static str,
    value: Option<T>,
}

impl<T> Once<T> {
    pub fn new(name: &'static str) -> Self {
        Once { name, value: None }
    }

    /// Sets the value; a second setting is reported on `at`.
    pub fn set(&mut self, errors: &Errors, at: impl ToTokens, value: T) {
        if self.value.is_some() {
            errors.spanned(at, format_args!("duplicate `{}` attribute", self.name));
        } else {
            self.value = Some(value);
        }
    }

    pub fn get(self) -> Option<T> {
        self.value
    }
}

/// Consumes the value of an option that was reported as unknown, so the options after it
/// are still read and checked.
pub fn skip_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let _content;
        syn::parenthesized!(_content in meta.input);
    }
    Ok(())
}

/// An option's path as the user wrote it, for messages.
pub fn path_text(path: &syn::Path) -> String {
    quote::quote!(#path).to_string().replace(' ', "")
}
