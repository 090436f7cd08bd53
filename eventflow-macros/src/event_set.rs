//! `#[derive(EventSet)]`: an enum whose variants wrap events, dispatched by variant.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::attr::{path_text, Errors, Once};

pub fn expand(input: syn::DeriveInput) -> TokenStream {
    let errors = Errors::default();
    let krate = krate(&errors, &input.attrs);
    let variants = match &input.data {
        syn::Data::Enum(data) => variants(&errors, data),
        _ => {
            errors.spanned(
                &input.ident,
                "`EventSet` is derived for an enum whose variants wrap events: `enum BookEvent { Borrowed(BookBorrowed), Returned(BookReturned) }`",
            );
            return errors.finish().unwrap_or_default();
        }
    };
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let encode = variants.iter().map(|(variant, ty)| {
        quote_spanned!(ty.span()=> Self::#variant(event) => <#ty as #krate::EventSet>::envelope(event, codec),)
    });
    // A match on the name would need the names as literals; they are consts of the types.
    let decode = variants.iter().map(|(variant, ty)| {
        quote_spanned! {ty.span()=>
            if &*envelope.name == <#ty as #krate::Event>::NAME {
                return #krate::decode_with::<#ty>(codec, envelope).map(Self::#variant);
            }
        }
    });
    let encode_body = if variants.is_empty() {
        quote!(match *self {})
    } else {
        quote!(match self { #(#encode)* })
    };
    let errors = errors.finish();
    quote! {
        #errors
        #[allow(unused_qualifications)]
        const _: () = {
            impl #impl_generics #krate::EventSet for #ident #ty_generics #where_clause {
                fn envelope(
                    &self,
                    codec: &dyn #krate::codec::Codec,
                ) -> ::core::result::Result<#krate::Envelope, #krate::Error> {
                    #encode_body
                }

                fn decode(
                    codec: &dyn #krate::codec::Codec,
                    envelope: &#krate::Envelope,
                ) -> ::core::result::Result<Self, #krate::Error> {
                    #(#decode)*
                    ::core::result::Result::Err(#krate::__private::not_in_set::<Self>(envelope))
                }
            }
        };
    }
}

/// `#[event_set(crate = "...")]`, else `::eventflow`.
fn krate(errors: &Errors, attrs: &[syn::Attribute]) -> syn::Path {
    let mut krate = Once::new("crate");
    for attr in attrs.iter().filter(|a| a.path().is_ident("event_set")) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let lit: syn::LitStr = meta.value()?.parse()?;
                krate.set(errors, &meta.path, lit.parse::<syn::Path>()?);
            } else {
                errors.spanned(
                    &meta.path,
                    format_args!(
                        "unknown event_set attribute `{}`; expected `crate`",
                        path_text(&meta.path)
                    ),
                );
                crate::attr::skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    krate.get().unwrap_or_else(|| syn::parse_quote!(::eventflow))
}

/// Each variant and the event type it wraps; other shapes are reported.
fn variants(errors: &Errors, data: &syn::DataEnum) -> Vec<(syn::Ident, syn::Type)> {
    let mut out: Vec<(syn::Ident, syn::Type)> = Vec::new();
    for variant in &data.variants {
        match &variant.fields {
            syn::Fields::Unnamed(fields) if fields.unnamed.len() == 1 => {
                let ty = fields.unnamed[0].ty.clone();
                if let Some((other, _)) = out.iter().find(|(_, seen)| seen == &ty) {
                    errors.spanned(
                        &fields.unnamed[0].ty,
                        format_args!(
                            "this event is already the variant `{other}`: each event type goes in one variant, or decoding could not tell them apart"
                        ),
                    );
                    continue;
                }
                out.push((variant.ident.clone(), ty));
            }
            _ => errors.spanned(
                variant,
                format_args!(
                    "variant `{}` must wrap one event: `{}(SomeEvent)`, where `SomeEvent` derives `Event`",
                    variant.ident, variant.ident
                ),
            ),
        }
    }
    out
}
