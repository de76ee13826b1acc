//! Consistency models and what each means for the driver.
//!
//! `consistency = ...` on an entity picks one of four models. Each maps to the MongoDB read and
//! write concerns, read preference and session use that the executor applies to every call.
//! The exact guarantees, and which of them need a MongoDB replica set, are in
//! `docs/consistency.md`.

mod token;

pub use token::CausalToken;

use mongodb::options::{
    Acknowledgment, ReadConcern, ReadPreference, SelectionCriteria, WriteConcern,
};
use serde::{Deserialize, Serialize};

/// The four models of the reference design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Authentication, sessions, authorization, keys: majority + journaled writes, majority
    /// reads from the primary.
    Strong,
    /// Audit, analytics, notifications, search indexing: reads may come from secondaries.
    Eventual,
    /// Conversations, real-time updates, presence: causally consistent sessions.
    Causal,
    /// Profiles, preferences, settings: a handle always reads its own writes.
    ReadYourWrites,
}

impl Consistency {
    /// The write concern sent with writes under this model.
    pub fn write_concern(self) -> WriteConcern {
        match self {
            Consistency::Eventual => WriteConcern::builder().w(Acknowledgment::Nodes(1)).build(),
            Consistency::Strong => WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build(),
            Consistency::Causal | Consistency::ReadYourWrites => {
                WriteConcern::builder().w(Acknowledgment::Majority).build()
            }
        }
    }

    /// The read concern sent with reads under this model.
    pub fn read_concern(self) -> ReadConcern {
        match self {
            Consistency::Eventual => ReadConcern::local(),
            Consistency::Strong | Consistency::Causal | Consistency::ReadYourWrites => {
                ReadConcern::majority()
            }
        }
    }

    /// Where reads are served from under this model.
    pub fn read_preference(self) -> SelectionCriteria {
        match self {
            Consistency::Eventual => {
                SelectionCriteria::ReadPreference(ReadPreference::SecondaryPreferred {
                    options: Default::default(),
                })
            }
            _ => SelectionCriteria::ReadPreference(ReadPreference::Primary),
        }
    }

    /// The attribute spelling, e.g. `read_your_writes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Strong => "strong",
            Consistency::Eventual => "eventual",
            Consistency::Causal => "causal",
            Consistency::ReadYourWrites => "read_your_writes",
        }
    }
}
