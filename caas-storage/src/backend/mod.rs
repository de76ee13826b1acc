//! The document backend: the one boundary between the executor and where documents live.
//!
//! Everything the repository pipeline, its reads and the outbox's recording step send to a
//! database goes through [`CollectionBackend`], an object-safe trait with two
//! implementations:
//!
//! - [`mongo`]: the MongoDB driver (MongoDB, FerretDB), each call one driver call;
//! - [`memory`]: documents in this process, for users' unit tests
//!   ([`Storage::in_memory`](crate::Storage::in_memory)): MongoDB's query, update, sort and
//!   projection semantics, unique indexes, and transactions that commit or abort as a whole.
//!
//! Both answer with the driver's own result and error types, so the layers above
//! (classification of duplicate keys, retries, the outbox's verdicts) are the same code on
//! both. Tenancy, versions, events, consistency and the cache all live above this line.

pub(crate) mod memory;
pub(crate) mod mongo;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use mongodb::bson::{Bson, Document, RawDocumentBuf};
use mongodb::options::FindOptions;

/// The result of a backend call: the driver's error type on both backends.
pub(crate) type DriverResult<T> = mongodb::error::Result<T>;

/// What an update or replace matched and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Updated {
    /// Documents the filter matched.
    pub matched: u64,
    /// Documents the write changed.
    pub modified: u64,
    /// The `_id` an upsert inserted.
    pub upserted_id: Option<Bson>,
}

/// One collection on one backend: the operations the executor sends.
///
/// Writes take the caller's transaction ([`Session`]) when there is one. Errors are the
/// driver's: a unique-index violation is a write error with code 11000 on both backends
/// (`insert_many` reports per document, as the driver does for an unordered batch).
#[async_trait]
pub(crate) trait CollectionBackend: Send + Sync {
    /// The matching documents, with the options' sort, skip, limit and projection.
    async fn find(&self, filter: Document, options: FindOptions) -> DriverResult<Vec<Document>>;

    /// As [`find`](Self::find), as a stream of raw documents (for large result sets).
    async fn stream_raw(
        &self,
        filter: Document,
        options: FindOptions,
    ) -> DriverResult<BoxStream<'static, DriverResult<RawDocumentBuf>>>;

    /// How many documents match, after `skip`, at most `limit`.
    async fn count(
        &self,
        filter: Document,
        skip: Option<u64>,
        limit: Option<u64>,
    ) -> DriverResult<u64>;

    /// The distinct values of `field` among the matching documents.
    async fn distinct(&self, field: &str, filter: Document) -> DriverResult<Vec<Bson>>;

    /// Inserts one document.
    async fn insert_one(&self, doc: &Document, session: Option<&mut Session>) -> DriverResult<()>;

    /// Inserts several; unordered batches write every document they can.
    async fn insert_many(
        &self,
        docs: &[Document],
        ordered: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<()>;

    /// `updateOne` (`multi == false`) or `updateMany` with update operators.
    async fn update(
        &self,
        filter: Document,
        update: Document,
        multi: bool,
        upsert: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<Updated>;

    /// `replaceOne`.
    async fn replace(
        &self,
        filter: Document,
        doc: &Document,
        upsert: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<Updated>;

    /// `findAndModify` with update operators: the document before or (`after`) after.
    async fn find_one_and_update(
        &self,
        filter: Document,
        update: Document,
        after: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<Option<Document>>;

    /// Creates an index unless it exists (the memory backend keeps unique ones only: the
    /// others change no result).
    async fn create_index(&self, model: mongodb::IndexModel) -> DriverResult<()>;

    /// `deleteOne` (`multi == false`) or `deleteMany`: how many were deleted.
    async fn delete(
        &self,
        filter: Document,
        multi: bool,
        session: Option<&mut Session>,
    ) -> DriverResult<u64>;
}

/// A collection handle: cheap to clone, one backend behind it.
#[derive(Clone)]
pub(crate) struct Coll(Arc<dyn CollectionBackend>);

impl fmt::Debug for Coll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Coll")
    }
}

impl std::ops::Deref for Coll {
    type Target = dyn CollectionBackend;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Coll {
    pub(crate) fn new(backend: Arc<dyn CollectionBackend>) -> Self {
        Coll(backend)
    }

    /// The first matching document, with `projection` if given.
    pub(crate) async fn find_one(
        &self,
        filter: Document,
        projection: Option<Document>,
    ) -> DriverResult<Option<Document>> {
        let options = FindOptions::builder()
            .limit(1)
            .projection(projection)
            .build();
        Ok(self.0.find(filter, options).await?.into_iter().next())
    }

    /// The matching documents, by `options`.
    pub(crate) async fn find_all(
        &self,
        filter: Document,
        options: FindOptions,
    ) -> DriverResult<Vec<Document>> {
        self.0.find(filter, options).await
    }
}

/// A transaction on one backend, started by
/// [`Connections::start_session`](crate::connection::Connections::start_session).
pub(crate) enum Session {
    /// A MongoDB client session.
    Mongo(Box<mongodb::ClientSession>),
    /// A transaction on the memory backend.
    Memory(memory::Transaction),
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Session::Mongo(_) => f.write_str("Session::Mongo"),
            Session::Memory(_) => f.write_str("Session::Memory"),
        }
    }
}

impl Session {
    /// Starts a transaction with `write_concern` (ignored in memory).
    pub(crate) async fn start_transaction(
        &mut self,
        write_concern: Option<mongodb::options::WriteConcern>,
    ) -> DriverResult<()> {
        match self {
            Session::Mongo(s) => {
                let mut start = s.start_transaction();
                if let Some(wc) = write_concern {
                    start = start.write_concern(wc);
                }
                start.await
            }
            Session::Memory(t) => t.start().await,
        }
    }

    /// Commits the transaction.
    pub(crate) async fn commit_transaction(&mut self) -> DriverResult<()> {
        match self {
            Session::Mongo(s) => s.commit_transaction().await,
            Session::Memory(t) => t.commit(),
        }
    }

    /// Aborts the transaction.
    pub(crate) async fn abort_transaction(&mut self) -> DriverResult<()> {
        match self {
            Session::Mongo(s) => s.abort_transaction().await,
            Session::Memory(t) => {
                t.abort();
                Ok(())
            }
        }
    }
}
