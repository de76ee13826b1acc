//! `#[derive(Repository)]` for caas-storage.
//!
//! The derive reads a struct and its `#[repository(...)]`, `#[index(...)]`, `#[id]` and
//! `#[tenant]` attributes (plus the `#[serde(...)]` attributes that decide stored names), checks
//! them, and generates the `Entity` impl the runtime executes against (and `Queueable` for
//! entities without an outbox and without secret fields), a typed repository, a patch type and
//! typed field paths.
//! `docs/attributes.md` in the repository is the reference.
//!
//! The crate is organised like serde_derive: [`internals`] parses the input into a model
//! ([`internals::ast`], [`internals::attr`]) and checks it ([`internals::check`]), collecting
//! every error in a [`internals::ctxt::Ctxt`]; [`expand`] generates code from the checked
//! model. All errors are reported together; alongside them the derive still emits the generated
//! API where it can (or placeholders where it cannot), so user code that names it does not
//! drown the real errors in follow-on ones.

mod expand;
mod internals;
mod test_macro;

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, DeriveInput};

use internals::ast::Container;
use internals::check;
use internals::ctxt::Ctxt;

/// Derives a caas-storage entity: `impl Entity`, `{Name}Repository`, `{Name}Patch`,
/// `{Name}Fields` and `{Name}::fields()`. See `docs/attributes.md` for every attribute.
#[proc_macro_derive(Repository, attributes(repository, index, migrate, id, tenant))]
pub fn derive_repository(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    derive(&input).into()
}

/// Parse, check, generate; errors become `compile_error!` next to whatever could be generated.
/// A test that gets a fresh, isolated `Storage` as its one argument: in memory by default, on
/// the real servers with `CAAS_TEST_BACKEND=servers` (a database suffix and a Redis key prefix
/// of its own, dropped afterwards). `#[caas_storage::test(config = my_config)]` builds it from
/// `my_config()` instead of the default (in memory) or the environment (servers).
///
/// ```ignore
/// #[caas_storage::test]
/// async fn signing_up_publishes_user_created(storage: Storage) {
///     UserRepository::new(&storage).insert(&t, &user).await.unwrap();
///     assert_eq!(storage.take_test_events().await.unwrap().len(), 1);
/// }
/// ```
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    test_macro::expand(args.into(), item.into()).into()
}

fn derive(input: &DeriveInput) -> proc_macro2::TokenStream {
    let cx = Ctxt::new();
    let container = Container::from_ast(&cx, input);
    let model = check::check(&cx, &container);
    let generated = match &model {
        Some(model) => expand::expand(model),
        None => expand::stub::expand(&container),
    };
    match cx.finish() {
        Ok(()) => generated,
        Err(errors) => {
            let errors = errors.to_compile_error();
            quote! {
                #errors
                #generated
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    fn expand(input: &syn::DeriveInput) -> String {
        super::derive(input).to_string()
    }

    #[test]
    fn valid_input_generates_without_errors() {
        let out = expand(&syn::parse_quote! {
            #[repository(database = "caas_auth", collection = "users")]
            #[index(keys(email), unique)]
            pub struct User {
                #[repository(id)]
                pub user_id: String,
                #[repository(tenant)]
                pub tenant_id: String,
                pub email: String,
            }
        });
        assert!(!out.contains("compile_error"), "{out}");
        assert!(out.contains("fn find_by_email"));
        assert!(out.contains("\"tenant_id_1_email_1\""));
    }

    #[test]
    fn errors_come_with_the_generated_api() {
        let out = expand(&syn::parse_quote! {
            #[repository(database = "caas_auth", collection = "users", consistency = eventual,
                         cache(strategy = write_through))]
            pub struct User {
                #[repository(id)]
                pub user_id: String,
                #[repository(tenant)]
                pub tenant_id: String,
            }
        });
        assert!(out.contains("compile_error"));
        assert!(out.contains("needs `ttl`"));
        let p = super::internals::model::private_module();
        assert!(out.contains(&format!("impl :: caas_storage :: {p} :: Entity for User")));
        assert!(out.contains(&format!(
            "impl :: caas_storage :: {p} :: Queueable for User"
        )));
    }

    #[test]
    fn cache_puts_need_a_version_once() {
        let entity = |consistency: proc_macro2::TokenStream, strategy: proc_macro2::TokenStream| {
            expand(&syn::parse_quote! {
                #[repository(database = "caas_auth", collection = "users",
                             consistency = #consistency, cache(ttl = "1m", strategy = #strategy))]
                pub struct User {
                    #[repository(id)]
                    pub user_id: String,
                    #[repository(tenant)]
                    pub tenant_id: String,
                }
            })
        };
        let needs_version = |out: &str| out.matches("#[repository(version)] field").count();
        // At the strategy where the consistency model alone would not need a version.
        for (consistency, strategy, errors) in [
            (quote!(causal), quote!(write_through), 1),
            (quote!(eventual), quote!(write_through), 1),
            (quote!(eventual), quote!(write_behind), 1),
            (quote!(causal), quote!(cache_aside), 0),
            (quote!(eventual), quote!(cache_aside), 0),
            // Once, at `cache`, where the consistency model needs it anyway.
            (quote!(strong), quote!(write_through), 1),
            (quote!(read_your_writes), quote!(write_through), 1),
            (quote!(read_your_writes), quote!(cache_aside), 1),
        ] {
            let out = entity(consistency.clone(), strategy.clone());
            assert_eq!(
                needs_version(&out),
                errors,
                "{consistency} {strategy}: {out}"
            );
        }
        let out = entity(quote!(eventual), quote!(write_behind));
        assert!(out.contains("strategy = write_behind needs"), "{out}");
    }

    #[test]
    fn choices_written_as_strings_suggest_the_nearest_identifier() {
        let errors = |consistency: &str| {
            let consistency = syn::LitStr::new(consistency, proc_macro2::Span::call_site());
            expand(&syn::parse_quote! {
                #[repository(database = "caas_auth", collection = "users",
                             consistency = #consistency, cache(ttl = "1m", strategy = write_behind))]
                pub struct User {
                    #[repository(id)]
                    pub user_id: String,
                    #[repository(tenant)]
                    pub tenant_id: String,
                    #[repository(version)]
                    pub version: u64,
                }
            })
        };
        let out = errors("eventual");
        assert!(out.contains("write `consistency = eventual`"), "{out}");
        let out = errors("strongg");
        assert!(
            out.contains(
                "`strongg` is not a consistency model; did you mean `consistency = strong`?"
            ),
            "{out}"
        );
        let out = errors("linearizable");
        assert!(
            out.contains("`linearizable` is not a consistency model ("),
            "{out}"
        );
        // The rejected model is not replaced by `strong` in the rules that depend on it.
        for text in ["eventual", "strongg", "linearizable"] {
            let out = errors(text);
            assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        }
    }

    #[test]
    fn timestamps_are_stamped_and_left_out_of_the_patch() {
        let out = expand(&syn::parse_quote! {
            #[repository(database = "caas_auth", collection = "users")]
            pub struct User {
                #[repository(id)]
                pub user_id: String,
                #[repository(tenant)]
                pub tenant_id: String,
                pub email: String,
                #[repository(created_at)]
                #[serde(rename = "createdAt")]
                pub created: DateTime,
                #[repository(updated_at)]
                pub updated: Option<bson::DateTime>,
            }
        });
        assert!(!out.contains("compile_error"), "{out}");
        assert!(
            out.contains("created_at_field : :: core :: option :: Option :: Some (\"createdAt\")"),
            "{out}"
        );
        assert!(
            out.contains("updated_at_field : :: core :: option :: Option :: Some (\"updated\")"),
            "{out}"
        );
        assert!(out.contains("fn set_updated_at"), "{out}");
        assert!(out.contains("Queueable for User"), "{out}");
        let patch = out
            .split("struct UserPatch")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .expect("patch type");
        assert!(patch.contains("email"), "{patch}");
        assert!(
            !patch.contains("created") && !patch.contains("updated"),
            "{patch}"
        );
    }

    #[test]
    fn outbox_entities_are_not_queueable() {
        for outbox in [
            quote!(outbox(topic = "platform.events")),
            // Rejected, but written: the entity is still not queueable.
            quote!(outbox(topic = "")),
        ] {
            let out = expand(&syn::parse_quote! {
                #[repository(database = "caas_auth", collection = "users", #outbox)]
                pub struct User {
                    #[repository(id)]
                    pub user_id: String,
                    #[repository(tenant)]
                    pub tenant_id: String,
                    #[repository(version)]
                    pub version: u64,
                }
            });
            assert!(out.contains("Entity for User"), "{out}");
            assert!(!out.contains("Queueable"), "{out}");
            assert!(!out.contains("fn set_updated_at"), "{out}");
        }
    }

    #[test]
    fn entities_with_secrets_are_not_queueable() {
        for secret in [
            quote!(#[repository(secret)] #[serde(default)]),
            // Rejected (neither an `Option` nor defaulted), but written: still not queueable.
            quote!(#[repository(secret)]),
        ] {
            let out = expand(&syn::parse_quote! {
                #[repository(database = "caas_auth", collection = "users")]
                pub struct User {
                    #[repository(id)]
                    pub user_id: String,
                    #[repository(tenant)]
                    pub tenant_id: String,
                    #secret
                    pub password_hash: String,
                }
            });
            assert!(out.contains("Entity for User"), "{out}");
            assert!(!out.contains("Queueable"), "{out}");
        }
    }

    #[test]
    fn secrets_on_eventual_entities_are_rejected() {
        let out = expand(&syn::parse_quote! {
            #[repository(database = "caas_auth", collection = "users", consistency = eventual)]
            pub struct User {
                #[repository(id)]
                pub user_id: String,
                #[repository(tenant)]
                pub tenant_id: String,
                #[repository(secret)]
                pub password_hash: Option<String>,
            }
        });
        assert!(
            out.contains("`password_hash` cannot be secret on an `eventual` entity"),
            "{out}"
        );
    }

    #[test]
    fn unique_indexes_cannot_have_secret_keys() {
        let out = expand(&syn::parse_quote! {
            #[repository(database = "caas_auth", collection = "users")]
            #[index(keys(org, recovery_email), unique)]
            #[index(keys(recovery_email))]
            pub struct User {
                #[repository(id)]
                pub user_id: String,
                #[repository(tenant)]
                pub tenant_id: String,
                pub org: String,
                #[repository(secret)]
                pub recovery_email: Option<String>,
                #[repository(unique, secret)]
                pub api_key_hash: Option<String>,
            }
        });
        assert_eq!(
            out.matches("cannot be a key of a unique index").count(),
            2,
            "{out}"
        );
        assert!(out.contains("`recovery_email` is secret"), "{out}");
        assert!(out.contains("`api_key_hash` is secret"), "{out}");
        // The rejected indexes keep their finders, so calls to them add no errors.
        assert!(out.contains("fn find_by_org_and_recovery_email"), "{out}");
        assert!(out.contains("fn find_by_api_key_hash"), "{out}");
    }

    #[test]
    fn a_struct_without_id_or_tenant_still_gets_the_api() {
        let without_tenant: syn::DeriveInput = syn::parse_quote! {
            #[repository(database = "caas_auth", collection = "users")]
            #[index(keys(email), unique)]
            pub struct User {
                #[repository(id)]
                pub user_id: String,
                pub email: String,
            }
        };
        let without_id: syn::DeriveInput = syn::parse_quote! {
            #[repository(database = "caas_auth", collection = "users")]
            #[index(keys(email), unique)]
            pub struct User {
                #[repository(tenant)]
                pub tenant_id: String,
                pub email: String,
            }
        };
        let tenant_not_string: syn::DeriveInput = syn::parse_quote! {
            #[repository(database = "caas_auth", collection = "users")]
            #[index(keys(email), unique)]
            pub struct User {
                #[repository(id)]
                pub user_id: String,
                #[repository(tenant)]
                pub tenant_id: u64,
                pub email: String,
            }
        };
        for input in [&without_tenant, &without_id, &tenant_not_string] {
            let out = expand(input);
            assert!(out.contains("compile_error"), "{out}");
            for generated in [
                "Entity for User",
                "Queueable for User",
                "struct UserRepository {",
                "Deref for UserRepository",
                "fn find_by_email",
                "struct UserPatch {",
                "fn fields () -> UserFields",
            ] {
                assert!(out.contains(generated), "{generated}: {out}");
            }
            // Never run (the errors stop the build), and nothing that would panic if it did.
            for never in ["panic", "unreachable", "todo", "unimplemented"] {
                assert!(!out.contains(never), "{never}: {out}");
            }
        }
        let out = expand(&without_id);
        assert!(out.contains("type Id = () ;"), "{out}");
        assert!(out.contains("id_field : \"\""), "{out}");
        let out = expand(&without_tenant);
        assert!(out.contains("tenant_field : \"\""), "{out}");
        assert!(
            out.contains("fn tenant (& self) -> & str { \"\" }"),
            "{out}"
        );
    }

    #[test]
    fn unmodellable_input_gets_placeholders() {
        let out = expand(&syn::parse_quote! {
            #[repository(database = "caas_auth", collection = "users")]
            pub enum User {
                A,
            }
        });
        assert!(out.contains("compile_error"));
        assert!(out.contains("struct UserRepository ;"), "{out}");
        assert!(!out.contains("Entity for User"));
    }
}
