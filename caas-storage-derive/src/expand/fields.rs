//! `UserFields` and `User::fields()`: typed paths to stored fields.

use proc_macro2::TokenStream;
use quote::quote;

use super::{companion, method_ident};
use crate::internals::ast::Field;
use crate::internals::model::Model;

/// The field-path type, its accessors and `User::fields()`.
pub fn expand(m: &Model) -> TokenStream {
    let p = m.private();
    let ident = m.ident;
    let vis = m.vis;
    let name = m.name();
    let fields_ty = companion(ident, "Fields");
    let type_doc = format!(
        "Typed paths to the stored fields of `{name}`, for filters, sorts and projections, e.g. \
         `{name}::fields().{}().eq(value)`. The tenant field has none: the repository scopes \
         every call to its tenant.",
        example_field(m)
    );
    let fn_doc = format!(
        "Typed paths to the stored fields of `{name}`, for filters, sorts and projections."
    );
    let methods = m
        .fields
        .iter()
        .filter(|f| !is_tenant(m, f) && f.is_typed())
        .map(|f| {
            let method = method_ident(f.ident);
            let fvis = f.vis;
            let ty = f.ty;
            let stored = &f.stored_name;
            let doc = format!("The `{}` field, stored as `{stored}`.", f.name());
            quote! {
                #[doc = #doc]
                #[inline]
                #[must_use]
                #fvis fn #method(&self) -> #p::Field<#ident, #ty> {
                    #p::Field::new(#stored)
                }
            }
        });
    quote! {
        #[doc = #type_doc]
        #[allow(dead_code)]
        #[derive(
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::fmt::Debug,
            ::core::default::Default
        )]
        #vis struct #fields_ty;

        const _: () = {
            #[allow(dead_code)]
            impl #fields_ty {
                #(#methods)*
            }

            #[allow(dead_code)]
            impl #ident {
                #[doc = #fn_doc]
                #[inline]
                #[must_use]
                #vis fn fields() -> #fields_ty {
                    #fields_ty
                }
            }
        };
    }
}

/// A field to show in the doc example: the first one with an accessor.
fn example_field(m: &Model) -> String {
    m.fields
        .iter()
        .find(|f| !is_tenant(m, f) && f.is_typed())
        .or(m.id.as_ref())
        .map_or_else(|| "id".to_owned(), |f| f.name())
}

/// Whether `f` is the tenant field, which has no path: the repository scopes every call.
fn is_tenant(m: &Model, f: &Field) -> bool {
    m.tenant.is_some_and(|t| std::ptr::eq(t, f))
}
