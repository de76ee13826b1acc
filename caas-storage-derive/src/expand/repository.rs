//! `UserRepository`: the typed repository, deref'ing to `Repository<User>`, with one finder per
//! declared index.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::Ident;

use super::{companion, method_ident, narrowest};
use crate::internals::ast::Field;
use crate::internals::attr::Direction;
use crate::internals::model::{Finder, FinderKind, Model};

/// The repository type, its constructor, finders and `Clone`/`Debug`/`Deref` impls.
pub fn expand(m: &Model) -> TokenStream {
    let p = m.private();
    let ident = m.ident;
    let vis = m.vis;
    let name = m.name();
    let repo_ty = companion(ident, "Repository");
    let finder_names: Vec<String> = m
        .finders
        .iter()
        .map(|f| format!("`{}`", f.method))
        .collect();
    let finders_doc = if finder_names.is_empty() {
        String::new()
    } else {
        format!(
            " Finders generated from its indexes: {}.",
            finder_names.join(", ")
        )
    };
    let type_doc = format!(
        "The repository of `{name}` (`{}.{}`): every call is scoped to a tenant and runs with \
         the entity's `{}` consistency. CRUD, queries and paging come from `Repository<{name}>`, \
         which this type dereferences to.{finders_doc}",
        m.database,
        m.collection,
        m.consistency.as_str()
    );
    let new_doc = format!("The repository of `{name}` on `storage`'s connection pools.");
    let try_new_doc = format!(
        "[`new`](Self::new), failing with a configuration error when `{name}`'s outbox topic is \
         not declared in `kafka.topics` (see `Repository::try_new`)."
    );
    let finders = m.finders.iter().map(|f| finder(m, f));
    quote! {
        #[doc = #type_doc]
        #[allow(dead_code)]
        #vis struct #repo_ty {
            inner: #p::Repository<#ident>,
        }

        const _: () = {
            #[allow(dead_code)]
            impl #repo_ty {
                #[doc = #new_doc]
                #[must_use]
                pub fn new(storage: &#p::Storage) -> Self {
                    #repo_ty {
                        inner: #p::Repository::new(storage),
                    }
                }

                #[doc = #try_new_doc]
                pub fn try_new(storage: &#p::Storage) -> #p::Result<Self> {
                    ::core::result::Result::Ok(#repo_ty {
                        inner: #p::Repository::try_new(storage)?,
                    })
                }

                #(#finders)*
            }

            #[automatically_derived]
            impl ::core::clone::Clone for #repo_ty {
                fn clone(&self) -> Self {
                    #repo_ty {
                        inner: ::core::clone::Clone::clone(&self.inner),
                    }
                }
            }

            #[automatically_derived]
            impl ::core::fmt::Debug for #repo_ty {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    ::core::fmt::Debug::fmt(&self.inner, f)
                }
            }

            #[automatically_derived]
            impl ::core::ops::Deref for #repo_ty {
                type Target = #p::Repository<#ident>;

                fn deref(&self) -> &Self::Target {
                    &self.inner
                }
            }
        };
    }
}

/// One `find_by_...` or `list_by_...` method.
fn finder(m: &Model, f: &Finder) -> TokenStream {
    let p = m.private();
    let ident = m.ident;
    let name = m.name();
    let method = Ident::new(&f.method, Span::call_site());
    let vis = narrowest(
        f.eq.iter()
            .chain(f.sort.iter().map(|(s, _)| s))
            .map(|field| field.vis),
    );
    let params: Vec<Ident> = f.eq.iter().map(|field| param_ident(field)).collect();
    let param_decls = f.eq.iter().zip(&params).map(|(field, param)| {
        let ty = field.ty;
        quote!(#param: impl ::core::convert::Into<#ty>)
    });
    let filters = f.eq.iter().zip(&params).map(|(field, param)| {
        let accessor = method_ident(field.ident);
        quote!(.filter(<#ident>::fields().#accessor().eq(#param)))
    });
    let names: Vec<String> =
        f.eq.iter()
            .map(|field| format!("`{}`", field.name()))
            .collect();
    let conditions = if names.len() == 1 {
        format!("whose {} equals the given value", names[0])
    } else {
        format!("whose {} equal the given values", names.join(" and "))
    };
    match f.kind {
        FinderKind::Find => {
            let doc = format!(
                "The `{name}` of `tenant` {conditions}, if any (unique index `{}`). Secret \
                 fields are left out.",
                f.index
            );
            quote! {
                #[doc = #doc]
                #vis fn #method(
                    &self,
                    tenant: &#p::TenantId,
                    #(#param_decls,)*
                ) -> impl ::core::future::Future<
                    Output = #p::Result<::core::option::Option<#ident>>,
                > + ::core::marker::Send + '_ {
                    self.inner.query(tenant)#(#filters)*.first()
                }
            }
        }
        FinderKind::List => {
            let (sort, order) = match f.sort {
                Some((field, dir)) => {
                    let accessor = method_ident(field.ident);
                    let (call, word) = match dir {
                        Direction::Asc => (quote!(asc), "ascending"),
                        Direction::Desc => (quote!(desc), "descending"),
                    };
                    (
                        quote!(.sort(<#ident>::fields().#accessor().#call())),
                        format!("sorted by `{}` {word}, then by id", field.name()),
                    )
                }
                None => (TokenStream::new(), "sorted by id".to_owned()),
            };
            let doc = format!(
                "One page of the `{name}`s of `tenant` {conditions}, {order} (index `{}`). \
                 Secret fields are left out.",
                f.index
            );
            quote! {
                #[doc = #doc]
                #vis fn #method(
                    &self,
                    tenant: &#p::TenantId,
                    #(#param_decls,)*
                    page: #p::PageRequest,
                ) -> impl ::core::future::Future<
                    Output = #p::Result<#p::Page<#ident>>,
                > + ::core::marker::Send + '_ {
                    self.inner.query(tenant)#(#filters)*#sort.page(page)
                }
            }
        }
    }
}

/// The parameter for a key field: the field's name, unless a fixed parameter has it.
fn param_ident(field: &Field) -> Ident {
    let name = field.name();
    if matches!(name.as_str(), "tenant" | "page") {
        Ident::new(&format!("{name}_value"), Span::call_site())
    } else {
        method_ident(field.ident)
    }
}
