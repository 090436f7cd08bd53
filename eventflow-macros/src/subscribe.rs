//! `#[subscribe]`: turns an `async fn` into a unit struct implementing `eventflow::Handler`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::spanned::Spanned;

use crate::attr::{Errors, Once};

struct Options {
    krate: syn::Path,
    group: Option<syn::LitStr>,
    retries: Option<u32>,
}

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let errors = Errors::default();
    let options = parse_options(&errors, args);
    let function = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            errors.spanned(&item, "`#[subscribe]` goes on an `async fn`");
            return errors.finish().unwrap_or_default();
        }
    };
    check_signature(&errors, &function.sig);
    let generated = generate(&options, &function);
    let errors = errors.finish();
    quote! {
        #errors
        #generated
    }
}

fn parse_options(errors: &Errors, args: TokenStream) -> Options {
    let mut krate = Once::new("crate");
    let mut group = Once::new("group");
    let mut retries = Once::new("retries");
    let parser = syn::meta::parser(|meta| {
        let path = meta.path.clone();
        if path.is_ident("group") {
            let lit: syn::LitStr = meta.value()?.parse()?;
            if lit.value().trim().is_empty() {
                errors.spanned(&lit, "a group name cannot be empty");
            }
            group.set(errors, &path, lit);
        } else if path.is_ident("retries") {
            let lit: syn::LitInt = meta.value()?.parse()?;
            retries.set(errors, &path, lit.base10_parse::<u32>()?);
        } else if path.is_ident("crate") {
            let lit: syn::LitStr = meta.value()?.parse()?;
            krate.set(errors, &path, lit.parse::<syn::Path>()?);
        } else {
            let text = quote!(#path).to_string().replace(' ', "");
            return Err(meta.error(format_args!(
                "unknown subscribe option `{text}`; expected `group`, `retries` or `crate`"
            )));
        }
        Ok(())
    });
    if let Err(error) = parser.parse2(args) {
        errors.push(error);
    }
    Options {
        krate: krate.get().unwrap_or_else(|| syn::parse_quote!(::eventflow)),
        group: group.get(),
        retries: retries.get(),
    }
}

fn check_signature(errors: &Errors, sig: &syn::Signature) {
    if sig.asyncness.is_none() {
        errors.spanned(sig.fn_token, "a subscribed handler must be an `async fn`");
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "a subscribed handler cannot be generic: the event type must be known",
        );
    }
    if let Some(receiver) = sig.receiver() {
        errors.spanned(receiver, "a subscribed handler is a free function, not a method");
    }
    if sig.inputs.is_empty() {
        errors.spanned(
            &sig.ident,
            "a subscribed handler takes the event as its first argument: `async fn handle(event: OrderPaid)`",
        );
    }
    if let syn::ReturnType::Default = sig.output {
        errors.spanned(
            &sig.ident,
            "a subscribed handler returns `Result<(), E>`, so failures can be retried",
        );
    }
}

fn generate(options: &Options, function: &syn::ItemFn) -> TokenStream {
    let krate = &options.krate;
    let vis = &function.vis;
    let name = &function.sig.ident;
    let docs: Vec<_> = function
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    let types: Vec<&syn::Type> = function
        .sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            syn::FnArg::Typed(pat) => Some(&*pat.ty),
            syn::FnArg::Receiver(_) => None,
        })
        .collect();
    let Some((event, extractors)) = types.split_first() else {
        return quote!(#vis struct #name;);
    };

    let mut inner = function.clone();
    inner.sig.ident = format_ident!("__eventflow_handler");
    inner.vis = syn::Visibility::Inherited;
    let event_check = quote_spanned!(event.span()=> #krate::__private::assert_event::<#event>(););
    let extractor_checks = extractors
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> const _: () = #krate::__private::assert_extractor::<#ty>();));
    let args: Vec<_> = (0..extractors.len()).map(|i| format_ident!("__arg{i}")).collect();
    let group = match &options.group {
        Some(group) => quote!(#group),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#name)
        )),
    };
    let retries = options.retries.map(|n| quote!(.retries(#n)));
    let output_span = match &function.sig.output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => name.span(),
    };
    let map_error = quote_spanned!(output_span=> .map_err(#krate::__private::box_error));

    quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #name;

        #[allow(unused_qualifications, non_snake_case)]
        const _: () = {
            const _: () = #event_check
            #(#extractor_checks)*

            impl #name {
                #inner
            }

            impl #krate::Handler for #name {
                type Event = #event;

                fn options(&self) -> #krate::HandlerOptions {
                    #krate::HandlerOptions::new(
                        ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                        #group,
                    ) #retries
                }

                fn check(&self, state: &#krate::StateMap) -> ::core::result::Result<(), ::std::string::String> {
                    #( <#extractors as #krate::FromContext>::check(state)?; )*
                    ::core::result::Result::Ok(())
                }

                fn call(
                    &self,
                    event: #event,
                    ctx: #krate::Context,
                ) -> #krate::BoxFuture<'static, ::core::result::Result<(), #krate::BoxError>> {
                    ::std::boxed::Box::pin(async move {
                        #( let #args = <#extractors as #krate::FromContext>::from_context(&ctx)?; )*
                        let _ = &ctx;
                        #name::__eventflow_handler(event, #(#args),*).await #map_error
                    })
                }
            }

            #krate::__private::inventory::submit! {
                #krate::__private::Registration::new::<#name>()
            }
        };
    }
}
