//! Every generated repository method against the real server: CRUD, finders, queries,
//! paging, patches, optimistic locking and soft deletes. Single-writer tests run once per
//! capability set the executor branches on (`common::each_capability_set`).

use caas_storage_tests as common;

use caas_storage::prelude::*;
use caas_storage::repo::Upserted;
use caas_storage::Error;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Active,
    Locked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "test_users", consistency = strong)]
#[index(keys(email), unique)]
#[index(keys(status, created_at desc))]
struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
    #[repository(secret)]
    #[serde(default)]
    pub password_hash: String,
    pub status: Status,
    #[repository(version)]
    pub version: u64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_messaging", collection = "test_notes", consistency = causal, soft_delete)]
struct Note {
    #[repository(id)]
    pub note_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub text: String,
}

fn user(t: &TenantId, n: u32, status: Status) -> User {
    User {
        user_id: format!("u{n}"),
        tenant_id: t.to_string(),
        email: format!("user{n}@example.com"),
        password_hash: format!("hash-{n}"),
        status,
        version: 0,
        created_at: i64::from(n),
    }
}

async fn users(storage: &Storage) -> UserRepository {
    storage.sync_indexes::<User>().await.unwrap();
    UserRepository::new(storage)
}

#[tokio::test]
async fn insert_find_get_exists_count() {
    common::each_capability_set(async |storage, _| {
        let repo = users(&storage).await;
        let t = common::tenant("crud");
        let u = user(&t, 1, Status::Active);
        repo.insert(&t, &u).await.unwrap();

        let found = repo.find_by_id(&t, &u.user_id).await.unwrap().unwrap();
        assert_eq!(found.email, u.email);
        assert_eq!(
            found.password_hash, "",
            "secret fields are not read by default"
        );
        let with = repo
            .find_by_id_with_secrets(&t, &u.user_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(with, u);
        assert_eq!(repo.get(&t, &u.user_id).await.unwrap().user_id, "u1");
        assert!(repo.exists(&t, &u.user_id).await.unwrap());
        assert!(!repo.exists(&t, &"nobody".to_owned()).await.unwrap());
        assert!(repo
            .find_by_id(&t, &"nobody".to_owned())
            .await
            .unwrap()
            .is_none());
        match repo.get(&t, &"nobody".to_owned()).await {
            Err(Error::NotFound { entity, id }) => {
                assert_eq!(entity, "User");
                assert_eq!(id, "\"nobody\"");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(repo.count(&t, Filter::all()).await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn duplicates_are_typed_errors_naming_the_entity() {
    common::each_capability_set(async |storage, _| {
        let repo = users(&storage).await;
        let t = common::tenant("dup");
        repo.insert(&t, &user(&t, 1, Status::Active)).await.unwrap();
        // Same id.
        match repo.insert(&t, &user(&t, 1, Status::Active)).await {
            Err(e @ Error::DuplicateKey { entity: "User", .. }) => {
                assert!(e.to_string().starts_with("User: duplicate key"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // Same email, other id: the (tenant_id, email) unique index.
        let mut other = user(&t, 2, Status::Active);
        other.email = "user1@example.com".into();
        assert!(matches!(
            repo.insert(&t, &other).await,
            Err(Error::DuplicateKey { entity: "User", .. })
        ));
        // The same email in another tenant is fine: uniqueness is per tenant.
        let t2 = common::tenant("dup2");
        let mut elsewhere = user(&t2, 1, Status::Active);
        elsewhere.email = "user1@example.com".into();
        repo.insert(&t2, &elsewhere).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn insert_many_is_unordered_and_reports_failures() {
    common::each_capability_set(async |storage, _| {
        let repo = users(&storage).await;
        let t = common::tenant("many");
        repo.insert(&t, &user(&t, 2, Status::Active)).await.unwrap();
        let batch: Vec<User> = (1..=4).map(|n| user(&t, n, Status::Active)).collect();
        let report = repo.insert_many(&t, &batch).await.unwrap();
        assert_eq!(report.inserted, 3);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(
            report.failed[0].0, 1,
            "the second document (u2) was the duplicate"
        );
        assert!(matches!(report.failed[0].1, Error::DuplicateKey { .. }));
        assert_eq!(repo.count(&t, Filter::all()).await.unwrap(), 4);
        assert_eq!(repo.insert_many(&t, &[]).await.unwrap().inserted, 0);
    })
    .await;
}

#[tokio::test]
async fn unique_finders_and_index_list_finders() {
    common::each_capability_set(async |storage, _| {
        let repo = users(&storage).await;
        let t = common::tenant("finders");
        for n in 1..=5 {
            let s = if n % 2 == 0 {
                Status::Locked
            } else {
                Status::Active
            };
            repo.insert(&t, &user(&t, n, s)).await.unwrap();
        }
        let u = repo
            .find_by_email(&t, "user3@example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.user_id, "u3");
        assert!(repo
            .find_by_email(&t, "none@example.com")
            .await
            .unwrap()
            .is_none());

        let page = repo
            .list_by_status(&t, Status::Active, PageRequest::first(10))
            .await
            .unwrap();
        let ids: Vec<&str> = page.items.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(
            ids,
            ["u5", "u3", "u1"],
            "sorted by created_at desc, the index's last key"
        );
        assert!(page.next.is_none());
    })
    .await;
}

#[tokio::test]
async fn keyset_pages_cover_everything_once_even_with_inserts_between_pages() {
    common::each_capability_set(async |storage, _| {
        let repo = users(&storage).await;
        let t = common::tenant("pages");
        for n in 1..=23 {
            repo.insert(&t, &user(&t, n, Status::Active)).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut request = PageRequest::first(5);
        let mut pages = 0;
        loop {
            let page = repo
                .list_by_status(&t, Status::Active, request)
                .await
                .unwrap();
            pages += 1;
            assert!(page.items.len() <= 5);
            seen.extend(page.items.iter().map(|u| u.created_at));
            if pages == 2 {
                // Newer than anything seen: sorts before the cursor, so it must not appear.
                repo.insert(&t, &user(&t, 100, Status::Active))
                    .await
                    .unwrap();
            }
            match page.next_request(5) {
                Some(r) => request = r,
                None => break,
            }
        }
        assert_eq!(pages, 5);
        let want: Vec<i64> = (1..=23).rev().collect();
        assert_eq!(seen, want);
        // A cursor survives a trip through a client.
        let first = repo
            .list_by_status(&t, Status::Active, PageRequest::first(3))
            .await
            .unwrap();
        let text = first.next.unwrap().to_string();
        let again = repo
            .list_by_status(
                &t,
                Status::Active,
                PageRequest::after(3, Cursor::parse(&text).unwrap()),
            )
            .await
            .unwrap();
        // u100 sorts first now: the first page is 100, 23, 22.
        assert_eq!(again.items[0].created_at, 21);
        assert!(Cursor::parse("not-a-cursor").is_err());
        // A cursor is opaque and checked: one carrying an operator where a sort value goes
        // (which would match every status) is refused.
        let mut crafted = Vec::new();
        caas_storage::bson::doc! { "v": [ { "$ne": "none" }, "" ] }
            .to_writer(&mut crafted)
            .unwrap();
        let hex: String = crafted.iter().map(|b| format!("{b:02x}")).collect();
        assert!(Cursor::parse(&hex).is_err(), "operators in a cursor");
    })
    .await;
}

#[tokio::test]
async fn typed_queries_filter_sort_skip_limit_and_project() {
    common::each_capability_set(async |storage, _| {
        let repo = users(&storage).await;
        let t = common::tenant("query");
        for n in 1..=10 {
            let s = if n <= 6 {
                Status::Active
            } else {
                Status::Locked
            };
            repo.insert(&t, &user(&t, n, s)).await.unwrap();
        }
        let f = User::fields();
        let got = repo
            .query(&t)
            .filter(f.status().eq(Status::Active))
            .filter(f.created_at().gte(3))
            .sort(f.created_at().asc())
            .skip(1)
            .limit(2)
            .fetch()
            .await
            .unwrap();
        assert_eq!(got.iter().map(|u| u.created_at).collect::<Vec<_>>(), [4, 5]);
        assert!(got.iter().all(|u| u.password_hash.is_empty()));

        let n = repo
            .query(&t)
            .filter(f.created_at().lt(3).or(f.created_at().gt(8)))
            .count()
            .await
            .unwrap();
        assert_eq!(n, 4);
        let n = repo
            .count(&t, f.user_id().is_in(["u1", "u2", "zzz"]))
            .await
            .unwrap();
        assert_eq!(n, 2);

        let secret = repo
            .query(&t)
            .filter(f.email().eq("user2@example.com"))
            .include_secrets()
            .first()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(secret.password_hash, "hash-2");

        #[derive(Debug, Deserialize)]
        struct Contact {
            email: String,
            password_hash: Option<String>,
        }
        let contacts: Vec<Contact> = repo
            .query(&t)
            .only([f.email().path(), f.password_hash().path()])
            .sort(f.created_at().desc())
            .limit(2)
            .fetch_as()
            .await
            .unwrap();
        assert_eq!(contacts[0].email, "user10@example.com");
        assert!(
            contacts.iter().all(|c| c.password_hash.is_none()),
            "secrets stay out of projections"
        );

        let streamed: Vec<User> = {
            use futures::TryStreamExt;
            repo.query(&t)
                .stream()
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap()
        };
        assert_eq!(streamed.len(), 10);
    })
    .await;
}

#[tokio::test]
async fn patches_set_only_what_is_set_and_bump_the_version() {
    common::each_capability_set(async |storage, _| {
        let repo = users(&storage).await;
        let t = common::tenant("patch");
        let u = user(&t, 1, Status::Active);
        repo.insert(&t, &u).await.unwrap();
        let after = repo
            .update(
                &t,
                &u.user_id,
                UserPatch {
                    status: Some(Status::Locked),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.status, Status::Locked);
        assert_eq!(after.email, u.email, "unset fields untouched");
        assert_eq!(after.version, 1);
        let with = repo
            .find_by_id_with_secrets(&t, &u.user_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            with.password_hash, u.password_hash,
            "unset secret untouched"
        );
        assert!(repo
            .update(&t, &"ghost".to_owned(), UserPatch::default())
            .await
            .unwrap()
            .is_none());
    })
    .await;
}

#[tokio::test]
async fn optimistic_locking_rejects_stale_writers() {
    common::each_capability_set(async |storage, _| {
        let repo = users(&storage).await;
        let t = common::tenant("occ");
        let mut u = user(&t, 1, Status::Active);
        repo.insert(&t, &u).await.unwrap();

        let mut stale = u.clone();
        u.email = "new@example.com".into();
        repo.replace(&t, &mut u).await.unwrap();
        assert_eq!(u.version, 1, "replace bumps the caller's copy");

        stale.email = "stale@example.com".into();
        match repo.replace(&t, &mut stale).await {
            Err(Error::VersionConflict {
                entity: "User",
                expected: 0,
                actual: Some(1),
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(stale.version, 0, "a failed replace leaves the copy alone");

        let patched = repo
            .update_checked(
                &t,
                &u.user_id,
                1,
                UserPatch {
                    status: Some(Status::Locked),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(patched.version, 2);
        assert!(matches!(
            repo.update_checked(&t, &u.user_id, 1, UserPatch::default())
                .await,
            Err(Error::VersionConflict {
                actual: Some(2),
                ..
            })
        ));
        assert!(matches!(
            repo.update_checked(&t, &"ghost".to_owned(), 0, UserPatch::default())
                .await,
            Err(Error::NotFound { .. })
        ));
    })
    .await;
}

/// FerretDB applies conditional updates as read-modify-write without a lock, so two writers
/// holding the same version could both win. The repository claims each version transition
/// through a unique insert instead: exactly one of many concurrent writers wins.
#[tokio::test]
async fn concurrent_checked_writers_have_exactly_one_winner() {
    let repo = users(&common::storage().await).await;
    let t = common::tenant("race");
    repo.insert(&t, &user(&t, 1, Status::Active)).await.unwrap();
    for round in 0..5_u64 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let repo = repo.clone();
                let t = t.clone();
                tokio::spawn(async move {
                    repo.update_checked(
                        &t,
                        &"u1".to_owned(),
                        round,
                        UserPatch {
                            email: Some(format!("writer{i}@example.com")),
                            ..Default::default()
                        },
                    )
                    .await
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(u) => {
                    assert_eq!(u.version, round + 1);
                    wins += 1;
                }
                Err(Error::VersionConflict { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(wins, 1, "round {round}: exactly one writer may win");
    }
    assert_eq!(repo.get(&t, &"u1".to_owned()).await.unwrap().version, 5);
}

#[tokio::test]
async fn concurrent_unconditional_updates_lose_no_increment() {
    let repo = users(&common::storage().await).await;
    let t = common::tenant("incr");
    repo.insert(&t, &user(&t, 1, Status::Active)).await.unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let repo = repo.clone();
            let t = t.clone();
            tokio::spawn(async move {
                repo.update(
                    &t,
                    &"u1".to_owned(),
                    UserPatch {
                        created_at: Some(i),
                        ..Default::default()
                    },
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap().unwrap();
    }
    assert_eq!(repo.get(&t, &"u1".to_owned()).await.unwrap().version, 12);
}

#[tokio::test]
async fn upsert_inserts_then_replaces() {
    common::each_capability_set(async |storage, _| {
        let repo = users(&storage).await;
        let t = common::tenant("upsert");
        let mut u = user(&t, 1, Status::Active);
        assert_eq!(repo.upsert(&t, &u).await.unwrap(), Upserted::Inserted);
        u.status = Status::Locked;
        assert_eq!(repo.upsert(&t, &u).await.unwrap(), Upserted::Replaced);
        assert_eq!(
            repo.get(&t, &u.user_id).await.unwrap().status,
            Status::Locked
        );
        assert_eq!(repo.count(&t, Filter::all()).await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn hard_delete_removes() {
    common::each_capability_set(async |storage, _| {
        let repo = users(&storage).await;
        let t = common::tenant("delete");
        let u = user(&t, 1, Status::Active);
        repo.insert(&t, &u).await.unwrap();
        assert!(repo.delete(&t, &u.user_id).await.unwrap());
        assert!(!repo.delete(&t, &u.user_id).await.unwrap());
        assert!(repo.find_by_id(&t, &u.user_id).await.unwrap().is_none());
        for n in 2..=4 {
            repo.insert(&t, &user(&t, n, Status::Locked)).await.unwrap();
        }
        let gone = repo
            .query(&t)
            .filter(User::fields().status().eq(Status::Locked))
            .delete()
            .await
            .unwrap();
        assert_eq!(gone, 3);
    })
    .await;
}

#[tokio::test]
async fn soft_delete_hides_keeps_and_purges() {
    common::each_capability_set(async |storage, _| {
        let notes = NoteRepository::new(&storage);
        let t = common::tenant("soft");
        let note = Note {
            note_id: "n1".into(),
            tenant_id: t.to_string(),
            text: "hello".into(),
        };
        notes.insert(&t, &note).await.unwrap();
        assert!(notes.delete(&t, &note.note_id).await.unwrap());
        assert!(notes.find_by_id(&t, &note.note_id).await.unwrap().is_none());
        assert!(!notes.exists(&t, &note.note_id).await.unwrap());
        assert_eq!(notes.count(&t, Filter::all()).await.unwrap(), 0);
        assert!(
            !notes.delete(&t, &note.note_id).await.unwrap(),
            "already deleted"
        );
        // Still stored, marked.
        let raw = storage
            .raw()
            .documents(
                "caas_messaging",
                "test_notes",
                caas_storage::bson::doc! { "tenant_id": t.as_str(), "note_id": "n1" },
            )
            .await
            .unwrap()
            .remove(0);
        assert!(raw.get_datetime("_deleted_at").is_ok());
        assert_eq!(raw.get_i64("_schema_version").unwrap(), 1);
        assert!(notes.purge(&t, &note.note_id).await.unwrap());
        notes.insert(&t, &note).await.unwrap();
        assert!(notes.exists(&t, &note.note_id).await.unwrap());
    })
    .await;
}

/// A patch that would take another document's unique value is a `DuplicateKey` on every
/// server and backend, and leaves nothing held: the next write of the document goes through.
/// (FerretDB refuses it with `InternalError` and SQLite's "UNIQUE constraint failed", where
/// MongoDB says 11000; the repository read that as an unknown outcome and kept its version
/// claim, so the document refused writes until the claim expired. The memory backend's
/// differential test found it.)
#[tokio::test]
async fn a_patch_to_a_taken_unique_value_is_a_duplicate_and_holds_nothing() {
    common::each_capability_set(async |storage, label| {
        let repo = users(&storage).await;
        let t = common::tenant("dup-patch");
        repo.insert(&t, &user(&t, 1, Status::Active)).await.unwrap();
        repo.insert(&t, &user(&t, 2, Status::Active)).await.unwrap();
        let taken = repo
            .update(
                &t,
                &"u2".to_owned(),
                UserPatch {
                    email: Some("user1@example.com".into()),
                    ..Default::default()
                },
            )
            .await;
        assert!(
            matches!(taken, Err(Error::DuplicateKey { .. })),
            "{label}: {taken:?}"
        );
        let locked = repo
            .update(
                &t,
                &"u2".to_owned(),
                UserPatch {
                    status: Some(Status::Locked),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{label}: the next write goes through: {e}"))
            .unwrap();
        assert_eq!(locked.status, Status::Locked, "{label}");
        assert_eq!(locked.email, "user2@example.com", "{label}");
        assert_eq!(
            locked.version, 1,
            "{label}: the refused patch did not count"
        );
    })
    .await;
}

/// Aliases: no two documents of a tenant share a handle (a unique index on a list field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "test_aliases")]
#[index(keys(handles), unique)]
struct Alias {
    #[repository(id)]
    pub alias_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub handles: Vec<String>,
}

/// A unique index on a list field holds each element where the server says it does (MongoDB,
/// the memory backend): a second document with a handle the first holds is a `DuplicateKey`,
/// one that repeats its own handle is not, and a handle a patch gave up is free again. Where
/// it does not (FerretDB v1 indexes the whole list), `sync_indexes` says so, and the test pins
/// what the server does. (The memory backend took the whole list as one key, and let two
/// documents share an element that MongoDB refuses.)
#[tokio::test]
async fn a_unique_index_on_a_list_holds_each_element() {
    common::each_capability_set(async |storage, label| {
        let plan = storage.sync_indexes::<Alias>().await.unwrap();
        let weakened: Vec<&str> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                caas_storage::index::IndexChange::Weakened { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let repo = AliasRepository::new(&storage);
        if !storage.capabilities().unique_list_elements {
            assert_eq!(weakened, ["tenant_id_1_handles_1"], "{label}: {plan:?}");
            let t = common::tenant("multikey-weak");
            for (id, handles) in [("a1", ["ada", "lovelace"]), ("a2", ["countess", "ada"])] {
                let alias = Alias {
                    alias_id: id.into(),
                    tenant_id: t.to_string(),
                    handles: handles.map(str::to_owned).to_vec(),
                };
                repo.insert(&t, &alias)
                    .await
                    .unwrap_or_else(|e| panic!("{label}: the server shares elements: {e}"));
            }
            return;
        }
        assert!(weakened.is_empty(), "{label}: {plan:?}");
        let t = common::tenant("multikey");
        let alias = |id: &str, handles: &[&str]| Alias {
            alias_id: id.into(),
            tenant_id: t.to_string(),
            handles: handles.iter().map(|h| (*h).to_owned()).collect(),
        };
        repo.insert(&t, &alias("a1", &["ada", "lovelace"]))
            .await
            .unwrap();
        let shared = repo.insert(&t, &alias("a2", &["countess", "ada"])).await;
        assert!(
            matches!(shared, Err(Error::DuplicateKey { .. })),
            "{label}: {shared:?}"
        );
        repo.insert(&t, &alias("a3", &["babbage", "babbage"]))
            .await
            .unwrap_or_else(|e| panic!("{label}: a document may repeat its own handle: {e}"));
        let other = common::tenant("multikey-other");
        AliasRepository::new(&storage)
            .insert(
                &other,
                &Alias {
                    alias_id: "a1".into(),
                    tenant_id: other.to_string(),
                    handles: vec!["ada".into()],
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{label}: another tenant may hold the handle: {e}"));
        repo.update(
            &t,
            &"a1".to_owned(),
            AliasPatch {
                handles: Some(vec!["lovelace".into()]),
            },
        )
        .await
        .unwrap();
        repo.insert(&t, &alias("a2", &["countess", "ada"]))
            .await
            .unwrap_or_else(|e| panic!("{label}: the handle a1 gave up is free: {e}"));
        assert_eq!(repo.count(&t, Filter::all()).await.unwrap(), 3, "{label}");
    })
    .await;
}
