//! `#[derive(Event)]`: parse and check the input, then generate the impl.

mod parse;

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use parse::{EventInput, Key};

pub fn expand(input: syn::DeriveInput) -> TokenStream {
    let (parsed, errors) = EventInput::parse(&input);
    // On invalid input the impl is still generated, with defaults, so the user sees the
    // attribute error and not a cascade of "does not implement Event" errors.
    let implementation = generate(&input, &parsed);
    quote! {
        #errors
        #implementation
    }
}

fn generate(input: &syn::DeriveInput, parsed: &EventInput) -> TokenStream {
    let krate = &parsed.krate;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let name = parsed.name.clone().unwrap_or_else(|| ident.to_string());
    let version = parsed.version;
    let topic = match &parsed.topic {
        Some(topic) => quote!(#topic),
        None => quote!(#name),
    };
    let key = partition_key(parsed);
    // Spanned on the type name, so a missing serde impl is reported on the type.
    let for_type = quote_spanned!(ident.span()=> #ident #ty_generics);
    quote! {
        #[allow(unused_qualifications)]
        const _: () = {
            impl #impl_generics #krate::Event for #for_type #where_clause {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                const TOPIC: &'static str = #topic;

                fn partition_key(&self) -> ::core::option::Option<::std::string::String> {
                    #key
                }
            }
        };
    }
}

fn partition_key(parsed: &EventInput) -> TokenStream {
    let to_key = |value: TokenStream, span| quote_spanned!(span=> ::core::option::Option::Some(::std::string::ToString::to_string(#value)));
    match &parsed.key {
        Key::Struct(None) => quote!(::core::option::Option::None),
        Key::Struct(Some((member, span))) => to_key(quote!(&self.#member), *span),
        Key::Enum(variants) => {
            let arms = variants.iter().map(|(variant, key)| match key {
                Some((member, span)) => {
                    let value = to_key(quote!(__key), *span);
                    quote!(Self::#variant { #member: __key, .. } => #value,)
                }
                None => quote!(Self::#variant { .. } => ::core::option::Option::None,),
            });
            quote_spanned!(parsed.ident_span=> match self { #(#arms)* })
        }
    }
}
