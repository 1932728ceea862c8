//! Commands and queries in an FSM's own Rust types: encoded with postcard, as the log carries
//! them, so the node's JSON codec is not involved and the types are checked by the compiler.
//! The types are the FSM crate's (`latest_payload::Command`, ...): depend on that crate.

use serde::Serialize;
use serde::de::DeserializeOwned;
use wraft_api::{Consistency, Payload};
use wraft_core::FsmName;

use crate::{Client, ClientError};

fn encode<T: Serialize>(value: &T) -> Result<Payload, ClientError> {
    postcard::to_allocvec(value)
        .map(Payload::Postcard)
        .map_err(|e| ClientError::Codec(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(payload: Payload) -> Result<T, ClientError> {
    match payload {
        Payload::Postcard(bytes) => postcard::from_bytes(&bytes).map_err(|e| {
            ClientError::Codec(format!(
                "the output is not a {}: {e}",
                std::any::type_name::<T>()
            ))
        }),
        Payload::Json(json) => Err(ClientError::Codec(format!(
            "expected postcard, got JSON: {json}"
        ))),
    }
}

impl Client {
    /// Applies `command`, of the FSM's own command type, exactly once (as [`Client::apply`])
    /// and decodes the FSM's output as `O`, its output type.
    pub async fn apply_as<C: Serialize, O: DeserializeOwned>(
        &self,
        fsm: &FsmName,
        command: &C,
    ) -> Result<O, ClientError> {
        decode(self.apply(fsm, encode(command)?).await?)
    }

    /// Runs `query`, of the FSM's own query type, and decodes the answer as `O`.
    pub async fn query_as<Q: Serialize, O: DeserializeOwned>(
        &self,
        fsm: &FsmName,
        query: &Q,
        consistency: Consistency,
    ) -> Result<O, ClientError> {
        decode(self.query(fsm, encode(query)?, consistency).await?)
    }
}
