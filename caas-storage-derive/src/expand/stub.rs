//! Placeholder items for an input that cannot take an `Entity` impl: an enum, a union, a tuple
//! or unit struct, or a generic struct. (A non-generic struct with named fields always gets the
//! full generated API, from a placeholder model if need be: see [`check`](crate::internals::check).)
//!
//! The derive's errors are what the user needs to see; these items only keep the code that
//! names the generated API from adding errors of its own: `UserRepository::new(&storage)`,
//! `UserPatch::default()` and `User::fields()` still resolve. Finders and field paths cannot be
//! stubbed meaningfully, so uses of those still fail.
//!
//! No `Entity` impl is emitted (the input has no fields to describe, or type parameters an
//! entity cannot have), so no `Queueable` impl either, and nothing here names the runtime: the
//! placeholders compile whatever the version of its hidden module. The placeholder repository
//! has no methods, so a `queue_*` call on it fails as "no method", like every other
//! `Repository` method, never with a `Queueable` bound error.

use proc_macro2::TokenStream;
use quote::quote;

use super::companion;
use crate::internals::ast::Container;

/// `UserRepository`, `UserPatch`, `UserFields` and `User::fields()`, all empty.
pub fn expand(cont: &Container) -> TokenStream {
    let ident = cont.ident;
    let vis = cont.vis;
    let repo_ty = companion(ident, "Repository");
    let patch_ty = companion(ident, "Patch");
    let fields_ty = companion(ident, "Fields");
    let (impl_generics, ty_generics, where_clause) = cont.generics.split_for_impl();
    let doc = format!(
        "Placeholder: `#[derive(Repository)]` on `{ident}` failed; see the errors it reported."
    );
    quote! {
        #[doc = #doc]
        #vis struct #repo_ty;

        #[doc = #doc]
        #[derive(::core::default::Default)]
        #vis struct #patch_ty;

        #[doc = #doc]
        #[derive(
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::fmt::Debug,
            ::core::default::Default
        )]
        #vis struct #fields_ty;

        const _: () = {
            impl #repo_ty {
                #[doc = #doc]
                #[must_use]
                pub fn new<S: ?::core::marker::Sized>(_storage: &S) -> Self {
                    #repo_ty
                }
            }

            impl #impl_generics #ident #ty_generics #where_clause {
                #[doc = #doc]
                #[must_use]
                #vis fn fields() -> #fields_ty {
                    #fields_ty
                }
            }
        };
    }
}
