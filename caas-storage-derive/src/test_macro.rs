//! `#[caas_storage::test]`: a test that gets a fresh, isolated `Storage`, in memory by default
//! and on the real servers with `CAAS_TEST_BACKEND=servers`. Parse and check here (every
//! mistake reported with its span), then expand into a plain `#[test]` that hands the body
//! to the runtime's harness (`caas_storage::testing`), which owns the runtime, the backend
//! choice and the clean-up.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Meta, Token};

use crate::internals::model::private_module;

/// Expands the attribute, or returns every error found.
pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let original = item.clone();
    let mut errors: Vec<syn::Error> = Vec::new();
    let mut config: Option<syn::Path> = None;
    match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
        Ok(metas) => {
            for meta in metas {
                match &meta {
                    Meta::NameValue(nv) if nv.path.is_ident("config") => match &nv.value {
                        syn::Expr::Path(p) if config.is_none() => config = Some(p.path.clone()),
                        syn::Expr::Path(_) => errors.push(syn::Error::new(
                            meta.span(),
                            "`config` is given twice",
                        )),
                        other => errors.push(syn::Error::new(
                            other.span(),
                            "`config` takes the path of a function returning a `StorageConfig`, e.g. `config = test_config`",
                        )),
                    },
                    other => errors.push(syn::Error::new(
                        other.span(),
                        "unknown argument; `#[caas_storage::test]` takes only `config = <fn() -> StorageConfig>`",
                    )),
                }
            }
        }
        Err(e) => errors.push(e),
    }
    let func: ItemFn = match syn::parse2(item) {
        Ok(f) => f,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                "`#[caas_storage::test]` goes on an `async fn` taking the `Storage`",
            ));
            return to_errors(errors, &original);
        }
    };
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span(),
            "a `#[caas_storage::test]` must be an `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            sig.generics.span(),
            "a `#[caas_storage::test]` cannot be generic",
        ));
    }
    let input = match sig.inputs.iter().collect::<Vec<_>>().as_slice() {
        [FnArg::Typed(t)] => Some(t.clone()),
        [FnArg::Receiver(r)] => {
            errors.push(syn::Error::new(
                r.span(),
                "a `#[caas_storage::test]` is a free function, not a method",
            ));
            None
        }
        _ => {
            errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                "a `#[caas_storage::test]` takes exactly one argument, the storage: `async fn name(storage: Storage)`",
            ));
            None
        }
    };
    let (true, Some(input)) = (errors.is_empty(), input) else {
        return to_errors(errors, &original);
    };
    let private = private_module();
    let name = &sig.ident;
    let output = &sig.output;
    let body = &func.block;
    let attrs = &func.attrs;
    let vis = &func.vis;
    // The type check of `config` sits outside the test function, which only test builds
    // compile: a wrong `config` is an error in every build, pointing at the path.
    let (config_check, config) = match &config {
        Some(path) => (
            quote_spanned!(path.span()=> const _: fn() -> ::caas_storage::StorageConfig = #path;),
            quote_spanned!(path.span()=> ::core::option::Option::Some(#path as fn() -> ::caas_storage::StorageConfig)),
        ),
        None => (quote!(), quote!(::core::option::Option::None)),
    };
    quote! {
        #config_check
        #[::core::prelude::v1::test]
        #(#attrs)*
        #vis fn #name() {
            async fn __caas_storage_test(#input) #output #body
            ::caas_storage::#private::run_test(
                ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                #config,
                __caas_storage_test,
            )
        }
    }
}

/// The errors, and the function as written (not a test), so that nothing else about it is
/// reported: only the mistakes.
fn to_errors(errors: Vec<syn::Error>, original: &TokenStream) -> TokenStream {
    let errors: TokenStream = errors.iter().map(syn::Error::to_compile_error).collect();
    quote! {
        #errors
        #[allow(dead_code)]
        #original
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    #[test]
    fn an_async_fn_with_one_argument_expands_to_a_plain_test() {
        let out = super::expand(
            quote!(),
            quote!(
                async fn signs_up(storage: Storage) {
                    let _ = storage;
                }
            ),
        )
        .to_string();
        assert!(out.contains("run_test"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn every_mistake_is_reported_together() {
        let out = super::expand(
            quote!(retries = 3),
            quote!(
                fn f<T>() {}
            ),
        )
        .to_string();
        assert!(out.contains("unknown argument"), "{out}");
        assert!(out.contains("must be an `async fn`"), "{out}");
        assert!(out.contains("cannot be generic"), "{out}");
        assert!(out.contains("exactly one argument"), "{out}");
    }
}
