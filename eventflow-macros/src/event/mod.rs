//! `#[derive(Event)]`: parse and check the input, then generate the impl.

mod parse;

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use parse::{EventInput, Key, KeyField, Upcast};

pub fn expand(input: syn::DeriveInput) -> TokenStream {
    let (parsed, errors) = EventInput::parse(&input);
    // On invalid input the impl is still generated, with defaults, so the user sees the
    // attribute error and not a cascade of "does not implement Event" errors. A union is
    // the exception: it can never have the serde impls `Event` requires, so an impl would
    // only add errors about those.
    let implementation = match input.data {
        syn::Data::Union(_) => TokenStream::new(),
        _ => generate(&input, &parsed),
    };
    quote! {
        #errors
        #implementation
    }
}

fn generate(input: &syn::DeriveInput, parsed: &EventInput) -> TokenStream {
    let krate = &parsed.krate;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    // A generic type is an event wherever its serde derives apply (they add their own
    // bounds on the type parameters), so the impl asks for exactly what `Event` needs.
    // A concrete type gets no such bound: a missing serde impl must be an error on the
    // type, not a trivially false `where` clause.
    let mut where_clause = where_clause.cloned();
    if !input.generics.params.is_empty() {
        where_clause
            .get_or_insert_with(|| syn::parse_quote!(where))
            .predicates
            .push(syn::parse_quote! {
                #ident #ty_generics: #krate::__private::serde::Serialize
                    + #krate::__private::serde::de::DeserializeOwned
                    + ::core::marker::Send
                    + ::core::marker::Sync
                    + 'static
            });
    }
    let name = parsed.name.clone().unwrap_or_else(|| ident.to_string());
    let version = parsed.version;
    let topic = match &parsed.topic {
        Some(topic) => quote!(#topic),
        None => quote!(#name),
    };
    let key = partition_key(parsed);
    let upcast = parsed.upcast.as_ref().map(|upcast| upcast_fn(krate, upcast));
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

                #upcast
            }
        };
    }
}

fn partition_key(parsed: &EventInput) -> TokenStream {
    // Through the field's own type tokens, so a key type without `Display` is reported on
    // the field's type.
    let to_key = |value: TokenStream, key: &KeyField| {
        let ty = &key.ty;
        quote_spanned!(ty.span()=> ::core::option::Option::Some(<#ty as ::std::string::ToString>::to_string(#value)))
    };
    match &parsed.key {
        Key::Struct(None) => quote!(::core::option::Option::None),
        Key::Struct(Some(key)) => {
            let member = &key.member;
            to_key(quote!(&self.#member), key)
        }
        Key::Enum(variants) => {
            let arms = variants.iter().map(|(variant, key)| match key {
                Some(key) => {
                    let member = &key.member;
                    let value = to_key(quote!(__key), key);
                    quote!(Self::#variant { #member: __key, .. } => #value,)
                }
                None => quote!(Self::#variant { .. } => ::core::option::Option::None,),
            });
            // `match self {}` is rejected for a reference to an empty enum; `*self` is not.
            let scrutinee = if variants.is_empty() {
                quote!(*self)
            } else {
                quote!(self)
            };
            quote_spanned!(parsed.ident_span=> match #scrutinee { #(#arms)* })
        }
    }
}

/// `Event::upcast` from `#[event(upcast(...))]`: the JSON upcasters in version order, then
/// the older type if there is one.
fn upcast_fn(krate: &syn::Path, upcast: &Upcast) -> TokenStream {
    let mut json: Vec<_> = upcast.json.iter().collect();
    json.sort_by_key(|(version, _)| *version);
    // Each function is coerced on its own path, so a wrong signature is reported there.
    let steps = json.iter().map(|(version, function)| {
        quote_spanned! {function.span()=>
            (#version, { let upcaster: #krate::upcast::JsonUpcaster = #function; upcaster })
        }
    });
    let run = match &upcast.from {
        None => quote!(old.upcast_json::<Self>(steps)),
        Some(ty) => {
            let source = quote_spanned! {ty.span()=>
                {
                    #[allow(unused_imports)]
                    use #krate::upcast::__private::{ViaEvent as _, ViaSerde as _};
                    (&&#krate::upcast::__private::Probe::<#ty>::new()).source()
                }
            };
            let convert = quote_spanned!(ty.span()=> <Self as ::core::convert::From<#ty>>::from);
            quote!(old.upcast_typed::<Self, #ty>(steps, #source, #convert))
        }
    };
    quote! {
        fn upcast(
            old: #krate::upcast::Old<'_>,
        ) -> ::core::result::Result<Self, #krate::upcast::UpcastError> {
            let steps: &[(u32, #krate::upcast::JsonUpcaster)] = &[#(#steps),*];
            #run
        }
    }
}
