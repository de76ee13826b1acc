//! Code generation from a checked [`Model`]: the `Entity` impl ([`entity`]), the typed field
//! paths ([`fields`]), the patch type ([`patch`]) and the repository type ([`repository`]); and
//! the placeholder items emitted when the input could not be modelled ([`stub`]).

pub mod entity;
pub mod fields;
pub mod patch;
pub mod repository;
pub mod stub;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Ident, Visibility};

use crate::internals::model::Model;

/// Everything `#[derive(Repository)]` generates for `model`.
pub fn expand(model: &Model) -> TokenStream {
    let entity = entity::expand(model);
    let fields = fields::expand(model);
    let patch = patch::expand(model);
    let repository = repository::expand(model);
    quote! {
        #entity
        #fields
        #patch
        #repository
    }
}

/// `{Entity}{suffix}`, e.g. `UserRepository`, spanned at the derive.
pub fn companion(entity: &Ident, suffix: &str) -> Ident {
    let name = crate::internals::ast::unraw(entity);
    Ident::new(&format!("{name}{suffix}"), Span::call_site())
}

/// A generated method named after a field: the field's name, raw if the field's is.
pub fn method_ident(field: &Ident) -> Ident {
    let text = field.to_string();
    match text.strip_prefix("r#") {
        Some(raw) => Ident::new_raw(raw, Span::call_site()),
        None => Ident::new(&text, Span::call_site()),
    }
}

/// The most restrictive of `visibilities`, as far as it can be told without name resolution:
/// private if any is private, `pub` if all are, otherwise the first restricted one.
pub fn narrowest<'a>(visibilities: impl IntoIterator<Item = &'a Visibility>) -> Visibility {
    let mut restricted: Option<&Visibility> = None;
    for vis in visibilities {
        match vis {
            Visibility::Inherited => return Visibility::Inherited,
            Visibility::Public(_) => {}
            Visibility::Restricted(_) => {
                restricted.get_or_insert(vis);
            }
        }
    }
    restricted
        .cloned()
        .unwrap_or_else(|| syn::parse_quote!(pub))
}
