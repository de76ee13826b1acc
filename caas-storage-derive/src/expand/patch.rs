//! `UserPatch`: a partial update with one `Option` per updatable field.

use proc_macro2::TokenStream;
use quote::quote;

use super::{companion, method_ident};
use crate::internals::model::Model;

/// The patch type and its `Patch` impl.
pub fn expand(m: &Model) -> TokenStream {
    let p = m.private();
    let ident = m.ident;
    let vis = m.vis;
    let name = m.name();
    let patch_ty = companion(ident, "Patch");
    let managed = [m.id, m.tenant, m.version];
    // Timestamp fields are left out even when their attribute was rejected, so that code
    // written against the intended patch type adds no errors of its own.
    let fields: Vec<_> = m
        .fields
        .iter()
        .filter(|f| f.is_typed() && !managed.iter().flatten().any(|r| std::ptr::eq(*r, **f)))
        .filter(|f| !f.attrs.created_at.is_written() && !f.attrs.updated_at.is_written())
        .collect();
    let doc = format!(
        "A partial update of `{name}`: every field that is `Some` is set, every `None` is left \
         as stored. Apply it with `update` or `update_checked` on the repository. The id, tenant, \
         version, `created_at` and `updated_at` fields are not in it: the repository manages \
         them."
    );
    let decls = fields.iter().map(|f| {
        let field = method_ident(f.ident);
        let fvis = f.vis;
        let ty = f.ty;
        let doc = format!(
            "New value of `{}` (stored as `{}`); `None` leaves it unchanged.",
            f.name(),
            f.stored_name
        );
        quote! {
            #[doc = #doc]
            #fvis #field: ::core::option::Option<#ty>
        }
    });
    let writes = fields.iter().map(|f| {
        let field = method_ident(f.ident);
        let stored = &f.stored_name;
        quote!(writer.set(#stored, &self.#field)?;)
    });
    let unused = fields.is_empty().then(|| quote!(let _ = writer;));
    quote! {
        #[doc = #doc]
        #[allow(dead_code)]
        #[derive(::core::default::Default)]
        #vis struct #patch_ty {
            #(#decls,)*
        }

        const _: () = {
            #[automatically_derived]
            impl #p::Patch for #patch_ty {
                type Entity = #ident;

                fn write(&self, writer: &mut #p::PatchWriter) -> #p::Result<()> {
                    #unused
                    #(#writes)*
                    ::core::result::Result::Ok(())
                }
            }
        };
    }
}
