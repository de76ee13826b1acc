//! The `Entity` impl and its `META` constant, and the `Queueable` impl of entities without an
//! outbox and without secret fields.
//!
//! With `cache(local(...))` the impl also returns clones for the in-process cache tier, which
//! needs the entity to be `Clone`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::internals::attr::{CacheStrategy, Consistency, Direction};
use crate::internals::model::Model;

/// `impl Entity for User { type Id; const META; fn id; fn tenant; [fn version; fn set_version]
/// [fn set_updated_at] [fn local_cache_clone] }`, and `impl Queueable for User {}` without an
/// outbox and without secret fields.
pub fn expand(m: &Model) -> TokenStream {
    let p = m.private();
    let ident = m.ident;
    let meta = meta(m);
    // Without an id or tenant field, or with a tenant field of the wrong type, the error that
    // says so stops the build: these placeholders keep the impl well-formed and never run.
    let (id_ty, id_body) = match m.id {
        Some(f) => {
            let (ty, field) = (f.ty, f.ident);
            (quote!(#ty), quote!(&self.#field))
        }
        None => (quote!(()), quote!(&())),
    };
    let tenant_body = match m.tenant.filter(|_| m.tenant_is_string) {
        Some(f) => {
            let field = f.ident;
            quote!(&self.#field)
        }
        None => quote!(""),
    };
    let version_fns = m.version.map(|v| {
        let field = v.ident;
        let ty = v.ty;
        quote! {
            #[inline]
            fn version(&self) -> ::core::option::Option<u64> {
                ::core::option::Option::Some(<#ty as #p::VersionField>::to_u64(self.#field))
            }

            #[inline]
            fn set_version(&mut self, version: u64) {
                self.#field = <#ty as #p::VersionField>::from_u64(version);
            }
        }
    });
    // `From` turns the runtime's `DateTime` into `DateTime` or `Option<DateTime>`; a `DateTime`
    // that is not the runtime's (another bson version, a type of the user's) fails here, at the
    // field's type.
    let set_updated_at = m.updated_at.map(|u| {
        let field = u.ident;
        let ty = u.ty;
        let from = quote_spanned!(ty.span()=> <#ty as ::core::convert::From<#p::DateTime>>::from);
        quote! {
            #[inline]
            fn set_updated_at(&mut self, at: #p::DateTime) {
                self.#field = #from(at);
            }
        }
    });
    let created_at_type = m.created_at.map(|c| {
        let ty = c.ty;
        let from = quote_spanned!(ty.span()=> <#ty as ::core::convert::From<#p::DateTime>>::from);
        quote! {
            // The runtime writes a BSON date into the `created_at` field.
            const _: fn(#p::DateTime) -> #ty = #from;
        }
    });
    let queueable = m.queueable.then(|| {
        quote! {
            #[automatically_derived]
            impl #p::Queueable for #ident {}
        }
    });
    let mutable = (!m.append_only).then(|| {
        quote! {
            #[automatically_derived]
            impl #p::Mutable for #ident {}
        }
    });
    let local_cache_clone = m.cache.as_ref().and_then(|c| c.local).map(|_| {
        quote! {
            #[inline]
            fn local_cache_clone(&self) -> ::core::option::Option<Self> {
                ::core::option::Option::Some(::core::clone::Clone::clone(self))
            }
        }
    });
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #p::Entity for #ident {
                type Id = #id_ty;

                const META: &'static #p::EntityMeta = &#meta;

                // A field named `id` or `tenant` that is not the id or tenant field is fine.
                #[inline]
                #[allow(clippy::misnamed_getters)]
                fn id(&self) -> &Self::Id {
                    #id_body
                }

                #[inline]
                #[allow(clippy::misnamed_getters)]
                fn tenant(&self) -> &str {
                    #tenant_body
                }

                #version_fns

                #set_updated_at

                #local_cache_clone
            }

            #queueable
            #mutable

            #created_at_type
        };
    }
}

/// The `EntityMeta { ... }` literal.
fn meta(m: &Model) -> TokenStream {
    let p = m.private();
    let name = m.name();
    let database = &m.database;
    let collection = &m.collection;
    let id_field = m.id.map_or("", |f| f.stored_name.as_str());
    let tenant_field = m.tenant.map_or("", |f| f.stored_name.as_str());
    let stored_name = |f: Option<&crate::internals::ast::Field>| {
        option(f.map(|f| {
            let n = &f.stored_name;
            quote!(#n)
        }))
    };
    let version_field = stored_name(m.version);
    let created_at_field = stored_name(m.created_at);
    let updated_at_field = stored_name(m.updated_at);
    let fields = m.fields.iter().map(|f| &f.stored_name);
    let secrets = m.secrets.iter().map(|f| &f.stored_name);
    let indexes = m.indexes.iter().map(|ix| {
        let name = &ix.name;
        let keys = ix.keys.iter().map(|(field, dir)| {
            let key = match dir {
                Direction::Asc => quote!(#p::IndexKey::asc(#field)),
                Direction::Desc => quote!(#p::IndexKey::desc(#field)),
            };
            let list = ix
                .fields
                .iter()
                .any(|(f, _)| f.stored_name == *field && crate::internals::check::is_list(f.ty));
            if list {
                quote!(#key.list())
            } else {
                key
            }
        });
        let unique = ix.unique;
        let ttl = option(ix.ttl_ms.map(|ms| duration(m, ms)));
        quote! {
            #p::IndexSpec {
                name: #name,
                keys: &[#(#keys),*],
                unique: #unique,
                ttl: #ttl,
            }
        }
    });
    let schema_version = m.schema_version;
    // Each function goes through `step_fn`, spanned at its name in the attribute: one that is
    // not a `fn(&mut Document) -> StepResult` is a type error there.
    let schema_steps = m.schema_steps.iter().map(|s| {
        let (from, name, checksum) = (s.from, &s.name, &s.checksum);
        let wrap = |f: &syn::Path| {
            let span = f
                .segments
                .last()
                .map_or_else(proc_macro2::Span::call_site, |seg| seg.ident.span());
            quote_spanned!(span=> #p::step_fn(#f))
        };
        let up = wrap(&s.up);
        let down = option(s.down.as_ref().map(wrap));
        quote! {
            #p::SchemaStep {
                from: #from,
                up: #up,
                down: #down,
                name: #name,
                checksum: #checksum,
            }
        }
    });
    let consistency = match m.consistency {
        Consistency::Strong => quote!(Strong),
        Consistency::Eventual => quote!(Eventual),
        Consistency::Causal => quote!(Causal),
        Consistency::ReadYourWrites => quote!(ReadYourWrites),
    };
    let soft_delete = m.soft_delete;
    let append_only = m.append_only;
    let cache = option(m.cache.as_ref().map(|c| {
        let ttl = duration(m, c.ttl_ms);
        let jitter = duration(m, c.jitter_ms);
        let strategy = match c.strategy {
            CacheStrategy::CacheAside => quote!(CacheAside),
            CacheStrategy::WriteThrough => quote!(WriteThrough),
            CacheStrategy::WriteBehind => quote!(WriteBehind),
        };
        let local = option(c.local.map(|(ttl_ms, capacity)| {
            let ttl = duration(m, ttl_ms);
            quote!(#p::LocalCacheSpec { ttl: #ttl, capacity: #capacity })
        }));
        quote! {
            #p::CacheSpec {
                ttl: #ttl,
                jitter: #jitter,
                strategy: #p::CacheStrategy::#strategy,
                local: #local,
            }
        }
    }));
    let outbox = option(m.outbox.as_ref().map(|o| {
        let topic = &o.topic;
        let event = |e: &Option<String>| option(e.as_ref().map(|s| quote!(#s)));
        let (insert, update, delete) = (event(&o.insert), event(&o.update), event(&o.delete));
        quote! {
            #p::OutboxSpec {
                topic: #topic,
                insert: #insert,
                update: #update,
                delete: #delete,
            }
        }
    }));
    quote! {
        #p::EntityMeta {
            name: #name,
            database: #database,
            collection: #collection,
            id_field: #id_field,
            tenant_field: #tenant_field,
            version_field: #version_field,
            created_at_field: #created_at_field,
            updated_at_field: #updated_at_field,
            fields: &[#(#fields),*],
            secret_fields: &[#(#secrets),*],
            indexes: &[#(#indexes),*],
            schema_version: #schema_version,
            schema_steps: &[#(#schema_steps),*],
            consistency: #p::Consistency::#consistency,
            soft_delete: #soft_delete,
            append_only: #append_only,
            cache: #cache,
            outbox: #outbox,
        }
    }
}

/// `Duration::from_millis(ms)`, or `Duration::ZERO`.
fn duration(m: &Model, ms: u64) -> TokenStream {
    let p = m.private();
    if ms == 0 {
        quote!(#p::Duration::ZERO)
    } else {
        quote!(#p::Duration::from_millis(#ms))
    }
}

/// `Some(value)` or `None`, fully qualified.
fn option(value: Option<TokenStream>) -> TokenStream {
    match value {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}
