//! The input model: the struct the derive is applied to, its fields, and their parsed
//! attributes.

use syn::{DeriveInput, Generics, Ident, Type, Visibility};

use super::attr;
use super::ctxt::Ctxt;

/// The item `#[derive(Repository)]` is applied to.
pub struct Container<'a> {
    /// Its name, e.g. `User`.
    pub ident: &'a Ident,
    /// Its visibility, which the generated types share.
    pub vis: &'a Visibility,
    /// Its generics (an entity may have none; kept for the fallback output).
    pub generics: &'a Generics,
    /// The struct-level attributes.
    pub attrs: attr::Container,
    /// The named fields, or `None` when the item is not a struct with named fields.
    pub fields: Option<Vec<Field<'a>>>,
    /// Whether the item can be an entity: a non-generic struct with named fields.
    pub supported: bool,
}

/// One named field.
pub struct Field<'a> {
    /// The Rust name.
    pub ident: &'a Ident,
    /// The visibility, which the field's generated accessors share.
    pub vis: &'a Visibility,
    /// The type.
    pub ty: &'a Type,
    /// The field-level attributes.
    pub attrs: attr::Field,
    /// The name the field is stored under: serde's rename, or `rename_all` applied, or the Rust
    /// name.
    pub stored_name: String,
}

impl Field<'_> {
    /// The Rust name without a `r#` prefix.
    pub fn name(&self) -> String {
        unraw(self.ident)
    }

    /// Whether serde writes the field into the stored document.
    pub fn is_stored(&self) -> bool {
        self.attrs.not_stored.is_none()
    }

    /// Whether typed filters and patches can serialize values of the field: stored, with the
    /// field type's own `Serialize`.
    pub fn is_typed(&self) -> bool {
        self.is_stored() && !self.attrs.custom_serialize
    }
}

/// `r#type` -> `type`.
pub fn unraw(ident: &Ident) -> String {
    let s = ident.to_string();
    match s.strip_prefix("r#") {
        Some(rest) => rest.to_owned(),
        None => s,
    }
}

impl<'a> Container<'a> {
    /// Parses the input and its attributes. Items that cannot be entities (enums, unions,
    /// tuple and unit structs, generic structs) are reported here and marked unsupported.
    pub fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Container<'a> {
        let attrs = attr::parse_container(cx, &input.attrs);
        let mut supported = true;
        let fields = match &input.data {
            syn::Data::Struct(data) => match &data.fields {
                syn::Fields::Named(named) => Some(
                    named
                        .named
                        .iter()
                        .filter_map(|f| {
                            let ident = f.ident.as_ref()?;
                            let field_attrs = attr::parse_field(cx, f);
                            let stored_name = field_attrs
                                .rename
                                .clone()
                                .unwrap_or_else(|| attrs.rename_all.apply_to_field(&unraw(ident)));
                            Some(Field {
                                ident,
                                vis: &f.vis,
                                ty: &f.ty,
                                attrs: field_attrs,
                                stored_name,
                            })
                        })
                        .collect(),
                ),
                syn::Fields::Unnamed(unnamed) => {
                    cx.error_spanned_by(
                        unnamed,
                        "#[derive(Repository)] needs a struct with named fields; tuple structs \
                         have no field names to store",
                    );
                    supported = false;
                    None
                }
                syn::Fields::Unit => {
                    cx.error_spanned_by(
                        &input.ident,
                        "#[derive(Repository)] needs a struct with named fields; a unit struct \
                         has nothing to store",
                    );
                    supported = false;
                    None
                }
            },
            syn::Data::Enum(data) => {
                cx.error_spanned_by(
                    data.enum_token,
                    "#[derive(Repository)] supports structs with named fields, not enums",
                );
                supported = false;
                None
            }
            syn::Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "#[derive(Repository)] supports structs with named fields, not unions",
                );
                supported = false;
                None
            }
        };
        if !input.generics.params.is_empty() {
            cx.error_spanned_by(
                &input.generics,
                "#[derive(Repository)] does not support generic structs: an entity is one \
                 concrete type stored in one collection",
            );
            supported = false;
        }
        Container {
            ident: &input.ident,
            vis: &input.vis,
            generics: &input.generics,
            attrs,
            fields,
            supported,
        }
    }
}
