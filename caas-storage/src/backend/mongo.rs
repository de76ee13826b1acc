//! The MongoDB backend: each [`CollectionBackend`] call is one driver call on the shared pool
//! (MongoDB, or FerretDB on its wire protocol).

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use mongodb::bson::{Bson, Document, RawDocumentBuf};
use mongodb::options::{FindOptions, ReturnDocument};
use mongodb::Collection;

use super::{CollectionBackend, DriverResult, Session, Updated};

/// One MongoDB collection, read as documents or as raw BSON.
pub(crate) struct MongoCollection {
    docs: Collection<Document>,
    raw: Collection<RawDocumentBuf>,
}

impl MongoCollection {
    pub(crate) fn new(docs: Collection<Document>) -> Self {
        let raw = docs.clone_with_type();
        MongoCollection { docs, raw }
    }
}

/// The driver session of `session`: the Mongo backend only ever gets its own.
fn driver(session: &mut Session) -> DriverResult<&mut mongodb::ClientSession> {
    match session {
        Session::Mongo(s) => Ok(&mut **s),
        Session::Memory(_) => Err(mongodb::error::Error::custom(
            "a memory-backend transaction was passed to a MongoDB collection",
        )),
    }
}

/// Runs a driver action with the session, when there is one.
macro_rules! with_session {
    ($action:expr, $session:expr) => {
        match $session {
            None => $action.await,
            Some(s) => $action.session(driver(s)?).await,
        }
    };
}

#[async_trait]
impl CollectionBackend for MongoCollection {
    async fn find(&self, filter: Document, options: FindOptions) -> DriverResult<Vec<Document>> {
        self.docs
            .find(filter)
            .with_options(options)
            .await?
            .try_collect()
            .await
    }

    async fn stream_raw(
        &self,
        filter: Document,
        options: FindOptions,
    ) -> DriverResult<BoxStream<'static, DriverResult<RawDocumentBuf>>> {
        Ok(self.raw.find(filter).with_options(options).await?.boxed())
    }

    async fn count(
        &self,
        filter: Document,
        skip: Option<u64>,
        limit: Option<u64>,
    ) -> DriverResult<u64> {
        let mut count = self.docs.count_documents(filter);
        if let Some(n) = skip {
            count = count.skip(n);
        }
        if let Some(n) = limit {
            count = count.limit(n);
        }
        count.await
    }

    async fn distinct(&self, field: &str, filter: Document) -> DriverResult<Vec<Bson>> {
        self.docs.distinct(field, filter).await
    }

    async fn insert_one(&self, doc: &Document, session: Option<&mut Session>) -> DriverResult<()> {
        with_session!(self.docs.insert_one(doc), session).map(drop)
    }

    async fn insert_many(
        &self,
        docs: &[Document],
        ordered: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<()> {
        with_session!(self.docs.insert_many(docs).ordered(ordered), session).map(drop)
    }

    async fn update(
        &self,
        filter: Document,
        update: Document,
        multi: bool,
        upsert: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<Updated> {
        let r = if multi {
            with_session!(
                self.docs.update_many(filter, update).upsert(upsert),
                session
            )?
        } else {
            with_session!(self.docs.update_one(filter, update).upsert(upsert), session)?
        };
        Ok(Updated {
            matched: r.matched_count,
            modified: r.modified_count,
            upserted_id: r.upserted_id,
        })
    }

    async fn replace(
        &self,
        filter: Document,
        doc: &Document,
        upsert: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<Updated> {
        let r = with_session!(self.docs.replace_one(filter, doc).upsert(upsert), session)?;
        Ok(Updated {
            matched: r.matched_count,
            modified: r.modified_count,
            upserted_id: r.upserted_id,
        })
    }

    async fn find_one_and_update(
        &self,
        filter: Document,
        update: Document,
        after: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<Option<Document>> {
        let which = if after {
            ReturnDocument::After
        } else {
            ReturnDocument::Before
        };
        with_session!(
            self.docs
                .find_one_and_update(filter, update)
                .return_document(which),
            session
        )
    }

    async fn create_index(&self, model: mongodb::IndexModel) -> DriverResult<()> {
        self.docs.create_index(model).await.map(drop)
    }

    async fn delete(
        &self,
        filter: Document,
        multi: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<u64> {
        let r = if multi {
            with_session!(self.docs.delete_many(filter), session)?
        } else {
            with_session!(self.docs.delete_one(filter), session)?
        };
        Ok(r.deleted_count)
    }
}
