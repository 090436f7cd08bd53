//! `#[subscribe]`: turns an `async fn` into a unit struct implementing `eventflow::Handler`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::spanned::Spanned;

use crate::attr::{path_text, skip_value, Errors, Once};

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
    match errors.finish() {
        None => generate(&options, &function),
        // A stub instead of the real impl, so the user sees the error above and not what
        // the real impl would make of a signature it cannot handle.
        Some(errors) => {
            let fallback = fallback(&options, &function);
            quote! {
                #errors
                #fallback
            }
        }
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
            match lit.base10_parse::<u32>() {
                Ok(n) => retries.set(errors, &path, n),
                Err(error) => errors.push(error),
            }
        } else if path.is_ident("crate") {
            let lit: syn::LitStr = meta.value()?.parse()?;
            krate.set(errors, &path, lit.parse::<syn::Path>()?);
        } else {
            errors.spanned(
                &path,
                format_args!(
                    "unknown subscribe option `{}`; expected `group`, `retries` or `crate`",
                    path_text(&path)
                ),
            );
            skip_value(&meta)?;
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

/// The argument types: the event, then the extractors.
fn argument_types(sig: &syn::Signature) -> Vec<&syn::Type> {
    sig.inputs
        .iter()
        .filter_map(|arg| match arg {
            syn::FnArg::Typed(pat) => Some(&*pat.ty),
            syn::FnArg::Receiver(_) => None,
        })
        .collect()
}

/// The unit struct named after the function, which stands for the handler.
fn handler_struct(function: &syn::ItemFn) -> TokenStream {
    let vis = &function.vis;
    let name = &function.sig.ident;
    let docs = function.attrs.iter().filter(|a| a.path().is_ident("doc"));
    quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #name;
    }
}

/// The user's function, renamed and made a private associated function of the struct.
fn inner_function(function: &syn::ItemFn) -> syn::ItemFn {
    let mut inner = function.clone();
    inner.sig.ident = format_ident!("__eventflow_handler");
    inner.vis = syn::Visibility::Inherited;
    inner
}

fn generate(options: &Options, function: &syn::ItemFn) -> TokenStream {
    let krate = &options.krate;
    let name = &function.sig.ident;
    let types = argument_types(&function.sig);
    let (event, extractors) = types
        .split_first()
        .expect("check_signature rejects a handler without arguments");
    let inner = inner_function(function);
    let handler_struct = handler_struct(function);

    // Each use of a user's type is spanned on that type, so an argument that is not an
    // event or not an extractor is reported there, once (rustc merges the identical
    // errors of `check` and `call`), instead of on the attribute.
    let event_type = quote_spanned!(event.span()=> type Event = #event;);
    let checks = extractors
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> <#ty as #krate::FromContext>::check(state)?;));
    let args: Vec<_> = (0..extractors.len()).map(|i| format_ident!("__arg{i}")).collect();
    let extractions = extractors.iter().zip(&args).map(
        |(ty, arg)| quote_spanned!(ty.span()=> let #arg = <#ty as #krate::FromContext>::from_context(&ctx)?;),
    );
    let transactional = extractors
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> || <#ty as #krate::FromContext>::TRANSACTIONAL));
    let group = match &options.group {
        Some(group) => quote!(#group),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#name)
        )),
    };
    let retries = options.retries.map(|n| quote!(.retries(#n)));
    // Spanned on the return type, and the boxing of the error on the error type, so a
    // return type that is not `Result<(), E>`, or an `E` that does not convert into a
    // boxed error, is reported there.
    let output_span = match &function.sig.output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => name.span(),
    };
    let ok = quote_spanned!(output_span=> ::core::result::Result::Ok(()));
    let err = quote_spanned!(output_span=> ::core::result::Result::Err(error));
    let box_error =
        quote_spanned!(error_type_span(&function.sig.output)=> #krate::__private::box_error(error));

    quote! {
        #handler_struct

        #[allow(unused_qualifications, non_snake_case)]
        const _: () = {
            impl #name {
                #inner
            }

            impl #krate::Handler for #name {
                #event_type

                fn options(&self) -> #krate::HandlerOptions {
                    #krate::HandlerOptions::new(
                        ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                        #group,
                    ) #retries
                }

                fn check(&self, state: &#krate::StateMap) -> ::core::result::Result<(), ::std::string::String> {
                    #(#checks)*
                    ::core::result::Result::Ok(())
                }

                fn transactional(&self) -> bool {
                    false #(#transactional)*
                }

                fn call(
                    &self,
                    event: #event,
                    ctx: #krate::Context,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<(), #krate::BoxError>>
                       + ::core::marker::Send
                       + 'static {
                    async move {
                        #(#extractions)*
                        let _ = &ctx;
                        match #name::__eventflow_handler(event, #(#args),*).await {
                            #ok => ::core::result::Result::Ok(()),
                            #err => ::core::result::Result::Err(#box_error),
                        }
                    }
                }
            }

            #krate::__private::inventory::submit! {
                #krate::__private::Registration::new::<#name>()
            }
        };
    }
}

/// The span of `E` in a return type written `Result<(), E>`, else of the whole type
/// (`anyhow::Result<()>`, `io::Result<()>`).
fn error_type_span(output: &syn::ReturnType) -> proc_macro2::Span {
    let syn::ReturnType::Type(_, ty) = output else {
        return proc_macro2::Span::call_site();
    };
    let error_type = match &**ty {
        syn::Type::Path(path) => match path.path.segments.last().map(|s| &s.arguments) {
            Some(syn::PathArguments::AngleBracketed(args)) if args.args.len() == 2 => args.args.last(),
            _ => None,
        },
        _ => None,
    };
    match error_type {
        Some(error_type) => error_type.span(),
        None => ty.span(),
    }
}

/// What is emitted beside the errors of an invalid handler: the struct, so that uses of
/// the handler's name resolve; the function, so that its body is still checked; and,
/// when the event type is known, a `Handler` impl that is never called, so that
/// `.handler(name)` does not add an error of its own.
fn fallback(options: &Options, function: &syn::ItemFn) -> TokenStream {
    let krate = &options.krate;
    let name = &function.sig.ident;
    let handler_struct = handler_struct(function);
    let inner = inner_function(function);
    let event = argument_types(&function.sig).first().copied();
    let handler_impl = match event {
        Some(event) if function.sig.generics.params.is_empty() => {
            let event_type = quote_spanned!(event.span()=> type Event = #event;);
            quote! {
                impl #krate::Handler for #name {
                    #event_type

                    fn options(&self) -> #krate::HandlerOptions {
                        ::core::unreachable!()
                    }

                    #[allow(unreachable_code)]
                    fn call(
                        &self,
                        _: #event,
                        _: #krate::Context,
                    ) -> impl ::core::future::Future<Output = ::core::result::Result<(), #krate::BoxError>>
                           + ::core::marker::Send
                           + 'static {
                        ::core::future::ready::<::core::result::Result<(), #krate::BoxError>>(::core::unreachable!())
                    }
                }
            }
        }
        _ => TokenStream::new(),
    };
    quote! {
        #handler_struct

        #[allow(unused_qualifications, non_snake_case, dead_code)]
        const _: () = {
            impl #name {
                #inner
            }

            #handler_impl
        };
    }
}
